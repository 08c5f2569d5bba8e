// vmlaunch-convert: domain XML -> QEMU command line, by libvirt's embedded QEMU driver.
//
//   vmlaunch-convert [--background] EMBED_ROOT < domain.xml
//                                              prints 'K' + the command line, or 'E' + why;
//                                              --background: at nice 19 (a pre-plan)
//   vmlaunch-convert --identity                prints what identifies this libvirt
//
// A program of its own so that libvirt (its threads, its memory) never lives in vmlaunchd,
// and so that it starts single-threaded: the kernel refuses unshare(CLONE_NEWUSER) to a
// multithreaded process. libvirt 9 creates a tap for every <interface> even in a dry run,
// so the conversion runs in a private user and network namespace where that costs nothing.
//
// And in a PID namespace of its own, as its init: libvirt probes QEMU's capabilities on a fresh
// embed root by running `qemu-system-x86_64 -machine none ... -daemonize`, which leaves its
// parent at once and waits for libvirt on its monitor. A converter ended mid-probe (vmlaunchd
// stopped or killed, the conversion's deadline) would leave that probe behind forever. Inside
// the namespace the daemonized probe is the init's child, and when the init ends, however it
// ends, the kernel kills every process left in the namespace. The init dies with this process
// (PR_SET_PDEATHSIG), which dies with vmlaunchd (converter.cpp): no signal handler, which
// SIGKILL would skip, and nothing for the daemon to clean up.
#include <dlfcn.h>
#include <fcntl.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "common/spawn.h"
#include "common/sys.h"
#include "common/unique_fd.h"

namespace {

// Inside the private user namespace the converter is this uid: never 0, or libvirt would
// believe it is a privileged driver and look for the libvirt-qemu user.
uid_t inside_id(uid_t outside) { return outside == 0 ? 65534 : outside; }

vl::Result<void> write_proc(const char* file, const std::string& text) {
  vl::UniqueFd fd = VL_TRY(vl::sys::check_fd(::open(file, O_WRONLY | O_CLOEXEC), std::string("open ") + file));
  return vl::sys::write_all(fd.get(), text);
}

vl::Result<void> enter_private_namespaces() {
  uid_t uid = ::getuid();
  gid_t gid = ::getgid();
  // The PID namespace is the next child's (run_as_namespace_init), not this process's.
  VL_TRY(vl::sys::check(::unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWPID),
                        "unshare user+network+PID namespace (are unprivileged user namespaces enabled?)"));
  VL_CHECK(write_proc("/proc/self/setgroups", "deny"));
  VL_CHECK(write_proc("/proc/self/uid_map", std::to_string(inside_id(uid)) + " " + std::to_string(uid) + " 1\n"));
  VL_CHECK(write_proc("/proc/self/gid_map", std::to_string(inside_id(gid)) + " " + std::to_string(gid) + " 1\n"));
  return {};
}

// libvirt keeps per-user state under $HOME and the XDG directories; the converter's belong in
// its embed root, whoever runs it and whatever environment it was started with.
void isolate_environment(const std::string& root) {
  ::clearenv();
  ::setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin", 1);
  ::setenv("LC_ALL", "C", 1);
  for (const auto& [var, dir] : {std::pair{"HOME", "/home"}, {"XDG_CACHE_HOME", "/xdg/cache"},
                                 {"XDG_CONFIG_HOME", "/xdg/config"}, {"XDG_RUNTIME_DIR", "/xdg/run"}}) {
    std::string path = root + dir;
    ::setenv(var, path.c_str(), 1);
  }
  for (const char* dir : {"/home", "/xdg", "/xdg/cache", "/xdg/config", "/xdg/run"}) ::mkdir((root + dir).c_str(), 0700);
  // libvirt also logs its errors to stderr; they reach the caller through the reply.
  int null_fd = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
  if (null_fd >= 0) ::dup2(null_fd, 2);
}

std::string last_libvirt_error(const char* fallback) {
  virErrorPtr e = virGetLastError();
  return e && e->message ? e->message : fallback;
}

void ignore_libvirt_error(void*, virErrorPtr) {}

