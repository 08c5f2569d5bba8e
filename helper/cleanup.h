// vmlaunch-helper cleanup: undo everything a launch did, idempotently.
#pragma once

#include "common/config.h"
#include "common/vm_name.h"

namespace vl::helper {

/// Undoes a launch in reverse launch order: kills every remaining process of the VM's uid
/// (uid_reaper.h), removes its taps (tun/taps owned by that uid only; while another interface of
/// a tap's name is a bridge port, the step fails and the filter stays), its nftables chain and
/// udev rule, restores disk owners from the journal, and removes the runtime directory and the
/// launch's unconfirmed-launch record. Stops at the first step that fails, so that nothing is
/// released while an earlier step's objects remain; running it again continues. Refuses while
/// the recorded emulator still runs (any of its threads), unless it is the emulator of an
/// unconfirmed launch (launch.h): then it is ended with the rest. Does nothing, successfully,
/// for a name with no domain XML, runtime directory or disk journal.
Result<void> cleanup_vm(const HostConfig& config, const VmName& vm);

}  // namespace vl::helper
