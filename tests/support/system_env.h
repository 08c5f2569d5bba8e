// The whole system for end-to-end tests: a HelperEnv plus the root broker and the daemon
// (running as 'nobody'), driven through the real vmctl binary.
#pragma once

#include <poll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>

#include "common/vm_state.h"
#include "tests/support/helper_env.h"

namespace vl::test {

struct CommandResult {
  int exit_code = -1;
  std::string out;  // stdout and stderr
};

/// Runs a program to completion with its output captured.
inline CommandResult run_program(const std::string& path, std::vector<std::string> argv) {
  int fds[2];
  REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
  UniqueFd out_read(fds[0]), out_write(fds[1]);
  auto pid = spawn({path, argv, {"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, {{out_write.get(), 1}, {out_write.get(), 2}}});
  REQUIRE_MESSAGE(pid.ok(), pid.error().message());
  out_write.reset();
  CommandResult r;
  r.out = sys::read_all(out_read.get(), 1 << 20).value();
  int status = wait_for(*pid).value();
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

class SystemEnv : public HelperEnv {
 public:
  /// `daemon_groups`: the daemon's supplementary groups (setpriv --groups), none if empty.
  explicit SystemEnv(std::string daemon_groups = "") : daemon_groups_(std::move(daemon_groups)) {
    cache_dir_ = root() + "/cache";
    std::filesystem::create_directory(cache_dir_);
    REQUIRE(::chown(cache_dir_.c_str(), 65534, 65534) == 0);
    users_ = "[users]\ndaemon_user = \"nobody\"\ndaemon_group = \"nogroup\"\nadmin_group = \"vmlaunch-admin\"\n" + test_uid_range();
    write_config("");
    ::chmod("/dev/net/tun", 0666);  // the Debian default (udev); unprivileged conversion needs it
    start_broker();
    start_daemon();
  }
  // Stops every VM before the broker goes (its VMs would outlive it). No assertions here:
  // a destructor may run while a failed REQUIRE unwinds.
  ~SystemEnv() {
    const char* vmctl = std::getenv("VMLAUNCH_VMCTL");
    if (vmctl && daemon_ > 0) {
      auto pid = spawn({vmctl, {"vmctl", "--config", config_path(), "stop", "--all", "--force"}, {}, {}});
      if (pid) (void)wait_for(*pid);
    }
    stop_daemon();
    if (broker_ > 0) {
      ::kill(broker_, SIGTERM);
      (void)wait_for(broker_);
    }
  }

  void start_broker() {
    ::unlink(config().helper_socket().c_str());  // a killed broker's socket is stale
    auto pid = spawn({build_path("VMLAUNCH_HELPER"), {"vmlaunch-helper", "--config", config_path(), "serve"}, {},
                      {{log_fd(), 1}, {log_fd(), 2}}});
    REQUIRE(pid.ok());
    broker_ = *pid;
    wait_for_socket(config().helper_socket());
  }

  void start_daemon() {
    ::unlink(config().control_socket().c_str());  // a killed daemon's socket is stale
    auto pid = spawn({"/usr/bin/setpriv",
                      {"setpriv", "--reuid=nobody", "--regid=nogroup",
                       daemon_groups_.empty() ? "--clear-groups" : "--groups=" + daemon_groups_, build_path("VMLAUNCH_DAEMON"),
                       "--config", config_path(), "run"},
                      {"PATH=/usr/bin:/bin"},
                      {{log_fd(), 1}, {log_fd(), 2}}});
    REQUIRE(pid.ok());
    daemon_ = *pid;
    wait_for_socket(config().control_socket());
  }

  /// SIGKILL: the hard way a daemon can die.
  void kill_daemon() {
    ::kill(daemon_, SIGKILL);
    (void)wait_for(daemon_);
    daemon_ = 0;
  }

  /// SIGKILL to the broker; its VMs live on.
  void kill_broker() {
    ::kill(broker_, SIGKILL);
    (void)wait_for(broker_);
    broker_ = 0;
  }

  pid_t broker_pid() const { return broker_; }
  pid_t daemon_pid() const { return daemon_; }

  /// Waits up to `ms` for the broker to exit (after a signal the test sent); reaps it if so.
  bool broker_exited_within(int ms) {
    UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, broker_, 0)));
    pollfd p{pidfd.get(), POLLIN, 0};
    if (!pidfd || ::poll(&p, 1, ms) != 1) return false;
    (void)wait_for(broker_);
    broker_ = 0;
    return true;
  }

  void stop_daemon() {
    if (daemon_ <= 0) return;
    ::kill(daemon_, SIGTERM);
    (void)wait_for(daemon_);
    daemon_ = 0;
  }

  CommandResult vmctl(std::vector<std::string> args) {
    std::vector<std::string> argv = {"vmctl", "--config", config_path()};
    argv.insert(argv.end(), args.begin(), args.end());
    return run_program(build_path("VMLAUNCH_VMCTL"), argv);
  }

  /// The daemon's and broker's log so far.
  std::string log() const {
    auto text = sys::read_file(root() + "/system.log", 1 << 20);
    return text ? *text : "";
  }

 private:
  int log_fd() {
    if (!log_) log_.reset(::open((root() + "/system.log").c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
    return log_.get();
  }

  // Polls until the socket accepts connections (a test harness may wait; the product never
  // polls): its file appears at bind(), before the listener is ready. Generous, as a daemon's
  // start plans ahead, slow on a loaded machine.
  static void wait_for_socket(const std::string& path) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (!accepts_connections(path) && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    REQUIRE_MESSAGE(accepts_connections(path), path << " never accepted a connection");
  }

  // The daemon's socket is a stream, the broker's a seqpacket one.
  static bool accepts_connections(const std::string& path) {
    for (int type : {SOCK_STREAM, SOCK_SEQPACKET}) {
      UniqueFd fd(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
      sockaddr_un addr{};
      addr.sun_family = AF_UNIX;
      if (!fd || path.size() >= sizeof addr.sun_path) return false;
      std::memcpy(addr.sun_path, path.c_str(), path.size());
      if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) return true;
      if (errno != EPROTOTYPE) return false;
    }
    return false;
  }

  std::string daemon_groups_;
  UniqueFd log_;
  pid_t broker_ = 0;
  pid_t daemon_ = 0;
};

/// True while pid names a process whose thread group has not exited (zombies count as gone).
inline bool process_alive(pid_t pid) {
  auto start = vl::process_start_time(pid);
  return start && vl::process_matches(pid, *start);
}

}  // namespace vl::test
