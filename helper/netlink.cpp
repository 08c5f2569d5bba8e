#include "helper/netlink.h"

#include <linux/if_bridge.h>
#include <linux/if_link.h>
#include <linux/neighbour.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netlink/attr.h>
#include <netlink/errno.h>
#include <netlink/msg.h>
#include <netlink/netlink.h>
#include <netlink/route/addr.h>
#include <netlink/route/link.h>

#include <cstring>
#include <memory>

namespace vl::helper {

namespace {

// Finds IFLA_LINKINFO / IFLA_INFO_DATA / IFLA_TUN_OWNER in an RTM_NEWLINK message. libnl-route
// has no "tun" link type, so it would drop these attributes: they are read here.
int parse_tun_owner(nl_msg* msg, void* arg) {
  auto* owner = static_cast<std::optional<uid_t>*>(arg);
  nlattr* link[IFLA_MAX + 1];
  nlattr* info[IFLA_INFO_MAX + 1];
  nlattr* tun[IFLA_TUN_MAX + 1];
  if (nlmsg_parse(nlmsg_hdr(msg), sizeof(ifinfomsg), link, IFLA_MAX, nullptr) < 0 || !link[IFLA_LINKINFO] ||
      nla_parse_nested(info, IFLA_INFO_MAX, link[IFLA_LINKINFO], nullptr) < 0 || !info[IFLA_INFO_KIND] ||
      nla_strcmp(info[IFLA_INFO_KIND], "tun") != 0 || !info[IFLA_INFO_DATA] ||
      nla_parse_nested(tun, IFLA_TUN_MAX, info[IFLA_INFO_DATA], nullptr) < 0 || !tun[IFLA_TUN_OWNER])
    return NL_OK;
  *owner = nla_get_u32(tun[IFLA_TUN_OWNER]);
  return NL_OK;
}

// Reads IFLA_PROTINFO / IFLA_BRPORT_LEARNING of one bridge port of an AF_BRIDGE dump.
int parse_port_learning(nl_msg* msg, void* arg) {
  auto* learning = static_cast<std::map<int, bool>*>(arg);
  nlattr* link[IFLA_MAX + 1];
  nlattr* port[IFLA_BRPORT_MAX + 1];
  nlmsghdr* hdr = nlmsg_hdr(msg);
  if (nlmsg_parse(hdr, sizeof(ifinfomsg), link, IFLA_MAX, nullptr) < 0 || !link[IFLA_PROTINFO] ||
      !(link[IFLA_PROTINFO]->nla_type & NLA_F_NESTED) ||  // nla_type() masks the flag out
      nla_parse_nested(port, IFLA_BRPORT_MAX, link[IFLA_PROTINFO], nullptr) < 0 || !port[IFLA_BRPORT_LEARNING])
    return NL_OK;
  const auto* ifi = static_cast<const ifinfomsg*>(nlmsg_data(hdr));
  (*learning)[ifi->ifi_index] = nla_get_u8(port[IFLA_BRPORT_LEARNING]) != 0;
  return NL_OK;
}

// Collects one static (NUD_NOARP), sticky entry of an AF_BRIDGE FDB dump.
int parse_static_fdb(nl_msg* msg, void* arg) {
  auto* entries = static_cast<std::map<int, std::vector<MacAddress>>*>(arg);
  nlmsghdr* hdr = nlmsg_hdr(msg);
  nlattr* attrs[NDA_MAX + 1];
  if (nlmsg_parse(hdr, sizeof(ndmsg), attrs, NDA_MAX, nullptr) < 0 || !attrs[NDA_LLADDR] || nla_len(attrs[NDA_LLADDR]) != 6)
    return NL_OK;
  const auto* ndm = static_cast<const ndmsg*>(nlmsg_data(hdr));
  if (!(ndm->ndm_state & NUD_NOARP) || !(ndm->ndm_flags & NTF_STICKY)) return NL_OK;
  MacAddress mac;
  std::memcpy(mac.bytes.data(), nla_data(attrs[NDA_LLADDR]), 6);
  (*entries)[ndm->ndm_ifindex].push_back(mac);
  return NL_OK;
}

struct CacheFree {
  void operator()(nl_cache* cache) const { nl_cache_free(cache); }
};
using CachePtr = std::unique_ptr<nl_cache, CacheFree>;

}  // namespace

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
    return netlink_error(r, "look up interface " + quote_for_message(name));
  return LinkPtr(link);
}

