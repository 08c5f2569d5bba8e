// Runs vmctl for the chaos suite: stdout and stderr apart (stdout carries --json), and a
// deadline, because a client that never gets its answer is itself a finding.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/spawn.h"
#include "common/unique_fd.h"

namespace vl::chaos {

struct VmctlResult {
  int exit_code = -1;
  bool hung = false;  ///< no answer before the deadline: killed
  std::string out, err;
};

/// One VM's answer inside a batch (`start|stop|restart|kill --json`).
struct VmOutcome {
  bool ok = false;
  std::string error;
};

inline VmctlResult run_vmctl(const std::string& vmctl, const std::string& config, std::vector<std::string> args,
                             std::chrono::seconds deadline) {
  VmctlResult r;
  int o[2], e[2];
  if (::pipe2(o, O_CLOEXEC) != 0) return r;
  UniqueFd out_read(o[0]), out_write(o[1]);
  if (::pipe2(e, O_CLOEXEC) != 0) return r;
  UniqueFd err_read(e[0]), err_write(e[1]);
  std::vector<std::string> argv = {"vmctl", "--config", config};
  argv.insert(argv.end(), args.begin(), args.end());
  auto pid = spawn({vmctl, argv, {"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, {{out_write.get(), 1}, {err_write.get(), 2}}});
  if (!pid) {
    r.err = "spawn vmctl: " + pid.error().message();
    return r;
  }
  out_write.reset();
  err_write.reset();
  auto until = std::chrono::steady_clock::now() + deadline;
  pollfd fds[2] = {{out_read.get(), POLLIN, 0}, {err_read.get(), POLLIN, 0}};
  std::string* sinks[2] = {&r.out, &r.err};
  int open_fds = 2;
  while (open_fds > 0) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now()).count();
    if (left <= 0) {
      r.hung = true;
      ::kill(*pid, SIGKILL);
      break;
    }
    if (::poll(fds, 2, static_cast<int>(std::min<long long>(left, 1000))) < 0 && errno != EINTR) break;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      char buf[4096];
      ssize_t n = ::read(fds[i].fd, buf, sizeof buf);
      if (n > 0) sinks[i]->append(buf, static_cast<size_t>(n));
      else if (n == 0 || errno != EINTR) {
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  auto waited = wait_for(*pid);
  int status = waited ? *waited : -1;
  r.exit_code = r.hung ? -1 : WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

/// The per-VM answers of a `--json` batch, or, when vmctl printed no JSON (it could not reach
/// the daemon), the same stderr line for every VM asked about.
inline std::map<std::string, VmOutcome> batch_outcomes(const VmctlResult& r, const std::vector<std::string>& names) {
  std::map<std::string, VmOutcome> outcomes;
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  if (j.is_array()) {
    for (const auto& e : j)
      if (e.is_object()) outcomes[e.value("name", "")] = {e.value("ok", false), e.value("error", "")};
    return outcomes;
  }
  std::string why = r.hung ? "no answer before the deadline (vmctl killed)" : r.err.empty() ? r.out : r.err;
  for (const auto& n : names) outcomes[n] = {false, why};
  return outcomes;
}

}  // namespace vl::chaos
