#include "helper/net_namespace.h"

#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include "common/sys.h"
#include "helper/log.h"
#include "helper/netlink.h"

namespace vl::helper {

OwnNetworkNamespace::~OwnNetworkNamespace() {
  if (!host_ns_ || ::geteuid() != 0) return;
  // PRIV: back to the host's own network namespace, so that the rollback finds the taps.
  if (::setns(host_ns_.get(), CLONE_NEWNET) < 0)
    log_error(Error::from_errno("return to the host's network namespace after a failed launch"));
}

Result<OwnNetworkNamespace> OwnNetworkNamespace::enter() {
  OwnNetworkNamespace ns;
  ns.host_ns_ = VL_TRY(sys::check_fd(::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC), "open the host's network namespace"));
  // PRIV: creates an empty namespace for this process alone; it takes nothing from any input.
  VL_TRY(sys::check(::unshare(CLONE_NEWNET), "unshare the network namespace"));
  // Loopback starts down in a new namespace. Up, anything the emulator listens on or connects
  // to at 127.0.0.1 behaves as usual but stays inside this namespace, where nothing else lives.
  // The socket is opened after unshare, so it speaks to the new namespace.
  Netlink nl = VL_TRY(Netlink::open());
  VL_CHECK(nl.set_up("lo", 0));
  return ns;
}

}  // namespace vl::helper
