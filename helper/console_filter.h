// Console access: who on this host may open a TCP connection to a VM's VNC port.
//
// QEMU's VNC server listens on TCP, which every local uid can reach, and a VNC password (when
// the XML sets one) is a weak, 8-character secret: without a filter, any local user, the
// emulator of any other VM included, could reach any VM's console. The helper therefore
// installs, for each VM with VNC, before the emulator runs, a rule that rejects connection
// attempts to the VM's VNC port from sockets whose owner is not an operator.
//
// Layout, in the table `inet vmlaunch` that vmlaunch owns:
//   map consoles  { type inet_service : verdict }   VNC port -> jump vm-NAME
//   chain output  { hook output; tcp SYN (no ACK) to a local address: tcp dport vmap @consoles }
//   chain vm-NAME { meta skuid != { operators } counter reject with tcp reset }
// Operators are root, the daemon's user and the members of the admin group, resolved from the
// user and group databases at launch (console_filter.cpp says why, and what that implies). A
// uid of the VM range is never one. Adding or removing a VM is one atomic nftables transaction.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/config.h"
#include "common/error.h"

namespace vl::helper {

/// The uids whose sockets may connect to a VM's VNC port: root, the daemon user and the admin
/// group's members (supplementary, and by primary group), sorted and without duplicates. A
/// missing daemon user or admin group leaves it out, with a warning; a member whose uid lies in
/// the VM uid range is left out with a warning: a VM's uid is never an operator.
std::vector<uid_t> console_operators(const HostConfig& config);

/// Installs (or replaces) the VM's chain and maps `port` to it, in one transaction. Refuses a
/// port that another VM's chain guards (that VM was not cleaned up, or is running on it).
Result<void> install_console_filter(const std::string& vm, uint16_t port, const std::vector<uid_t>& operators);
/// Removes the VM's map elements and chain, and the table with the last VM's. Nothing to remove
/// counts as success.
Result<void> remove_console_filter(const std::string& vm);
/// True if the VM has a chain in the table.
Result<bool> console_filter_exists(const std::string& vm);

}  // namespace vl::helper
