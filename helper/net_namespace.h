// The emulator's own network namespace: the network half of its jail.
//
// An emulator reaches the network only through what it is handed: its taps (passed as fds,
// which keep working across namespaces) and the sockets root bound for it (monitor, agent,
// console) or the VNC socket it binds in its own directory (vnc_socket.h). Everything its argv
// or image could otherwise ask for — `-nic user` (slirp), `-monitor tcp:`, `-gdb`, `-serial
// tcp`, an `nbd:` or `http:` backing file — meets a namespace with loopback alone.
#pragma once

#include "common/error.h"
#include "common/unique_fd.h"

namespace vl::helper {

/// The launch process in a new network namespace holding only the loopback interface, up.
/// Entered by drop_privileges_and_exec before the ids change: creating a namespace needs
/// CAP_SYS_ADMIN. The namespace has no name and no bind mount: the kernel frees it when the
/// last process in it (the emulator) exits. While the process is still root, destroying this
/// object returns it to the host's network namespace, where the launch's rollback finds the
/// taps it must delete; after the privilege drop it cannot and need not.
class OwnNetworkNamespace final {
 public:
  OwnNetworkNamespace() = default;
  OwnNetworkNamespace(OwnNetworkNamespace&&) = default;
  OwnNetworkNamespace& operator=(OwnNetworkNamespace&&) = default;
  OwnNetworkNamespace(const OwnNetworkNamespace&) = delete;
  OwnNetworkNamespace& operator=(const OwnNetworkNamespace&) = delete;
  ~OwnNetworkNamespace();

  /// Moves the calling (single-threaded, root) process into it. On failure the process is
  /// back in the host's namespace.
  static Result<OwnNetworkNamespace> enter();

 private:
  UniqueFd host_ns_;
};

}  // namespace vl::helper