Result<std::optional<LinkInfo>> Netlink::find(const std::string& name) {
  rtnl_link* raw = nullptr;
  int r = rtnl_link_get_kernel(sock_, 0, name.c_str(), &raw);
  if (r == -NLE_OBJ_NOTFOUND || r == -NLE_NODEV) return std::optional<LinkInfo>();
  if (r < 0) return netlink_error(r, "look up interface " + quote_for_message(name));
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

Result<std::vector<std::pair<std::string, LinkInfo>>> Netlink::list_links() {
  nl_cache* raw = nullptr;
  if (int r = rtnl_link_alloc_cache(sock_, AF_UNSPEC, &raw); r < 0) return netlink_error(r, "list interfaces");
  CachePtr cache(raw);
  std::vector<std::pair<std::string, LinkInfo>> links;
  for (nl_object* o = nl_cache_get_first(cache.get()); o; o = nl_cache_get_next(o)) {
    auto* link = reinterpret_cast<rtnl_link*>(o);
    LinkInfo info;
    info.ifindex = rtnl_link_get_ifindex(link);
    const char* kind = rtnl_link_get_type(link);
    info.kind = kind ? kind : "";
    info.mtu = rtnl_link_get_mtu(link);
    info.master = rtnl_link_get_master(link);
    info.up = (rtnl_link_get_flags(link) & IFF_UP) != 0;
    const char* name = rtnl_link_get_name(link);
    links.emplace_back(name ? name : "", info);
  }
  return links;
}

Result<void> Netlink::dump(int type, const void* header, size_t size, int (*parse)(nl_msg*, void*), void* arg,
                           const std::string& what) {
  if (int r = nl_send_simple(sock_, type, NLM_F_DUMP, const_cast<void*>(header), size); r < 0) return netlink_error(r, what);
  nl_cb* sock_cb = nl_socket_get_cb(sock_);
  std::unique_ptr<nl_cb, void (*)(nl_cb*)> cb(nl_cb_clone(sock_cb), nl_cb_put);
  nl_cb_put(sock_cb);
  if (!cb) return Error::make(ErrorCode::kSystem, "allocate netlink callbacks");
  nl_cb_set(cb.get(), NL_CB_VALID, NL_CB_CUSTOM, parse, arg);
  if (int r = nl_recvmsgs(sock_, cb.get()); r < 0) return netlink_error(r, what);
  return {};
}

Result<std::map<int, bool>> Netlink::port_learning() {
  // Port flags come only with a dump in the AF_BRIDGE family (rtnl_bridge_getlink).
  ifinfomsg request{};
  request.ifi_family = AF_BRIDGE;
  std::map<int, bool> learning;
  VL_CHECK(dump(RTM_GETLINK, &request, sizeof request, parse_port_learning, &learning, "read the bridge ports' learning flags"));
  return learning;
}

Result<std::map<int, std::vector<MacAddress>>> Netlink::static_fdb() {
  ndmsg request{};
  request.ndm_family = AF_BRIDGE;
  std::map<int, std::vector<MacAddress>> entries;
  VL_CHECK(dump(RTM_GETNEIGH, &request, sizeof request, parse_static_fdb, &entries, "read the bridges' static FDB entries"));
  return entries;
}

Result<std::vector<std::string>> Netlink::addresses(int ifindex) {
  nl_cache* raw = nullptr;
  if (int r = rtnl_addr_alloc_cache(sock_, &raw); r < 0) return netlink_error(r, "list addresses");
  CachePtr cache(raw);
  std::vector<std::string> out;
  for (nl_object* o = nl_cache_get_first(cache.get()); o; o = nl_cache_get_next(o)) {
    auto* addr = reinterpret_cast<rtnl_addr*>(o);
    if (rtnl_addr_get_ifindex(addr) != ifindex || !rtnl_addr_get_local(addr)) continue;
    char buf[INET6_ADDRSTRLEN + 8];
    out.push_back(nl_addr2str(rtnl_addr_get_local(addr), buf, sizeof buf));
  }
  return out;
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
    return netlink_error(r, std::string(up ? "set up" : "set MTU of") + " interface " + quote_for_message(name));
  return {};
}

Result<void> Netlink::set_up(const std::string& name, unsigned mtu) { return change(name, mtu, true); }
Result<void> Netlink::set_mtu(const std::string& name, unsigned mtu) { return change(name, mtu, false); }

Result<void> Netlink::set_down(const std::string& name) {
  LinkPtr link = VL_TRY(get(name));
  LinkPtr change(rtnl_link_alloc());
  if (!change) return Error::make(ErrorCode::kSystem, "allocate netlink link");
  rtnl_link_unset_flags(change.get(), IFF_UP);
  if (int r = rtnl_link_change(sock_, link.get(), change.get(), 0); r < 0)
    return netlink_error(r, "set down interface " + quote_for_message(name));
  return {};
}

Result<void> Netlink::remove(const std::string& name) {
  rtnl_link* raw = nullptr;
  int r = rtnl_link_get_kernel(sock_, 0, name.c_str(), &raw);
  if (r == -NLE_OBJ_NOTFOUND || r == -NLE_NODEV) return {};
  if (r < 0) return netlink_error(r, "look up interface " + quote_for_message(name));
  LinkPtr link(raw);
  r = rtnl_link_delete(sock_, link.get());
  if (r < 0 && r != -NLE_OBJ_NOTFOUND && r != -NLE_NODEV)
    return netlink_error(r, "delete interface " + quote_for_message(name));
  return {};
}

Result<void> Netlink::remove_index(int ifindex, const std::string& name) {
  LinkPtr link(rtnl_link_alloc());
  if (!link) return Error::make(ErrorCode::kSystem, "allocate netlink link");
  rtnl_link_set_ifindex(link.get(), ifindex);
  int r = rtnl_link_delete(sock_, link.get());
  if (r < 0 && r != -NLE_OBJ_NOTFOUND && r != -NLE_NODEV) return netlink_error(r, "delete interface " + quote_for_message(name));
  return {};
}

Result<std::optional<uid_t>> Netlink::tun_owner(int ifindex, const std::string& name) {
  std::string what = "read the owner of interface " + quote_for_message(name);
  ifinfomsg request{};
  request.ifi_family = AF_UNSPEC;
  request.ifi_index = ifindex;
  if (int r = nl_send_simple(sock_, RTM_GETLINK, 0, &request, sizeof request); r < 0) return netlink_error(r, what);
  nl_cb* sock_cb = nl_socket_get_cb(sock_);
  std::unique_ptr<nl_cb, void (*)(nl_cb*)> cb(nl_cb_clone(sock_cb), nl_cb_put);
  nl_cb_put(sock_cb);
  if (!cb) return Error::make(ErrorCode::kSystem, "allocate netlink callbacks");
  std::optional<uid_t> owner;
  nl_cb_set(cb.get(), NL_CB_VALID, NL_CB_CUSTOM, parse_tun_owner, &owner);
  // The reply, then the acknowledgement libnl asks for by default (as rtnl_link_get_kernel).
  if (int r = nl_recvmsgs(sock_, cb.get()); r < 0) return netlink_error(r, what);
  if (int r = nl_wait_for_ack(sock_); r < 0) return netlink_error(r, what);
  return owner;
}

// Sends a request built here and waits for the kernel's acknowledgement; takes `msg`.
Result<void> Netlink::send_and_ack(nl_msg* msg, const std::string& what) {
  if (!msg) return Error::make(ErrorCode::kSystem, "allocate netlink message to " + what);
  // nl_send_sync adds NLM_F_REQUEST and NLM_F_ACK, waits for the answer and frees the message.
  if (int r = nl_send_sync(sock_, msg); r < 0) return netlink_error(r, what);
  return {};
}

Result<void> Netlink::set_port_learning(int port, bool on, const std::string& name) {
  std::string what = std::string("turn MAC learning ") + (on ? "on" : "off") + " on bridge port " + quote_for_message(name);
  // RTM_SETLINK in the AF_BRIDGE family goes to the port's bridge (br_setlink), which reads port
  // flags from a nested IFLA_PROTINFO only (without NLA_F_NESTED it is the old STP state byte).
  // libnl-route's bridge link type builds this only for links read in the AF_BRIDGE family, so
  // the three attributes are put here.
  nl_msg* msg = nlmsg_alloc_simple(RTM_SETLINK, 0);
  ifinfomsg ifi{};
  ifi.ifi_family = AF_BRIDGE;
  ifi.ifi_index = port;
  nlattr* protinfo = nullptr;
  if (msg && (nlmsg_append(msg, &ifi, sizeof ifi, NLMSG_ALIGNTO) < 0 ||
              !(protinfo = nla_nest_start(msg, IFLA_PROTINFO | NLA_F_NESTED)) ||
              nla_put_u8(msg, IFLA_BRPORT_LEARNING, on ? 1 : 0) < 0 || nla_nest_end(msg, protinfo) < 0)) {
    nlmsg_free(msg);
    return Error::make(ErrorCode::kSystem, "build netlink message to " + what);
  }
  return send_and_ack(msg, what);
}

Result<void> Netlink::add_static_fdb(int port, const MacAddress& mac, const std::string& name) {
  std::string what = "add static FDB entry " + mac.str() + " on bridge port " + quote_for_message(name);
  // NTF_MASTER: the bridge's FDB, not the port device's own address list. NUD_NOARP is the
  // bridge's "static": NUD_PERMANENT would make it "local", an address of the bridge itself,
  // whose frames the host takes instead of forwarding them to the port. NTF_STICKY: a frame from
  // this MAC arriving on another (learning) port does not move the entry there.
  // NLM_F_REPLACE: an entry the bridge learned for this MAC before belongs to no running VM
  // (launch.cpp checks MACs are unique among them) and is overwritten.
  nl_msg* msg = nlmsg_alloc_simple(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE);
  ndmsg ndm{};
  ndm.ndm_family = AF_BRIDGE;
  ndm.ndm_ifindex = port;
  ndm.ndm_state = NUD_NOARP;
  ndm.ndm_flags = NTF_MASTER | NTF_STICKY;
  if (msg && (nlmsg_append(msg, &ndm, sizeof ndm, NLMSG_ALIGNTO) < 0 ||
              nla_put(msg, NDA_LLADDR, static_cast<int>(mac.bytes.size()), mac.bytes.data()) < 0)) {
    nlmsg_free(msg);
    return Error::make(ErrorCode::kSystem, "build netlink message to " + what);
  }
  return send_and_ack(msg, what);
}

}  // namespace vl::helper
