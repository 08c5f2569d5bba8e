// A VM's port on its zone bridge: attached with MAC learning off and one static FDB entry.
//
// Why not leave it to the nftables filter (nft_filter.h): the Linux bridge learns a frame's
// source MAC in br_handle_frame_finish, after the bridge-family prerouting hook, and it also
// learns from link-local frames (01:80:c2:00:00:0X) that never reach prerouting, LLDP and (with
// STP on) BPDUs without passing any nftables hook at all. A filter can drop every forged frame
// and the bridge still learns from some of them. So a VM's port never learns: nothing a VM
// sends, forged or not, moves its neighbour's MAC to its port or fills the bridge's table.
// Its own MAC, the one its domain XML declares, is a static entry instead; without it the
// port's MAC would be unknown and every frame for the VM flooded to all ports, the neighbours'
// included. The entry is sticky, so a frame from that MAC on a port that does learn (an uplink)
// cannot move it either.
//
// Both the flag and the entry belong to the port: the kernel drops them when the tap leaves the
// bridge or disappears, so closing the tap fd undoes this as it undoes the attachment.
//
// Limitation: the entry is for VLAN 0, which is what a bridge without vlan_filtering uses. On a
// VLAN-filtering bridge, frames for the VM would be flooded within its VLAN.
#pragma once

#include <string>

#include "common/domain.h"
#include "common/error.h"
#include "helper/netlink.h"

namespace vl::helper {

/// Makes the tap `tap` (down, filtered already) a port of `bridge` that does not learn and has
/// a static, sticky FDB entry for `mac`, then sets it up. On failure the tap may be left a port
/// of the bridge, down: closing its fd undoes everything.
Result<void> attach_vm_port(Netlink& nl, const std::string& bridge, const std::string& tap, const MacAddress& mac);

}  // namespace vl::helper
