#include "helper/uid_reaper.h"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <sstream>
#include <vector>

#include "common/sys.h"
#include "common/vm_state.h"
#include "helper/log.h"

namespace vl::helper {

namespace {

using Clock = std::chrono::steady_clock;

struct LiveProcess {
  pid_t pid;
  UniqueFd pidfd;
};

// The processes of uid whose thread group has not exited. Each pidfd is opened before the
// process is checked, so it names the process that was checked, not a later holder of its pid.
Result<std::vector<LiveProcess>> live_processes_of(uid_t uid) {
  std::unique_ptr<DIR, int (*)(DIR*)> proc(::opendir("/proc"), ::closedir);
  if (!proc) return Error::from_errno("list /proc");
  std::vector<LiveProcess> live;
  while (const dirent* e = ::readdir(proc.get())) {
    char* end = nullptr;
    long pid = std::strtol(e->d_name, &end, 10);
    if (*end != '\0' || pid <= 0) continue;
    UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, static_cast<pid_t>(pid), 0)));
    if (!pidfd) continue;  // gone since the listing
    if (process_runs_as(static_cast<pid_t>(pid), uid) && !pidfd_exited(pidfd.get()))
      live.push_back({static_cast<pid_t>(pid), std::move(pidfd)});
  }
  return live;
}

std::string pid_list(const std::vector<LiveProcess>& processes) {
  std::string out;
  for (size_t i = 0; i < processes.size() && i < 10; ++i) out += (i ? " " : "") + std::to_string(processes[i].pid);
  if (processes.size() > 10) out += " ...";
  return out;
}

// One round: a child becomes uid and signals everything that uid may signal.
Result<void> kill_round(uid_t uid, const std::string& what) {
  int fds[2];
  VL_TRY(sys::check(::pipe2(fds, O_CLOEXEC), "pipe2"));
  UniqueFd result_read(fds[0]), result_write(fds[1]);
  pid_t child = ::fork();
  if (child < 0) return Error::from_errno("fork to kill the processes of " + what);
  if (child == 0) {
    int err = 0;
    // PRIV: the child drops to the VM's uid (from the root-owned uid map, never 0) before
    // signalling, so kill(-1) reaches that uid's processes and no others.
    if (::setgroups(0, nullptr) < 0 || ::setresgid(uid, uid, uid) < 0 || ::setresuid(uid, uid, uid) < 0) err = errno;
    else if (::kill(-1, SIGKILL) < 0 && errno != ESRCH) err = errno;  // ESRCH: nothing left to signal
    if (::write(result_write.get(), &err, sizeof err) != sizeof err) ::_exit(1);
    ::_exit(0);
  }
  result_write.reset();
  int err = 0;
  ssize_t n = sys::retry_eintr([&] { return ::read(result_read.get(), &err, sizeof err); });
  // The broker ignores SIGCHLD: the kernel may have reaped the child already (ECHILD).
  (void)sys::retry_eintr([&] { return ::waitpid(child, nullptr, 0); });
  // A process of the uid can kill the child too, before it reports: the caller tries again.
  if (n != sizeof err) return Error::make(ErrorCode::kInternal, "the process killing " + what + " died");
  if (err != 0) return Error::from_errno(err, "kill the processes of " + what);
  return {};
}

}  // namespace

bool process_runs_as(pid_t pid, uid_t uid) {
  auto status = sys::read_file("/proc/" + std::to_string(pid) + "/status", 16384);
  if (!status) return false;
  size_t at = status->find("\nUid:");
  if (at == std::string::npos) return false;
  std::istringstream ids(status->substr(at + 5, status->find('\n', at + 1) - at - 5));
  uid_t real = 0, effective = 0, saved = 0;
  if (!(ids >> real >> effective >> saved)) return false;
  return real == uid || saved == uid;
}

Result<void> kill_uid_processes(uid_t uid, const std::string& owner, std::chrono::milliseconds timeout) {
  std::string what = "uid " + std::to_string(uid) + " of " + owner;
  if (uid == 0) return Error::make(ErrorCode::kInternal, "refusing to kill the processes of uid 0 (" + owner + ")");
  auto live = VL_TRY(live_processes_of(uid));
  // None now means none later: only a process of the uid could start another one.
  if (live.empty()) return {};
  log_info("killing " + std::to_string(live.size()) + " process(es) of " + what + ": " + pid_list(live));
  auto deadline = Clock::now() + timeout;
  for (;;) {
    auto killed = kill_round(uid, what);
    live = VL_TRY(live_processes_of(uid));
    if (live.empty()) return {};
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0)
      return Error::make(ErrorCode::kConflict, std::to_string(live.size()) + " process(es) of " + what +
                                                   " still run after " + std::to_string(timeout.count() / 1000) +
                                                   " s (pids " + pid_list(live) + ")" +
                                                   (killed ? "" : ": " + killed.error().message()));
    // Wait until one of them is gone (SIGKILL is not instantaneous), then look again.
    std::vector<pollfd> polls;
    for (const LiveProcess& p : live) polls.push_back({p.pidfd.get(), POLLIN, 0});
    int wait_ms = static_cast<int>(std::min<long long>(left.count(), 100));
    (void)sys::retry_eintr([&] { return ::poll(polls.data(), polls.size(), wait_ms); });
  }
}

}  // namespace vl::helper
