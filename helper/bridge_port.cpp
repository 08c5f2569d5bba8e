#include "helper/bridge_port.h"

namespace vl::helper {

Result<void> attach_vm_port(Netlink& nl, const std::string& bridge, const std::string& tap, const MacAddress& mac) {
  auto bridge_link = VL_TRY(nl.find(bridge));
  auto tap_link = VL_TRY(nl.find(tap));
  if (!bridge_link || !tap_link) return Error::make(ErrorCode::kNotFound, "bridge or tap vanished during launch");
  // PRIV: the bridge is a declared zone's, checked to be a bridge; the tap is the one this
  // launch created, still down and held only by the helper, so no frame can pass before the
  // port is set up below.
  VL_CHECK(nl.enslave(bridge_link->ifindex, tap_link->ifindex, "attach tap " + quote_for_message(tap) + " to bridge " + quote_for_message(bridge)));
  // Learning off before the port can forward: a down port is disabled and learns nothing.
  VL_CHECK(nl.set_port_learning(tap_link->ifindex, false, tap));
  VL_CHECK(nl.add_static_fdb(tap_link->ifindex, mac, tap));
  return nl.set_up(tap, 0);
}

}  // namespace vl::helper
