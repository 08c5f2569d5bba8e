// vmlaunch-helper cleanup: undo everything a launch did, idempotently.
#pragma once

#include "common/config.h"
#include "common/vm_name.h"

namespace vl::helper {

/// Removes the VM's nftables chain, remaining taps, udev rule and runtime directory, and
/// restores disk owners from the journal. Safe when nothing exists; refuses while the VM's
/// emulator is still running. Tries every step and reports the first failure.
Result<void> cleanup_vm(const HostConfig& config, const VmName& vm);

}  // namespace vl::helper
