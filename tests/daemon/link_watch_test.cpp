#include "daemon/link_watch.h"

#include <doctest/doctest.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>

#include <cstring>

namespace {

using Bytes = std::vector<uint8_t>;

// Appends n bytes and pads to netlink's 4-byte alignment.
void put(Bytes& b, const void* p, size_t n) {
  size_t at = b.size();
  b.resize(at + NLMSG_ALIGN(n), 0);
  std::memcpy(b.data() + at, p, n);
}

Bytes attr(uint16_t type, const void* p, size_t n) {
  rtattr a{static_cast<unsigned short>(RTA_LENGTH(n)), type};
  Bytes b;
  put(b, &a, sizeof a);
  put(b, p, n);
  return b;
}

Bytes str_attr(uint16_t type, const std::string& s) { return attr(type, s.c_str(), s.size() + 1); }

// One RTM_NEWLINK/RTM_DELLINK message as the kernel sends it.
Bytes link_message(uint16_t type, int ifindex, const std::string& name, const std::string& kind, uint32_t master) {
  Bytes body;
  ifinfomsg info{};
  info.ifi_index = ifindex;
  put(body, &info, sizeof info);
  if (!name.empty()) {
    Bytes a = str_attr(IFLA_IFNAME, name);
    body.insert(body.end(), a.begin(), a.end());
  }
  if (master) {
    Bytes a = attr(IFLA_MASTER, &master, sizeof master);
    body.insert(body.end(), a.begin(), a.end());
  }
  if (!kind.empty()) {
    Bytes k = str_attr(IFLA_INFO_KIND, kind);
    Bytes a = attr(IFLA_LINKINFO | NLA_F_NESTED, k.data(), k.size());
    body.insert(body.end(), a.begin(), a.end());
  }
  nlmsghdr h{static_cast<uint32_t>(NLMSG_HDRLEN + body.size()), type, 0, 0, 0};
  Bytes m;
  put(m, &h, sizeof h);
  m.insert(m.end(), body.begin(), body.end());
  return m;
}

Bytes done_message() {
  nlmsghdr h{NLMSG_LENGTH(4), NLMSG_DONE, NLM_F_MULTI, 1, 0};
  Bytes m;
  put(m, &h, sizeof h);
  m.insert(m.end(), 4, 0);
  return m;
}

}  // namespace

TEST_SUITE("daemon/link_watch") {
  TEST_CASE("link messages become events with name, kind and master; a dump's end is seen") {
    Bytes d = link_message(RTM_NEWLINK, 7, "br-dmz", "bridge", 0);
    Bytes tap = link_message(RTM_NEWLINK, 9, "web1-0", "tun", 7);
    Bytes gone = link_message(RTM_DELLINK, 7, "br-dmz", "bridge", 0);
    Bytes end = done_message();
    d.insert(d.end(), tap.begin(), tap.end());
    d.insert(d.end(), gone.begin(), gone.end());
    d.insert(d.end(), end.begin(), end.end());
    bool done = false;
    auto events = vl::parse_link_messages(d, &done);
    REQUIRE(events.ok());
    REQUIRE(events->size() == 3);
    CHECK((*events)[0].name == "br-dmz");
    CHECK((*events)[0].kind == "bridge");
    CHECK((*events)[0].ifindex == 7);
    CHECK_FALSE((*events)[0].removed);
    CHECK((*events)[1].name == "web1-0");
    CHECK((*events)[1].kind == "tun");
    CHECK((*events)[1].master == 7);
    CHECK((*events)[2].removed);
    CHECK(done);
  }

  TEST_CASE("truncated or nameless link messages are errors, other message types are skipped") {
    Bytes m = link_message(RTM_NEWLINK, 7, "br-dmz", "bridge", 0);
    CHECK_FALSE(vl::parse_link_messages(std::span(m.data(), m.size() - 8)).ok());  // claims more than it has
    Bytes nameless = link_message(RTM_NEWLINK, 7, "", "bridge", 0);
    CHECK_FALSE(vl::parse_link_messages(nameless).ok());
    Bytes bad_attr = link_message(RTM_NEWLINK, 7, "br-dmz", "", 0);
    bad_attr[NLMSG_HDRLEN + sizeof(ifinfomsg)] = 0xff;  // the name attribute's length overruns
    CHECK_FALSE(vl::parse_link_messages(bad_attr).ok());
    Bytes addr = link_message(RTM_NEWADDR, 7, "br-dmz", "", 0);
    auto events = vl::parse_link_messages(addr);
    REQUIRE(events.ok());
    CHECK(events->empty());
  }

  TEST_CASE("a VM's network: attached, bridge gone, impostor, tap detached") {
    vl::LinkTable links = {{"br-dmz", {false, 7, "br-dmz", "bridge", 0}}, {"web1-0", {false, 9, "web1-0", "tun", 7}}};
    auto ok = vl::check_network("br-dmz", {"web1-0"}, links);
    CHECK(ok.attached);
    CHECK(ok.condition == "attached to bridge 'br-dmz'");

    vl::LinkTable gone = {{"web1-0", {false, 9, "web1-0", "tun", 0}}};
    auto lost = vl::check_network("br-dmz", {"web1-0"}, gone);
    CHECK_FALSE(lost.attached);
    CHECK_FALSE(lost.reattach);
    CHECK(lost.condition == "detached: bridge 'br-dmz' is gone");

    vl::LinkTable impostor = {{"br-dmz", {false, 8, "br-dmz", "veth", 0}}, {"web1-0", {false, 9, "web1-0", "tun", 0}}};
    auto veth = vl::check_network("br-dmz", {"web1-0"}, impostor);
    CHECK_FALSE(veth.reattach);
    CHECK(veth.condition == "detached: 'br-dmz' is not a bridge");

    vl::LinkTable back = {{"br-dmz", {false, 10, "br-dmz", "bridge", 0}}, {"web1-0", {false, 9, "web1-0", "tun", 0}}};
    auto detached = vl::check_network("br-dmz", {"web1-0"}, back);
    CHECK(detached.reattach);
    CHECK(detached.condition == "detached: tap 'web1-0' is not a port of bridge 'br-dmz'");
  }
}
