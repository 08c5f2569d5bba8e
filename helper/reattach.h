// Re-attaching a running VM's taps to its zone bridge after the bridge was deleted and created
// again (or a tap left it some other way).
//
// The kernel removes every port of a bridge it deletes: the VM keeps running, its tap keeps
// existing (its emulator holds the fd), but the tap is a port of nothing, and a bridge created
// again under the same name gets none of its old ports back. The port's learning flag and its
// static FDB entry went with the port (bridge_port.h); the VM's nftables filter did not, since
// it lives in the bridge family's hooks and matches the tap by name (nft_filter.h).
//
// The daemon asks for this by VM name only. Everything else is re-derived here from root's
// own inputs: the taps and MACs from the VM's root-owned state file (what was launched), the
// uid from the root-owned uid map, the bridge from the zone in vmlaunch.toml. A tap is taken
// only if it is a tap owned by the VM's uid and is a port of nothing; the bridge only if it is
// a bridge. The filter must already be there: without it the port is not made.
#pragma once

#include "common/config.h"
#include "common/vm_name.h"

namespace vl::helper {

/// Makes every tap of running VM `vm` a port of its zone's bridge again, as the launch does:
/// down, filter present, enslaved, learning off, static FDB entry for its MAC, then up. Taps
/// already ports of that bridge are left as they are. kNotFound if the VM is not running or
/// the bridge does not exist; kDenied if the interface of that name is not a bridge, a tap is
/// not the VM's or is a port of something else, or the VM's filter is missing.
Result<void> reattach_vm(const HostConfig& config, const VmName& vm);

}  // namespace vl::helper
