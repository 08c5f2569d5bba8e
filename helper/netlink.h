// A route-netlink socket (libnl-route) and link lookups shared by launch.cpp and cleanup.cpp.
#pragma once

#include <map>

#include <sys/types.h>

#include <memory>
#include <optional>
#include <utility>
#include <string>

#include "common/domain.h"
#include "common/error.h"

struct nl_msg;
struct nl_sock;
struct rtnl_link;

namespace vl::helper {

struct LinkFree {
  void operator()(rtnl_link* link) const;
};
using LinkPtr = std::unique_ptr<rtnl_link, LinkFree>;

/// What the helper needs to know about one network interface.
struct LinkInfo {
  int ifindex = 0;
  std::string kind;  ///< IFLA_INFO_KIND: "bridge", "tun", "veth", ... or empty
  unsigned mtu = 0;
  int master = 0;    ///< ifindex of the bridge it is a port of, 0 if none
  bool up = false;
};

/// An owned, connected NETLINK_ROUTE socket.
class Netlink final {
 public:
  static Result<Netlink> open();
  ~Netlink();
  Netlink(Netlink&& other) noexcept : sock_(std::exchange(other.sock_, nullptr)) {}
  Netlink(const Netlink&) = delete;
  Netlink& operator=(const Netlink&) = delete;
  Netlink& operator=(Netlink&&) = delete;

  /// The link called `name`, or nullopt if there is none (any other failure is an error).
  Result<std::optional<LinkInfo>> find(const std::string& name);
  /// Makes `port` a port of `bridge` (both ifindexes).
  Result<void> enslave(int bridge, int port, const std::string& what);
  /// Sets the link up (and its MTU, if mtu > 0).
  Result<void> set_up(const std::string& name, unsigned mtu);
  /// Sets the link down.
  Result<void> set_down(const std::string& name);
  /// Sets the MTU of a link that is down.
  Result<void> set_mtu(const std::string& name, unsigned mtu);
  /// Deletes the link called `name`; "no such link" counts as success.
  Result<void> remove(const std::string& name);
  /// Deletes the link with this ifindex (`name` is for messages); "no such link" counts as
  /// success. Unlike a name, an ifindex is not handed to a new link at once.
  Result<void> remove_index(int ifindex, const std::string& name);
  /// The owner of the tun/tap link with this ifindex (IFLA_TUN_OWNER), or nullopt if it has
  /// none or is not a tun/tap. `name` is for messages.
  Result<std::optional<uid_t>> tun_owner(int ifindex, const std::string& name);
  /// Every link with its name (for `inspect`, inspect.h).
  Result<std::vector<std::pair<std::string, LinkInfo>>> list_links();
  /// Whether each bridge port learns MACs (IFLA_BRPORT_LEARNING), by ifindex.
  Result<std::map<int, bool>> port_learning();
  /// The static, sticky bridge FDB entries (as add_static_fdb makes them), by port ifindex.
  Result<std::map<int, std::vector<MacAddress>>> static_fdb();
  /// The addresses of the link with this ifindex, "ADDRESS/PREFIX", every family.
  Result<std::vector<std::string>> addresses(int ifindex);
  /// Turns MAC learning on or off on the bridge port with this ifindex (IFLA_BRPORT_LEARNING,
  /// as `bridge link set dev NAME learning off`). `name` is for messages.
  Result<void> set_port_learning(int port, bool on, const std::string& name);
  /// Adds a static, sticky FDB entry sending frames for `mac` (VLAN 0) to the bridge port with
  /// this ifindex, replacing any entry the bridge has for that MAC (as `bridge fdb replace MAC
  /// dev NAME master static sticky`). The kernel removes it when the port leaves the bridge.
  Result<void> add_static_fdb(int port, const MacAddress& mac, const std::string& name);

 private:
  explicit Netlink(nl_sock* sock) : sock_(sock) {}
  Result<LinkPtr> get(const std::string& name);
  Result<void> change(const std::string& name, unsigned mtu, bool up);
  Result<void> send_and_ack(nl_msg* msg, const std::string& what);
  /// Sends a dump request of `type` with header `header` and hands each answer to `parse`.
  Result<void> dump(int type, const void* header, size_t size, int (*parse)(nl_msg*, void*), void* arg, const std::string& what);
  nl_sock* sock_;
};

/// An Error for a libnl return code (negative NLE_*), with context.
Error netlink_error(int nl_code, const std::string& context);

}  // namespace vl::helper