std::string convert(const std::string& xml, const std::string& root) {
  virSetErrorFunc(nullptr, ignore_libvirt_error);
  if (virInitialize() < 0 || virEventRegisterDefaultImpl() < 0) return "E" + last_libvirt_error("libvirt initialization failed");
  virConnectPtr conn = virConnectOpen(("qemu:///embed?root=" + root).c_str());
  if (!conn) return "E" + last_libvirt_error("cannot open the embedded QEMU driver");
  char* native = virConnectDomainXMLToNative(conn, "qemu-argv", xml.c_str(), 0);
  std::string reply = native ? "K" + std::string(native) : "E" + last_libvirt_error("conversion failed");
  std::free(native);
  virConnectClose(conn);
  return reply;
}

// Writes the answer for the daemon ('K' + the command line, or 'E' + why); the exit status.
int answer(const std::string& reply) { return vl::sys::write_all(1, reply) ? 0 : 1; }

// The namespace's init. It converts in a child of its own and reaps every process the
// namespace orphans until that child ends: libvirt kills its probe and waits for it to be gone,
// and a probe left a zombie (the daemonized probe's parent is this init) would look alive to it
// for its whole 40 s kill timeout. `parent_alive` is the read end of a pipe whose write end only
// the parent holds.
[[noreturn]] void init_main(int parent_alive, const std::string& xml, const std::string& root) {
  if (::prctl(PR_SET_PDEATHSIG, SIGKILL) < 0) ::_exit(1);
  // A parent that died before the prctl sent no signal; then nothing holds the write end.
  pollfd p{parent_alive, POLLIN, 0};
  if (::poll(&p, 1, 0) != 0) ::_exit(1);
  pid_t converter = ::fork();
  if (converter < 0) ::_exit(answer("E" + vl::Error::from_errno("fork the conversion").message()));
  if (converter == 0) ::_exit(answer(convert(xml, root)));
  for (;;) {
    int status = 0;
    pid_t ended = ::waitpid(-1, &status, 0);
    if (ended == converter) ::_exit(WIFEXITED(status) ? WEXITSTATUS(status) : 1);
    if (ended < 0 && errno != EINTR) ::_exit(1);
  }
}

// Enters the private namespaces and runs the conversion as the init of the new PID namespace
// (see the top of this file); returns this program's exit status.
int run_as_namespace_init(const std::string& xml, const std::string& root) {
  if (auto ns = enter_private_namespaces(); !ns) return answer("E" + ns.error().message());
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) < 0) return answer("E" + vl::Error::from_errno("pipe2").message());
  vl::UniqueFd alive_read(fds[0]), alive_write(fds[1]);  // the write end: held until the init ends
  pid_t init = ::fork();
  if (init < 0) return answer("E" + vl::Error::from_errno("fork the namespace's init").message());
  if (init == 0) {
    alive_write.reset();
    init_main(alive_read.get(), xml, root);
  }
  alive_read.reset();
  auto status = vl::wait_for(init);
  return status && WIFEXITED(*status) ? WEXITSTATUS(*status) : 1;
}

// libvirt's version and library file: an upgrade changes it, and with it every cache key.
std::string identity() {
  Dl_info info{};
  std::string id = "libvirt " + std::to_string(LIBVIR_VERSION_NUMBER);
  if (::dladdr(reinterpret_cast<void*>(&virConnectDomainXMLToNative), &info) && info.dli_fname) {
    struct stat st {};
    if (::stat(info.dli_fname, &st) == 0)
      id += std::string(" ") + info.dli_fname + " " + std::to_string(st.st_ino) + " " + std::to_string(st.st_size) +
            " " + std::to_string(st.st_mtim.tv_sec);
  }
  return id;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 2 && std::string(argv[1]) == "--identity") {
    std::printf("%s\n", identity().c_str());
    return 0;
  }
  int arg = 1;
  if (argc == 3 && std::string(argv[1]) == "--background") {
    // Before libvirt starts its threads, which inherit it: nice is per thread on Linux.
    // Raising one's own nice value needs no privilege; failing to only costs priority.
    (void)::setpriority(PRIO_PROCESS, 0, 19);
    ++arg;
  }
  if (argc != arg + 1 || argv[arg][0] != '/') {
    std::fprintf(stderr, "usage: vmlaunch-convert [--background] EMBED_ROOT < domain.xml | --identity\n");
    return 2;
  }
  auto xml = vl::sys::read_all(0, 1 << 20);
  std::string root = argv[arg];
  isolate_environment(root);
  if (!xml) return answer("E" + xml.error().message());
  return run_as_namespace_init(*xml, root);
}
