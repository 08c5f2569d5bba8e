// The state file of a running VM: RUNTIME/vms/NAME/state.json, written by the root helper
// just before it execs qemu, read by the daemon to re-adopt the VM after a restart and by
// cleanup to know what to undo.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "common/error.h"
#include "common/unique_fd.h"

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
  /// Under systemd, the invocation ID of the kvm-vm@NAME.service run that launched it (32 hex
  /// digits, systemd's $INVOCATION_ID): the journal's _SYSTEMD_INVOCATION_ID of this run's
  /// output. "" for a launch outside a unit.
  std::string invocation;
  friend bool operator==(const VmState&, const VmState&) = default;
};

std::string vm_state_to_json(const VmState& state);
Result<VmState> vm_state_from_json(std::string_view text);
/// True if `id` has the form of a systemd invocation ID: 32 lowercase hex digits.
bool is_invocation_id(std::string_view id);
/// Reads and parses a state file; errors name the path.
Result<VmState> read_vm_state_file(const std::string& path);

/// The start time (clock ticks since boot) of process pid, from /proc/PID/stat.
Result<uint64_t> process_start_time(pid_t pid);

/// A pidfd for the process the state file describes: pidfd_open() on pid, then its start time
/// checked against start_time (after opening, so that the fd cannot name a later holder of a
/// recycled pid). kNotFound if pid is gone or now belongs to another process. The fd is
/// returned even if the process has exited but is not yet reaped: see pidfd_exited().
Result<UniqueFd> open_process(pid_t pid, uint64_t start_time);

/// True once every thread of the process behind pidfd has exited (the pidfd is readable),
/// whether or not its parent has reaped it.
bool pidfd_exited(int pidfd);

/// Waits up to timeout_ms for pidfd_exited(); returns whether it did.
bool wait_pidfd_exited(int pidfd, int timeout_ms);

/// True if pid is the process that started at start_time and one of its threads still runs.
/// A thread-group leader that exited while other threads run shows as a zombie in /proc, yet
/// the process lives (and holds its fds): it counts as running. A process that has exited but
/// is not yet reaped counts as gone.
bool process_matches(pid_t pid, uint64_t start_time);

}  // namespace vl
