// A vmctl that runs while a test talks to it (`vmctl console`, `vmctl vnc`), and the serial
// log as `vmctl console --log` prints it.
#pragma once

#include <poll.h>
#include <sys/wait.h>

#include <chrono>
#include <thread>

#include "tests/support/system_env.h"

namespace vl::test {

using namespace std::chrono_literals;

// A vmctl that runs while the test talks to it: its stdin, and its stdout and stderr together.
class LiveVmctl final {
 public:
  LiveVmctl(SystemEnv& env, std::vector<std::string> args) {
    int in[2], out[2];
    REQUIRE(::pipe2(in, O_CLOEXEC) == 0);
    REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
    vl::UniqueFd in_read(in[0]), out_write(out[1]);
    in_.reset(in[1]);
    out_.reset(out[0]);
    std::vector<std::string> argv = {"vmctl", "--config", env.config_path()};
    argv.insert(argv.end(), args.begin(), args.end());
    auto pid = vl::spawn({vl::test::build_path("VMLAUNCH_VMCTL"), argv, {"PATH=/usr/sbin:/usr/bin:/sbin:/bin"},
                          {{in_read.get(), 0}, {out_write.get(), 1}, {out_write.get(), 2}}});
    REQUIRE_MESSAGE(pid.ok(), pid.error().message());
    pid_ = *pid;
    ::fcntl(out_.get(), F_SETFL, O_NONBLOCK);
  }
  ~LiveVmctl() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      (void)vl::wait_for(pid_);
    }
  }
  LiveVmctl(const LiveVmctl&) = delete;
  LiveVmctl& operator=(const LiveVmctl&) = delete;

  void type(const std::string& text) { REQUIRE(vl::sys::write_all(in_.get(), text).ok()); }
  void close_input() { in_.reset(); }
  void terminate() { ::kill(pid_, SIGTERM); }

  /// Reads until the output holds `marker` or `limit` passes.
  bool wait_for(const std::string& marker, std::chrono::seconds limit) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (out_text_.find(marker) == std::string::npos && std::chrono::steady_clock::now() < deadline) {
      pollfd p{out_.get(), POLLIN, 0};
      (void)::poll(&p, 1, 200);
      drain();
    }
    return out_text_.find(marker) != std::string::npos;
  }

  /// Waits for the exit (a generous deadline) and returns its status, -1 if it did not end.
  int wait_exit(std::chrono::seconds limit) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        pid_ = -1;
        drain();  // what it wrote before it ended
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      wait_for("\x01never", 1s);  // drains the output meanwhile
    }
    return -1;
  }

  const std::string& output() const { return out_text_; }

 private:
  void drain() {
    char buf[4096];
    ssize_t n;
    while ((n = ::read(out_.get(), buf, sizeof buf)) > 0) out_text_.append(buf, static_cast<size_t>(n));
  }

  vl::UniqueFd in_, out_;
  pid_t pid_ = -1;
  std::string out_text_;
};

// Polls `vmctl console NAME --log` until it holds `marker`.
inline bool log_shows(SystemEnv& env, const std::string& name, const std::string& marker, std::chrono::seconds limit,
               std::string& log) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  do {
    auto r = env.vmctl({"console", name, "--log"});
    log = r.out;
    if (r.exit_code == 0 && log.find(marker) != std::string::npos) return true;
    std::this_thread::sleep_for(200ms);
  } while (std::chrono::steady_clock::now() < deadline);
  return false;
}

}  // namespace vl::test
