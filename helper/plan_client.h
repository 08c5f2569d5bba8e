// The helper's calls to vmlaunchd on the control socket (root peers only): the launch plan
// (GetLaunchPlan) and the passphrase of encrypted disks given with the start (TakePassphrase)
// when `launch` runs without --plan, and, in a kvm-vm@ unit, the launch's
// outcome (Launched, LaunchFailed), so that the daemon supervises what systemd started.
#pragma once

#include <string>

#include "common/config.h"
#include "common/unique_fd.h"

namespace vl::helper {

/// Asks the daemon on the control socket for the plan of `vm`. The reply is untrusted input
/// and is validated by the launch like any plan.
Result<std::string> fetch_plan_from_daemon(const HostConfig& config, const VmName& vm);

/// Takes from the daemon the passphrase an operator gave with the start of `vm` under way
/// (`vmctl start --ask-passphrase`), as the descriptor it came as; an empty UniqueFd if none
/// was given. The descriptor is untrusted like the plan (disk_secret.h reads it).
Result<UniqueFd> take_passphrase_from_daemon(const HostConfig& config, const VmName& vm);

/// Tells the daemon that the unit's emulator of `vm` was exec'd, and waits until the daemon
/// has it running (QMP `cont`) or says why not (`vmlaunch-helper supervise`, ExecStartPost).
Result<void> report_launched(const HostConfig& config, const VmName& vm);

/// Tells the daemon that the unit's launch of `vm` failed, and why. Best effort: a daemon
/// that cannot be told still sees the start fail at its deadline.
void report_launch_failed(const HostConfig& config, const VmName& vm, const Error& error);

}  // namespace vl::helper
