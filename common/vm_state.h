// The state file of a running VM: RUNTIME/vms/NAME/state.json, written by the root helper
// just before it execs qemu, read by the daemon to re-adopt the VM after a restart and by
// cleanup to know what to undo.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "common/error.h"

namespace vl {

struct VmState {
  std::string vm;
  pid_t pid = 0;                    ///< qemu's pid (the helper execs in place)
  uint64_t start_time = 0;          ///< /proc/PID/stat field 22: tells a reused pid apart
  uid_t uid = 0;
  std::string emulator;
  std::vector<std::string> taps;
  std::vector<std::string> macs;    ///< one per tap, in the same order
  std::vector<std::string> disks;   ///< disks whose owner was changed
  std::string zone;
  int64_t started_at = 0;           ///< seconds since the epoch
  friend bool operator==(const VmState&, const VmState&) = default;
};

std::string vm_state_to_json(const VmState& state);
Result<VmState> vm_state_from_json(std::string_view text);
/// Reads and parses a state file; errors name the path.
Result<VmState> read_vm_state_file(const std::string& path);

/// The start time (clock ticks since boot) of process pid, from /proc/PID/stat.
Result<uint64_t> process_start_time(pid_t pid);

/// True if pid is a live (not zombie) process that started at start_time: the process the
/// state file describes, not a recycled pid or an unreaped corpse.
bool process_matches(pid_t pid, uint64_t start_time);

}  // namespace vl
