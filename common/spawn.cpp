#include "common/spawn.h"

#include <fcntl.h>
#include <sys/prctl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <climits>

#include "common/sys.h"
#include "common/vm_name.h"

namespace vl {

namespace {

constexpr size_t kMaxMappings = 64;

// Everything execve needs, as C arrays built before fork (no allocation in the child).
struct ExecArrays {
  std::vector<char*> argv;
  std::vector<char*> env;
  explicit ExecArrays(const ExecSpec& spec) {
    for (const auto& a : spec.argv) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    for (const auto& e : spec.env) env.push_back(const_cast<char*>(e.c_str()));
    env.push_back(nullptr);
  }
};

int close_gap(unsigned first, unsigned last) {
  if (first > last) return 0;
  return ::close_range(first, last, 0) < 0 ? -errno : 0;
}

}  // namespace

void reset_signals() {
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int s = 1; s < NSIG; ++s) ::sigaction(s, &dfl, nullptr);  // SIGKILL/SIGSTOP just fail
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
}

Result<void> validate_fd_mappings(const std::vector<FdMapping>& fds) {
  if (fds.size() > kMaxMappings) return Error::invalid("too many fds to pass");
  for (size_t i = 0; i < fds.size(); ++i) {
    if (fds[i].target < 0) return Error::invalid("fd target " + std::to_string(fds[i].target) + " < 0");
    if (::fcntl(fds[i].source, F_GETFD) < 0)
      return Error::from_errno("fd " + std::to_string(fds[i].source) + " to pass");
    for (size_t j = 0; j < i; ++j)
      if (fds[j].target == fds[i].target)
        return Error::invalid("fd target " + std::to_string(fds[i].target) + " used twice");
  }
  return {};
}

int place_fds(const FdMapping* fds, size_t count) {
  if (count > kMaxMappings) return -E2BIG;
  int max_target = 2;
  for (size_t i = 0; i < count; ++i) max_target = std::max(max_target, fds[i].target);

  // First lift every source above all targets so that no dup2 below clobbers a source that
  // still has to be moved (a source may sit on another mapping's target number).
  int lifted[kMaxMappings];
  for (size_t i = 0; i < count; ++i) {
    lifted[i] = ::fcntl(fds[i].source, F_DUPFD_CLOEXEC, max_target + 1);
    if (lifted[i] < 0) return -errno;
  }
  for (size_t i = 0; i < count; ++i)
    if (::dup2(lifted[i], fds[i].target) < 0) return -errno;  // dup2 clears CLOEXEC

  // Close 3..max_target except the targets, then everything above (the lifted copies too).
  int sorted[kMaxMappings];
  for (size_t i = 0; i < count; ++i) sorted[i] = fds[i].target;
  std::sort(sorted, sorted + count);
  unsigned next = 3;
  for (size_t i = 0; i < count; ++i) {
    if (sorted[i] < 3) continue;  // stdio replacements
    if (int r = close_gap(next, static_cast<unsigned>(sorted[i]) - 1); r < 0) return r;
    next = static_cast<unsigned>(sorted[i]) + 1;
  }
  return close_gap(next, UINT_MAX);
}

Error exec_in_place(const ExecSpec& spec) {
  if (auto v = validate_fd_mappings(spec.fds); !v) return std::move(v).error();
  ExecArrays arrays(spec);
  if (int r = place_fds(spec.fds.data(), spec.fds.size()); r < 0)
    return Error::from_errno(-r, "place fds for " + quote_for_message(spec.path, kQuotePathMax));
  ::execve(spec.path.c_str(), arrays.argv.data(), arrays.env.data());
  return Error::from_errno("execute " + quote_for_message(spec.path, kQuotePathMax));
}

Result<pid_t> spawn(const ExecSpec& spec) {
  VL_CHECK(validate_fd_mappings(spec.fds));
  ExecArrays arrays(spec);
  int pipe_fds[2];
  VL_TRY(sys::check(::pipe2(pipe_fds, O_CLOEXEC), "pipe2"));
  UniqueFd report_read(pipe_fds[0]), report_write(pipe_fds[1]);

  // The report pipe must survive place_fds(), which closes everything it was not told about:
  // pass it as the highest mapping and re-mark it close-on-exec afterwards.
  std::vector<FdMapping> fds = spec.fds;
  int report_target = 3;
  for (const auto& m : fds) report_target = std::max(report_target, m.target + 1);
  fds.push_back({report_write.get(), report_target});

  pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) return Error::from_errno("fork for " + quote_for_message(spec.path, kQuotePathMax));
  if (pid == 0) {
    int err = 0;
    reset_signals();  // a parent that blocks or ignores signals must not pass that on
    if (::setsid() < 0) err = errno;
    if (err == 0 && spec.parent_death_signal != 0) {
      if (::prctl(PR_SET_PDEATHSIG, spec.parent_death_signal) < 0) err = errno;
      // The parent died between fork and prctl: no signal will come.
      else if (::getppid() != parent) ::_exit(127);
    }
    if (err == 0) {
      int r = place_fds(fds.data(), fds.size());
      if (r < 0) err = -r;
    }
    if (err == 0 && ::fcntl(report_target, F_SETFD, FD_CLOEXEC) < 0) err = errno;
    if (err == 0) {
      ::execve(spec.path.c_str(), arrays.argv.data(), arrays.env.data());
      err = errno;
    }
    // report_target is the pipe if place_fds got that far, else the original pipe fd is.
    int fd = ::fcntl(report_target, F_GETFD) >= 0 ? report_target : pipe_fds[1];
    (void)!::write(fd, &err, sizeof err);
    ::_exit(127);
  }
  report_write.reset();
  int child_errno = 0;
  ssize_t n = sys::retry_eintr([&] { return ::read(report_read.get(), &child_errno, sizeof child_errno); });
  if (n == 0) return pid;
  (void)wait_for(pid);
  if (n < 0) return Error::from_errno("read exec report of " + quote_for_message(spec.path, kQuotePathMax));
  return Error::from_errno(child_errno, "execute " + quote_for_message(spec.path, kQuotePathMax));
}

Result<int> wait_for(pid_t pid) {
  int status = 0;
  if (sys::retry_eintr([&] { return ::waitpid(pid, &status, 0); }) < 0)
    return Error::from_errno("waitpid " + std::to_string(pid));
  return status;
}

}  // namespace vl
