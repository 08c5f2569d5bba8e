#include "helper/log_relay.h"

#include <cap-ng.h>
#include <fcntl.h>
#include <seccomp.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <iterator>
#include <memory>
#include <string>
#include <string_view>
#include <span>

#include "common/emulator_tail.h"
#include "common/sys.h"
#include "helper/launch.h"
#include "helper/log.h"

namespace vl::helper {

namespace {

// The relay's fds: it reads the emulator's output from 0 and appends to the log on 1 (and 2,
// so that nothing else is left there).
constexpr int kPipeFd = 0;
constexpr int kLogFd = 1;
// The copy the daemon may read (runtime_dir.h create_emulator_tail), if the relay has one.
constexpr int kTailFd = 3;

constexpr std::string_view kPrefix = "qemu: ";
// Longer lines are split. A line is one write(), which O_APPEND places whole after whatever
// another writer of the log (a later launch's helper) appended.
constexpr size_t kMaxLine = 4096;

// Turns the emulator's bytes into prefixed log lines and applies the caps. Runs in the relay
// process only; allocates nothing after construction.
class Relay final {
 public:
  Relay(std::string own_prefix, bool tail) : own_prefix_(std::move(own_prefix)), tail_(tail) {
    std::copy(kPrefix.begin(), kPrefix.end(), line_);
    last_refill_ = now();
  }
  Relay(const Relay&) = delete;
  Relay& operator=(const Relay&) = delete;

  /// Copies until EOF on kPipeFd.
  void run() {
    for (;;) {
      ssize_t n = ::read(kPipeFd, buf_, sizeof buf_);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      if (truncated_) continue;  // read and discard: the emulator must never block on stderr
      size_t take = std::min(static_cast<size_t>(n), kRelayMaxBytes - total_);
      feed(buf_, take);
      total_ += take;
      if (take < static_cast<size_t>(n)) {
        finish();
        say(std::snprintf(said_, sizeof said_, "%semulator output reached %zu bytes; discarding the rest of this run\n",
                          own_prefix_.c_str(), kRelayMaxBytes));
        truncated_ = true;
      }
    }
    if (!truncated_) finish();
    // Last, and only in the copy: the daemon quotes the copy once this is there.
    if (tail_) (void)sys::write_all(kTailFd, kEmulatorTailEnd);
  }

 private:
  static double now() {
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
  }

  void feed(const char* p, size_t n) {
    for (size_t i = 0; i < n; ++i) {
      auto c = static_cast<unsigned char>(p[i]);
      if (c == '\n') {
        end_line();
        continue;
      }
      if (len_ + 4 > kMaxLine) end_line();
      // A carriage return or an escape sequence could overwrite the prefix on a terminal.
      if ((c < 0x20 && c != '\t') || c == 0x7f) {
        std::snprintf(line_ + kPrefix.size() + len_, 5, "\\x%02x", c);
        len_ += 4;
      } else {
        line_[kPrefix.size() + len_++] = static_cast<char>(c);
      }
      partial_ = true;
    }
  }

  // A line is logged whole or dropped whole; a dropped run is reported before the next line
  // that gets through, so the log says where output is missing.
  void end_line() {
    size_t size = kPrefix.size() + len_ + 1;
    line_[size - 1] = '\n';
    double t = now();
    tokens_ = std::min(static_cast<double>(kRelayBurst), tokens_ + (t - last_refill_) * kRelayRate);
    last_refill_ = t;
    if (tokens_ >= static_cast<double>(size)) {
      tokens_ -= static_cast<double>(size);
      report_dropped();
      write_out(line_, size);
    } else {
      ++dropped_lines_;
      dropped_bytes_ += len_;
    }
    len_ = 0;
    partial_ = false;
  }

  void finish() {
    if (partial_) end_line();
    report_dropped();
  }

  void report_dropped() {
    if (dropped_lines_ == 0) return;
    say(std::snprintf(said_, sizeof said_, "%sdropped %zu lines (%zu bytes) of emulator output over the rate limit "
                      "of %zu bytes/s\n", own_prefix_.c_str(), dropped_lines_, dropped_bytes_, kRelayRate));
    dropped_lines_ = dropped_bytes_ = 0;
  }

  // Writes the `n` bytes formatted into said_: a line of the relay's own, which looks like the
  // helper's (the emulator cannot write such a line). A fixed buffer, because the seccomp
  // filter leaves malloc no brk or mmap.
  void say(int n) {
    if (n > 0) write_out(said_, std::min(static_cast<size_t>(n), sizeof said_ - 1));
  }

  // A full disk or a broken log must not stop the draining: such a write is lost, ignoring.
  void write_out(const char* p, size_t n) const {
    (void)sys::write_all(kLogFd, std::string_view(p, n));
    if (tail_) (void)sys::write_all(kTailFd, std::string_view(p, n));
  }

