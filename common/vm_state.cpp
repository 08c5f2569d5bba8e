#include "common/vm_state.h"

#include <poll.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>

#include "common/sys.h"

namespace vl {

using Json = nlohmann::json;

std::string vm_state_to_json(const VmState& s) {
  Json j = {{"vm", s.vm},       {"pid", s.pid},   {"start_time", s.start_time}, {"uid", s.uid},
            {"emulator", s.emulator}, {"taps", s.taps}, {"macs", s.macs}, {"disks", s.disks}, {"zone", s.zone},
            {"started_at", s.started_at}};
  if (!s.invocation.empty()) j["invocation"] = s.invocation;
  return j.dump(2) + "\n";
}

Result<VmState> vm_state_from_json(std::string_view text) {
  Json j = Json::parse(text, nullptr, false);
  auto bad = [] { return Error::invalid("VM state file is malformed"); };
  if (j.is_discarded() || !j.is_object()) return bad();
  VmState s;
  auto str = [&](const char* k, std::string& out) {
    if (!j.contains(k) || !j[k].is_string()) return false;
    out = j[k].get<std::string>();
    return true;
  };
  auto list = [&](const char* k, std::vector<std::string>& out) {
    if (!j.contains(k) || !j[k].is_array()) return false;
    for (const Json& v : j[k]) {
      if (!v.is_string()) return false;
      out.push_back(v.get<std::string>());
    }
    return true;
  };
  if (!str("vm", s.vm) || !str("emulator", s.emulator) || !str("zone", s.zone) || !list("taps", s.taps) || !list("macs", s.macs) ||
      !list("disks", s.disks))
    return bad();
  for (const char* k : {"pid", "start_time", "uid", "started_at"})
    if (!j.contains(k) || !j[k].is_number_integer()) return bad();
  s.pid = j["pid"].get<pid_t>();
  s.start_time = j["start_time"].get<uint64_t>();
  s.uid = j["uid"].get<uid_t>();
  s.started_at = j["started_at"].get<int64_t>();
  if (s.pid <= 1) return bad();
  // Optional: a launch outside a unit has none. Only the form systemd gives it is accepted, as
  // the daemon matches the journal with it.
  if (j.contains("invocation") && (!str("invocation", s.invocation) || !is_invocation_id(s.invocation))) return bad();
  return s;
}

bool is_invocation_id(std::string_view id) {
  return id.size() == 32 && std::all_of(id.begin(), id.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

Result<VmState> read_vm_state_file(const std::string& path) {
  std::string text = VL_TRY(sys::read_file(path, 1 << 16));
  auto state = vm_state_from_json(text);
  if (!state) return state.error().wrap(path);
  return state;
}

Result<UniqueFd> open_process(pid_t pid, uint64_t start_time) {
  auto gone = [pid] { return Error::make(ErrorCode::kNotFound, "process " + std::to_string(pid) + " is gone"); };
  UniqueFd fd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  if (!fd) {
    if (errno == ESRCH) return gone();
    return Error::from_errno("open a pidfd for process " + std::to_string(pid));
  }
  // Checked after the pidfd exists: had pid been recycled before pidfd_open, the fd names the
  // newer process, whose start time is later.
  auto start = process_start_time(pid);
  // ENOENT/ESRCH: the process went away meanwhile. Anything else (EMFILE...) is no verdict.
  if (!start && start.error().sys_errno != ENOENT && start.error().sys_errno != ESRCH) return start.error();
  if (!start || *start != start_time) return gone();
  return fd;
}

bool pidfd_exited(int pidfd) { return wait_pidfd_exited(pidfd, 0); }

bool wait_pidfd_exited(int pidfd, int timeout_ms) {
  // The kernel makes a pidfd readable when the whole thread group has exited, not when the
  // leader alone has (which /proc already shows as a zombie).
  pollfd p{pidfd, POLLIN, 0};
  return sys::retry_eintr([&] { return ::poll(&p, 1, timeout_ms); }) == 1;
}

bool process_matches(pid_t pid, uint64_t start_time) {
  auto fd = open_process(pid, start_time);
  return fd && !pidfd_exited(fd->get());
}

Result<uint64_t> process_start_time(pid_t pid) {
  std::string stat = VL_TRY(sys::read_file("/proc/" + std::to_string(pid) + "/stat", 4096));
  // The command name (field 2) may contain spaces and parentheses: parse after the last ')'.
  size_t close = stat.rfind(')');
  if (close == std::string::npos) return Error::invalid("unreadable /proc stat of " + std::to_string(pid));
  const char* p = stat.c_str() + close + 2;
  for (int field = 3; field < 22; ++field) {
    p = std::strchr(p, ' ');
    if (!p) return Error::invalid("short /proc stat of " + std::to_string(pid));
    ++p;
  }
  return std::strtoull(p, nullptr, 10);
}

}  // namespace vl
