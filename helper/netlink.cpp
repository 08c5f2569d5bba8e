#include "helper/netlink.h"

#include <net/if.h>
#include <netlink/errno.h>
#include <netlink/netlink.h>
#include <netlink/route/link.h>

namespace vl::helper {

void LinkFree::operator()(rtnl_link* link) const { rtnl_link_put(link); }

Error netlink_error(int nl_code, const std::string& context) {
  int code = nl_code < 0 ? -nl_code : nl_code;
  return Error::make(code == NLE_PERM ? ErrorCode::kDenied : ErrorCode::kSystem,
                     context + ": " + nl_geterror(code));
}

Result<Netlink> Netlink::open() {
  nl_sock* sock = nl_socket_alloc();
  if (!sock) return Error::make(ErrorCode::kSystem, "allocate netlink socket");
  if (int r = nl_connect(sock, NETLINK_ROUTE); r < 0) {
    nl_socket_free(sock);
    return netlink_error(r, "connect route netlink");
  }
  return Netlink(sock);
}

Netlink::~Netlink() {
  if (sock_) nl_socket_free(sock_);
}

Result<LinkPtr> Netlink::get(const std::string& name) {
  rtnl_link* link = nullptr;
  if (int r = rtnl_link_get_kernel(sock_, 0, name.c_str(), &link); r < 0)
    return netlink_error(r, "look up interface '" + name + "'");
  return LinkPtr(link);
}

Result<std::optional<LinkInfo>> Netlink::find(const std::string& name) {
  rtnl_link* raw = nullptr;
  int r = rtnl_link_get_kernel(sock_, 0, name.c_str(), &raw);
  if (r == -NLE_OBJ_NOTFOUND || r == -NLE_NODEV) return std::optional<LinkInfo>();
  if (r < 0) return netlink_error(r, "look up interface '" + name + "'");
  LinkPtr link(raw);
  LinkInfo info;
  info.ifindex = rtnl_link_get_ifindex(link.get());
  const char* kind = rtnl_link_get_type(link.get());
  info.kind = kind ? kind : "";
  info.mtu = rtnl_link_get_mtu(link.get());
  info.master = rtnl_link_get_master(link.get());
  info.up = (rtnl_link_get_flags(link.get()) & IFF_UP) != 0;
  return std::optional<LinkInfo>(info);
}

Result<void> Netlink::enslave(int bridge, int port, const std::string& what) {
  if (int r = rtnl_link_enslave_ifindex(sock_, bridge, port); r < 0) return netlink_error(r, what);
  return {};
}

Result<void> Netlink::change(const std::string& name, unsigned mtu, bool up) {
  LinkPtr link = VL_TRY(get(name));
  LinkPtr change(rtnl_link_alloc());
  if (!change) return Error::make(ErrorCode::kSystem, "allocate netlink link");
  if (mtu > 0) rtnl_link_set_mtu(change.get(), mtu);
  if (up) rtnl_link_set_flags(change.get(), IFF_UP);
  if (int r = rtnl_link_change(sock_, link.get(), change.get(), 0); r < 0)
    return netlink_error(r, std::string(up ? "set up" : "set MTU of") + " interface '" + name + "'");
  return {};
}

Result<void> Netlink::set_up(const std::string& name, unsigned mtu) { return change(name, mtu, true); }
Result<void> Netlink::set_mtu(const std::string& name, unsigned mtu) { return change(name, mtu, false); }

Result<void> Netlink::remove(const std::string& name) {
  rtnl_link* raw = nullptr;
  int r = rtnl_link_get_kernel(sock_, 0, name.c_str(), &raw);
  if (r == -NLE_OBJ_NOTFOUND || r == -NLE_NODEV) return {};
  if (r < 0) return netlink_error(r, "look up interface '" + name + "'");
  LinkPtr link(raw);
  r = rtnl_link_delete(sock_, link.get());
  if (r < 0 && r != -NLE_OBJ_NOTFOUND && r != -NLE_NODEV)
    return netlink_error(r, "delete interface '" + name + "'");
  return {};
}

}  // namespace vl::helper
