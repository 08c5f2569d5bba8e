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
#include <dlfcn.h>
#include <fcntl.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "common/sys.h"

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
  VL_TRY(vl::sys::check(::unshare(CLONE_NEWUSER | CLONE_NEWNET),
                        "unshare user+network namespace (are unprivileged user namespaces enabled?)"));
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
  if (auto ns = enter_private_namespaces(); !ns) return "E" + ns.error().message();
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
  std::string reply = xml ? convert(*xml, root) : "E" + xml.error().message();
  return vl::sys::write_all(1, reply) ? 0 : 1;
}