  std::string own_prefix_;
  bool tail_ = false;
  char buf_[65536];
  char line_[kPrefix.size() + kMaxLine + 1];
  char said_[512];
  size_t len_ = 0;
  bool partial_ = false;
  size_t total_ = 0;
  bool truncated_ = false;
  double tokens_ = kRelayBurst;
  double last_refill_ = 0;
  size_t dropped_lines_ = 0;
  size_t dropped_bytes_ = 0;
};

struct SeccompRelease {
  void operator()(void* ctx) const { seccomp_release(ctx); }
};

// A relay keeps uid 0 (see log_relay.h) but nothing else that root has: no capabilities, no
// way to gain any, and no system call beyond what copying needs.
bool lock_down(const char* name, std::span<const int> syscalls) {
  ::prctl(PR_SET_NAME, name, 0, 0, 0);  // what ps and top show
  capng_clear(CAPNG_SELECT_BOTH);
  if (capng_apply(CAPNG_SELECT_BOTH) != 0) return false;
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) return false;
  std::unique_ptr<void, SeccompRelease> ctx(seccomp_init(SCMP_ACT_KILL_PROCESS));
  if (!ctx) return false;
  for (int nr : {SCMP_SYS(read), SCMP_SYS(write), SCMP_SYS(close), SCMP_SYS(exit), SCMP_SYS(exit_group),
                 SCMP_SYS(rt_sigreturn), SCMP_SYS(restart_syscall)})
    if (seccomp_rule_add(ctx.get(), SCMP_ACT_ALLOW, nr, 0) < 0) return false;
  for (int nr : syscalls)
    if (seccomp_rule_add(ctx.get(), SCMP_ACT_ALLOW, nr, 0) < 0) return false;
  if (seccomp_load(ctx.get()) != 0) return false;
  (void)ctx.release();  // freeing it now might need munmap or brk, which the filter kills
  return true;
}

// The relay itself: locks down, tells the first child so, then copies until EOF.
[[noreturn]] void relay_main(int ready_fd, const RelaySpec& spec) {
  if (!lock_down(spec.name, spec.syscalls)) ::_exit(1);
  if (::write(ready_fd, "y", 1) != 1) ::_exit(1);
  ::close(ready_fd);
  spec.run();
  ::_exit(0);
}

// The first child of the helper: keeps only the relay's fds, leaves the helper's session (a
// signal to the emulator's process group must not reach the relay), forks the relay and exits,
// so that the relay is reparented and the emulator-to-be has no child to reap. Its exit status
// says whether the relay got as far as its lockdown.
[[noreturn]] void first_child(const RelaySpec& spec) {
  if (place_fds(spec.fds.data(), spec.fds.size()) < 0 || ::setsid() < 0 || ::chdir("/") < 0) ::_exit(1);
  int ready[2];
  if (::pipe2(ready, O_CLOEXEC) < 0) ::_exit(1);
  pid_t pid = ::fork();
  if (pid < 0) ::_exit(1);
  if (pid == 0) {
    ::close(ready[0]);
    relay_main(ready[1], spec);
  }
  ::close(ready[1]);
  char ok = 0;
  ssize_t n = sys::retry_eintr([&] { return ::read(ready[0], &ok, 1); });
  // Then the end of the pipe: once the launch goes on, the relay holds its fds and no other.
  char more = 0;
  ssize_t end = sys::retry_eintr([&] { return ::read(ready[0], &more, 1); });
  ::_exit(n == 1 && ok == 'y' && end == 0 ? 0 : 1);
}

}  // namespace

Result<void> start_relay(const RelaySpec& spec, const std::string& what) {
  pid_t pid = ::fork();
  if (pid < 0) return Error::from_errno("fork " + what);
  if (pid == 0) first_child(spec);
  int status = VL_TRY(wait_for(pid));
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    return Error::make(ErrorCode::kSystem, what + " did not start");
  return {};
}

std::vector<FdMapping> EmulatorOutput::mappings() const {
  if (!pipe) return {};
  return {{pipe.get(), 1}, {pipe.get(), 2}, {helper_log_fd, helper_log_fd}};
}

Result<EmulatorOutput> start_log_relay(const VmName& vm, int tail) {
  // Only a regular file can be truncated, or holds lines that nothing else tells apart. A pipe
  // or a socket (journald's stream under systemd, which records each line's transport and
  // applies its own rate limit) or a terminal passes through unchanged.
  struct stat st {};
  if (::fstat(STDERR_FILENO, &st) < 0 || !S_ISREG(st.st_mode)) return EmulatorOutput{};
  int fds[2];
  VL_TRY(sys::check(::pipe2(fds, O_CLOEXEC), "create the pipe for the emulator's output"));
  UniqueFd pipe_read(fds[0]), pipe_write(fds[1]);
  // Above every fd number of the plan and the report pipe: exec.cpp closes it at execve.
  int helper_log_fd = VL_TRY(log_keep_private_stderr(kReportFdTarget + 1));
  // Built here, before the fork: the relay allocates nothing once locked down.
  auto relay = std::make_unique<Relay>("vmlaunch-helper: " + vm.str() + ": ", tail >= 0);
  RelaySpec spec{"vmlaunch-log",
                 {{pipe_read.get(), kPipeFd}, {STDERR_FILENO, kLogFd}, {STDERR_FILENO, 2}},
                 {SCMP_SYS(clock_gettime)},
                 [&relay] { relay->run(); }};
  if (tail >= 0) spec.fds.push_back({tail, kTailFd});
  VL_CHECK(start_relay(spec, "the log relay for the emulator's output"));
  pipe_read.reset();
  log_info("emulator output goes to the log through a relay, prefixed \"qemu: \"");
  return EmulatorOutput{std::move(pipe_write), helper_log_fd};
}

}  // namespace vl::helper
