// Registration of a VM with systemd-machined, so that `machinectl list` shows it (class vm,
// leader the emulator, its taps as network interfaces). Only for launches by a kvm-vm@ unit,
// whose cgroup machined then takes as the machine's. Tolerated where machined is absent or
// refuses (a machine of the same name): the VM runs the same, and the failure is logged.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "common/vm_name.h"

namespace vl::helper {

/// Registers `vm` with `leader` (the helper's own pid, the emulator's after the exec) and the
/// interfaces `taps`. Logs a warning on failure.
void register_machine(const VmName& vm, pid_t leader, const std::vector<std::string>& taps);

/// Unregisters `vm` (cleanup). Quiet when machined is absent or knows no such machine:
/// machined also forgets a machine by itself once its unit is gone.
void unregister_machine(const VmName& vm);

}  // namespace vl::helper
