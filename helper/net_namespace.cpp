#include "helper/net_namespace.h"

#include <sched.h>

#include "common/sys.h"
#include "helper/netlink.h"

namespace vl::helper {

Result<void> enter_own_network_namespace() {
  // PRIV: creates an empty namespace for this process alone; it takes nothing from any input.
  VL_TRY(sys::check(::unshare(CLONE_NEWNET), "unshare the network namespace"));
  // Loopback starts down in a new namespace. Up, anything the emulator listens on or connects
  // to at 127.0.0.1 behaves as usual but stays inside this namespace, where nothing else lives.
  // The socket is opened after unshare, so it speaks to the new namespace.
  Netlink nl = VL_TRY(Netlink::open());
  return nl.set_up("lo", 0);
}

}  // namespace vl::helper
