#include "daemon/converter.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <cstring>

#include "common/spawn.h"
#include "common/sys.h"

namespace vl {

namespace {

constexpr size_t kMaxNativeBytes = 1 << 20;

// Inside the private user namespace the converter is this uid: never 0, or libvirt would
// believe it is a privileged driver and look for the libvirt-qemu user.
uid_t inside_id(uid_t outside) { return outside == 0 ? 65534 : outside; }

Result<void> write_proc(const char* file, const std::string& text) {
  UniqueFd fd = VL_TRY(sys::check_fd(::open(file, O_WRONLY | O_CLOEXEC), std::string("open ") + file));
  return sys::write_all(fd.get(), text);
}

Result<void> enter_private_namespaces() {
  uid_t uid = ::getuid();
  gid_t gid = ::getgid();
  VL_TRY(sys::check(::unshare(CLONE_NEWUSER | CLONE_NEWNET),
                    "unshare user+network namespace (are unprivileged user namespaces enabled?)"));
  VL_CHECK(write_proc("/proc/self/setgroups", "deny"));
  VL_CHECK(write_proc("/proc/self/uid_map", std::to_string(inside_id(uid)) + " " + std::to_string(uid) + " 1\n"));
  VL_CHECK(write_proc("/proc/self/gid_map", std::to_string(inside_id(gid)) + " " + std::to_string(gid) + " 1\n"));
  return {};
}

std::string last_libvirt_error(const char* fallback) {
  virErrorPtr e = virGetLastError();
  return e && e->message ? e->message : fallback;
}

void ignore_libvirt_error(void*, virErrorPtr) {}

// libvirt keeps per-user state under $HOME and the XDG directories; the converter's belong in
// its embed root, whoever the daemon user is and whatever environment it was started with.
void isolate_environment(const std::string& root) {
  ::clearenv();
  ::setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin", 1);
  ::setenv("LC_ALL", "C", 1);
  for (const auto& [var, dir] : {std::pair{"HOME", "/home"}, {"XDG_CACHE_HOME", "/xdg/cache"},
                                 {"XDG_CONFIG_HOME", "/xdg/config"}, {"XDG_RUNTIME_DIR", "/xdg/run"}}) {
    std::string path = root + dir;
    ::setenv(var, path.c_str(), 1);
  }
  for (const char* dir : {"/home", "/xdg", "/xdg/cache", "/xdg/config", "/xdg/run"})
    ::mkdir((root + dir).c_str(), 0700);
  // libvirt logs its errors to stderr as well; they reach the caller through the reply.
  int null_fd = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
  if (null_fd >= 0) ::dup2(null_fd, 2);
}

// The child: namespaces, libvirt, one reply on `out`: 'K' + argv or 'E' + message.
[[noreturn]] void run_converter_child(int out, const std::string& xml, const std::string& root) {
  std::string reply;
  isolate_environment(root);
  if (auto ns = enter_private_namespaces(); !ns) {
    reply = "E" + ns.error().message();
  } else {
    virSetErrorFunc(nullptr, ignore_libvirt_error);  // no stderr noise; errors are returned
    virConnectPtr conn = nullptr;
    if (virInitialize() < 0 || virEventRegisterDefaultImpl() < 0) {
      reply = "E" + last_libvirt_error("libvirt initialization failed");
    } else if (!(conn = virConnectOpen(("qemu:///embed?root=" + root).c_str()))) {
      reply = "E" + last_libvirt_error("cannot open the embedded QEMU driver");
    } else {
      char* native = virConnectDomainXMLToNative(conn, "qemu-argv", xml.c_str(), 0);
      reply = native ? "K" + std::string(native) : "E" + last_libvirt_error("conversion failed");
      std::free(native);
      virConnectClose(conn);
    }
  }
  (void)sys::write_all(out, reply);
  ::_exit(0);
}

}  // namespace

Result<std::string> convert_to_native(const std::string& xml, const std::string& embed_root,
                                      std::chrono::milliseconds timeout) {
  if (::mkdir(embed_root.c_str(), 0700) < 0 && errno != EEXIST)
    return Error::from_errno("create conversion root '" + embed_root + "'");
  int pipe_fds[2];
  VL_TRY(sys::check(::pipe2(pipe_fds, O_CLOEXEC), "pipe2"));
  UniqueFd reply_read(pipe_fds[0]), reply_write(pipe_fds[1]);
  pid_t pid = ::fork();
  if (pid < 0) return Error::from_errno("fork the converter");
  if (pid == 0) {
    reply_read.reset();
    run_converter_child(reply_write.get(), xml, embed_root);
  }
  reply_write.reset();

  std::string reply;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  Result<void> status;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    pollfd p{reply_read.get(), POLLIN, 0};
    int n = left.count() > 0 ? sys::retry_eintr([&] { return ::poll(&p, 1, static_cast<int>(left.count())); }) : 0;
    if (n == 0) {
      ::kill(pid, SIGKILL);
      status = Error::make(ErrorCode::kSystem, "libvirt conversion timed out after " +
                                                   std::to_string(timeout.count()) + " ms");
      break;
    }
    char buf[65536];
    ssize_t got = sys::retry_eintr([&] { return ::read(reply_read.get(), buf, sizeof buf); });
    if (got < 0) {
      status = Error::from_errno("read converter reply");
      break;
    }
    if (got == 0) break;
    reply.append(buf, static_cast<size_t>(got));
    if (reply.size() > kMaxNativeBytes) {
      ::kill(pid, SIGKILL);
      status = Error::invalid("converter reply larger than 1 MiB");
      break;
    }
  }
  auto waited = wait_for(pid);
  VL_CHECK(status);
  if (!waited) return std::move(waited).error();
  if (reply.empty())
    return Error::make(ErrorCode::kInternal, "the converter died without a reply (wait status " +
                                                 std::to_string(*waited) + ")");
  if (reply[0] == 'K') return reply.substr(1);
  return Error::unsupported("libvirt cannot convert this domain: " + reply.substr(1));
}

std::string libvirt_identity() {
  Dl_info info{};
  std::string id = "libvirt " + std::to_string(LIBVIR_VERSION_NUMBER);
  if (::dladdr(reinterpret_cast<void*>(&virConnectDomainXMLToNative), &info) && info.dli_fname) {
    struct stat st {};
    if (::stat(info.dli_fname, &st) == 0)
      id += std::string(" ") + info.dli_fname + " " + std::to_string(st.st_ino) + " " +
            std::to_string(st.st_size) + " " + std::to_string(st.st_mtim.tv_sec);
  }
  return id;
}

}  // namespace vl
