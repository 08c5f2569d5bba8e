// The console filter of earlier versions, removed.
//
// Before each emulator had a network namespace of its own (net_namespace.h), QEMU's VNC server
// listened on TCP in the host's network, and the helper guarded each VM's port with an
// nftables rule letting only operators connect, in the table `inet vmlaunch`:
//   map consoles  { type inet_service : verdict }   VNC port -> jump vm-NAME
//   chain output  { hook output; tcp SYN to a local address: tcp dport vmap @consoles }
//   chain vm-NAME { meta skuid != { operators } counter reject with tcp reset }
// VNC is now a Unix socket that only root and the daemon's group reach (vnc_socket.h), and the
// helper installs no such rule. Cleanup still removes a VM's, so that an emulator started by an
// earlier version, stopped after the upgrade, leaves nothing behind.
#pragma once

#include <string>

#include "common/error.h"

namespace vl::helper {

/// Removes the VM's map elements and chain, and the table with the last VM's. Nothing to remove
/// counts as success.
Result<void> remove_console_filter(const std::string& vm);

}  // namespace vl::helper
