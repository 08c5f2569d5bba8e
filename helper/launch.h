// vmlaunch-helper launch: everything root does to start one VM, then exec.
//
// THE INVARIANT OF THIS DIRECTORY: root decides only from root-owned inputs. The host
// configuration and the domain XML are re-read here; from the unprivileged daemon the helper
// takes nothing but a VM name (validated against the grammar and the domains directory) and a
// launch plan (an argv and fd numbers), which it treats as hostile: the argv is executed only
// as the VM's own uid, without capabilities, under no_new_privs and seccomp, with the fds the
// helper chose itself. Paths, bridges, MACs, uids and the emulator binary all come from root's
// files.
#pragma once

#include <string>

#include "common/config.h"
#include "common/unique_fd.h"
#include "common/vm_state.h"
#include "common/vm_name.h"

namespace vl::helper {

/// Prepares everything for `vm` and execs its emulator in place. Returns only on failure,
/// after undoing every step it completed (unless the failure came after the uid change, in
/// which case `cleanup` undoes it; systemd's ExecStopPost and the broker always run it).
/// `report_fd` (may be null or -1): the broker's report pipe; on return it holds the number
/// under which the pipe now lives (it is moved out of the way of the plan's fds).
/// `in_unit`: the launch runs as a kvm-vm@ unit's main process (type notify): just before the
/// exec it registers the VM with systemd-machined and sends READY=1, so that the unit's
/// ExecStartPost (`supervise`) hands the emulator to the daemon; the unit is active only
/// once the daemon has the guest running.
/// `passphrase_from_daemon`: for a VM with encrypted disks, first ask the daemon for a
/// passphrase the operator gave with the start (a launch with the daemon's plan); without one,
/// the VM's key file is read (disk_secret.h).
Error launch_vm(const HostConfig& config, const VmName& vm, const std::string& plan_json, int* report_fd,
                bool in_unit = false, bool passphrase_from_daemon = false);

/// Above every fd number a plan may use (3..18). Targets from here up are the helper's own
/// (this report pipe, its private log fd): placed for the emulator but closed by its execve.
inline constexpr int kReportFdTarget = 31;

/// Unconfirmed launches. A launch the broker runs (one with a report pipe) records its
/// emulator, pid and start time, in STATE/NAME.launch (root's own directory) before the
/// exec; the broker removes the record once the daemon has its answer (confirm_launch). A
/// record that outlives its launch means the daemon was never told the emulator exists (the
/// broker died mid-launch, or the daemon before the answer reached it): that emulator, still
/// paused before `cont`, is nobody's, and cleanup ends it instead of refusing (cleanup.h).
/// Launches under systemd leave no record: their unit owns the emulator.
void confirm_launch(const HostConfig& config, const VmName& vm);
/// True if the unconfirmed-launch record of `vm` names exactly `emulator` (pid and start time).
bool launch_unconfirmed(const HostConfig& config, const VmName& vm, const VmState& emulator);

}  // namespace vl::helper
