// The emulator's own network namespace: the network half of its jail.
//
// An emulator reaches the network only through what it is handed: its taps (passed as fds,
// which keep working across namespaces) and the sockets root bound for it (monitor, agent,
// console) or the VNC socket it binds in its own directory (vnc_socket.h). Everything its argv
// or image could otherwise ask for — `-nic user` (slirp), `-monitor tcp:`, `-gdb`, `-serial
// tcp`, an `nbd:` or `http:` backing file — meets a namespace with loopback alone.
#pragma once

#include "common/error.h"

namespace vl::helper {

/// Moves the calling (single-threaded, root) process into a new network namespace holding only
/// the loopback interface, and sets loopback up. Called by drop_privileges_and_exec before the
/// ids change: creating a namespace needs CAP_SYS_ADMIN. The namespace has no name and no
/// bind mount: the kernel frees it when the last process in it (the emulator) exits.
Result<void> enter_own_network_namespace();

}  // namespace vl::helper
