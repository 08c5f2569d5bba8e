// The nftables anti-spoofing filter against real frames: the test acts as the VM by holding
// the tap fd itself and writes Ethernet frames into it; a veth peer in another network
// namespace and the bridge itself are the receivers.
#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <random>
#include <sstream>

#include "helper/bridge_port.h"
#include "helper/netlink.h"
#include "helper/nft_filter.h"
#include "helper/tap.h"
#include "tests/support/tap_io.h"
#include "tests/support/helper_env.h"

namespace {

using Bytes = std::vector<uint8_t>;
constexpr uint16_t kTestEtherType = 0x88b5;  // IEEE local experimental
const vl::MacAddress kVmMac = vl::MacAddress::parse("52:54:00:00:00:01").value();
const vl::MacAddress kForgedMac = vl::MacAddress::parse("52:54:00:66:66:66").value();
const vl::MacAddress kNeighbourMac = vl::MacAddress::parse("52:54:00:00:00:02").value();
using Dest = std::array<uint8_t, 6>;  // any destination, group addresses included
constexpr Dest kBroadcast = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
// 802.1X PAE: a link-local group address the bridge hands to its input hook only, never to
// prerouting (br_handle_frame).
constexpr Dest kLinkLocalPae = {0x01, 0x80, 0xc2, 0x00, 0x00, 0x03};
// LLDP: a link-local group address the bridge learns from without passing any nftables hook.
constexpr Dest kLinkLocalLldp = {0x01, 0x80, 0xc2, 0x00, 0x00, 0x0e};
constexpr Dest kNobody = {0x52, 0x54, 0x00, 0x77, 0x77, 0x77};  // unicast, unknown: flooded

Bytes eth_header(const vl::MacAddress& src, uint16_t type, const Dest& dst = kBroadcast) {
  Bytes f(dst.begin(), dst.end());
  f.insert(f.end(), src.bytes.begin(), src.bytes.end());
  f.push_back(type >> 8);
  f.push_back(type & 0xff);
  return f;
}

Bytes marker_frame(const vl::MacAddress& src, const std::string& marker, const Dest& dst = kBroadcast) {
  Bytes f = eth_header(src, kTestEtherType, dst);
  f.insert(f.end(), marker.begin(), marker.end());
  while (f.size() < 60) f.push_back(0);
  return f;
}

// An ARP request "who has 10.99.0.1, tell SENDER_IP" with the given sender hardware address.
Bytes arp_request(const vl::MacAddress& eth_src, const vl::MacAddress& sender, uint32_t sender_ip) {
  Bytes f = eth_header(eth_src, ETH_P_ARP);
  const uint8_t fixed[] = {0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01};
  f.insert(f.end(), fixed, fixed + sizeof fixed);
  f.insert(f.end(), sender.bytes.begin(), sender.bytes.end());
  for (int i = 3; i >= 0; --i) f.push_back((sender_ip >> (8 * i)) & 0xff);
  for (int i = 0; i < 6; ++i) f.push_back(0);
  const uint8_t target[] = {10, 99, 0, 1};
  f.insert(f.end(), target, target + 4);
  while (f.size() < 60) f.push_back(0);
  return f;
}

// A minimal IPv4/UDP frame from src_ip; its payload is the marker.
Bytes udp_frame(const vl::MacAddress& src, uint32_t src_ip, const std::string& marker) {
  Bytes f = eth_header(src, ETH_P_IP);
  uint16_t total = static_cast<uint16_t>(20 + 8 + marker.size());
  uint8_t ip[20] = {0x45, 0, uint8_t(total >> 8), uint8_t(total & 0xff), 0, 0, 0x40, 0, 64, 17, 0, 0};
  for (int i = 0; i < 4; ++i) ip[12 + i] = (src_ip >> (8 * (3 - i))) & 0xff;
  ip[16] = 10, ip[17] = 99, ip[18] = 0, ip[19] = 255;
  uint32_t sum = 0;
  for (int i = 0; i < 20; i += 2) sum += (ip[i] << 8) | ip[i + 1];
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  uint16_t check = static_cast<uint16_t>(~sum);
  ip[10] = check >> 8, ip[11] = check & 0xff;
  f.insert(f.end(), ip, ip + 20);
  uint16_t ulen = static_cast<uint16_t>(8 + marker.size());
  const uint8_t udp[8] = {0x30, 0x39, 0x30, 0x39, uint8_t(ulen >> 8), uint8_t(ulen & 0xff), 0, 0};
  f.insert(f.end(), udp, udp + 8);
  f.insert(f.end(), marker.begin(), marker.end());
  while (f.size() < 60) f.push_back(0);
  return f;
}

// An 802.1Q-tagged frame (VLAN 5) around a marker frame's payload.
Bytes vlan_frame(const vl::MacAddress& src, const std::string& marker) {
  Bytes f = eth_header(src, 0x8100);
  const uint8_t tag[] = {0x00, 0x05, uint8_t(kTestEtherType >> 8), uint8_t(kTestEtherType & 0xff)};
  f.insert(f.end(), tag, tag + sizeof tag);
  f.insert(f.end(), marker.begin(), marker.end());
  while (f.size() < 60) f.push_back(0);
  return f;
}

// Writes a frame as the VM would: behind a zeroed virtio-net header (the tap has IFF_VNET_HDR).
void send_as_vm(int tap, const Bytes& frame) {
  Bytes packet(10, 0);
  packet.insert(packet.end(), frame.begin(), frame.end());
  REQUIRE(::write(tap, packet.data(), packet.size()) == static_cast<ssize_t>(packet.size()));
}

vl::UniqueFd packet_socket(const std::string& ifname) {
  vl::UniqueFd s(::socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL)));
  REQUIRE(s.valid());
  sockaddr_ll sll{};
  sll.sll_family = AF_PACKET;
  sll.sll_protocol = htons(ETH_P_ALL);
  sll.sll_ifindex = static_cast<int>(::if_nametoindex(ifname.c_str()));
  REQUIRE(sll.sll_ifindex != 0);
  REQUIRE(::bind(s.get(), reinterpret_cast<sockaddr*>(&sll), sizeof sll) == 0);
  return s;
}

// Reads frames (from a packet socket or a tap) until one carries `until` (or 5 s pass);
// returns every frame seen as text.
std::string receive_until(int sock, const std::string& until) {
  std::string seen;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd p{sock, POLLIN, 0};
    if (::poll(&p, 1, 200) != 1) continue;
    char buf[2048];
    ssize_t n = ::read(sock, buf, sizeof buf);
    if (n <= 0) continue;
    seen.append(buf, static_cast<size_t>(n));
    seen += '\n';
    if (seen.find(until) != std::string::npos) break;
  }
  return seen;
}

uint64_t counter(const std::string& what, const std::string& vm = "web1") {
  auto counters = vl::helper::read_vm_counters(vm);
  REQUIRE(counters.ok());
  for (const auto& c : *counters)
    if (c.tap == vm + "-0" && c.what == what) return c.packets;
  FAIL("no counter " << what);
  return 0;
}

// A named network namespace for the peer, deleted again by the destructor.
class PeerNamespace final {
 public:
  PeerNamespace() : name_("vmlaunch-test-" + std::to_string(::getpid())) {
    vl::test::run_ok("ip netns add " + name_);
  }
  ~PeerNamespace() { (void)std::system(("ip netns delete " + name_).c_str()); }
  PeerNamespace(const PeerNamespace&) = delete;
  PeerNamespace& operator=(const PeerNamespace&) = delete;
  const std::string& name() const { return name_; }

  // A packet socket on `ifname` inside the peer namespace; it stays bound there.
  vl::UniqueFd packet_socket_inside(const std::string& ifname) {
    vl::UniqueFd here(::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC));
    vl::UniqueFd there(::open(("/run/netns/" + name_).c_str(), O_RDONLY | O_CLOEXEC));
    REQUIRE(::setns(there.get(), CLONE_NEWNET) == 0);
    vl::UniqueFd s = packet_socket(ifname);
    REQUIRE(::setns(here.get(), CLONE_NEWNET) == 0);
    return s;
  }

 private:
  std::string name_;
};

// Attaches a VM's tap to br-dmz as the helper's bridge-attach step does.
void attach_as_helper(const std::string& tap, const vl::MacAddress& mac) {
  auto nl = vl::helper::Netlink::open();
  REQUIRE(nl.ok());
  auto attached = vl::helper::attach_vm_port(*nl, "br-dmz", tap, mac);
  REQUIRE_MESSAGE(attached.ok(), attached.error().message());
}

// The FDB entries of br-dmz, each as the words `bridge fdb show` prints (the bridge's own and
// multicast "self" entries left out).
std::vector<std::vector<std::string>> fdb_entries() {
  std::vector<std::vector<std::string>> entries;
  std::istringstream lines(vl::test::bridge_fdb("br-dmz"));
  for (std::string line; std::getline(lines, line);) {
    std::istringstream words(line);
    std::vector<std::string> entry;
    for (std::string w; words >> w;) entry.push_back(w);
    if (entry.size() >= 3 && entry[1] == "dev" && line.find(" master br-dmz") != std::string::npos)
      entries.push_back(std::move(entry));
  }
  return entries;
}

// The bridge ports the FDB sends frames for `mac` to.
std::vector<std::string> fdb_ports(const vl::MacAddress& mac) {
  std::vector<std::string> ports;
  for (const auto& e : fdb_entries())
    if (e[0] == mac.str()) ports.push_back(e[2]);
  return ports;
}

// How many entries the bridge learned on `port`: neither static nor the port's own address.
size_t learned_on(const std::string& port) {
  size_t n = 0;
  for (const auto& e : fdb_entries())
    if (e[2] == port && std::find(e.begin(), e.end(), "static") == e.end() &&
        std::find(e.begin(), e.end(), "permanent") == e.end())
      ++n;
  return n;
}

const vl::MacAddress kPeerMac = vl::MacAddress::parse("52:54:00:aa:aa:aa").value();

// A zone bridge br-dmz (in a private namespace) with two VMs, web1 ("A", the attacker, MAC
// kVmMac, IP 10.99.0.2) and web2 ("B", its neighbour, kNeighbourMac), each filtered and attached
// as the helper does, and a peer host behind a veth whose other end is in its own namespace.
class TwoVmZone final {
 public:
  TwoVmZone() {
    vl::test::run_ok("ip link add br-dmz type bridge && ip link set br-dmz up");
    vl::test::run_ok("ip link add vpeer0 type veth peer name vpeer1 && ip link set vpeer0 master br-dmz up");
    vl::test::run_ok("ip link set vpeer1 netns " + peer_ns_.name() + " && ip -n " + peer_ns_.name() + " link set vpeer1 up");
    REQUIRE(vl::helper::install_vm_filter("web1", {{"web1-0", kVmMac, {vl::IpAddress::parse("10.99.0.2").value()}}}).ok());
    REQUIRE(vl::helper::install_vm_filter("web2", {{"web2-0", kNeighbourMac, {}}}).ok());
    a = std::move(vl::helper::create_tap("web1-0", 0, 0).value());
    b = std::move(vl::helper::create_tap("web2-0", 0, 0).value());
    attach_as_helper("web1-0", kVmMac);
    attach_as_helper("web2-0", kNeighbourMac);
    peer = peer_ns_.packet_socket_inside("vpeer1");
  }

  /// Sends `frame` from the peer host.
  void send_from_peer(const Bytes& frame) {
    REQUIRE(::write(peer.get(), frame.data(), frame.size()) == static_cast<ssize_t>(frame.size()));
  }

 private:
  vl::test::ScopedNetns ns_;  // first: everything below lives in it
  PeerNamespace peer_ns_;

 public:
  vl::UniqueFd a, b;  ///< the VMs' tap fds: what their emulators would hold
  vl::UniqueFd peer;  ///< a packet socket on the peer host's interface
};

// --- Frames of the address rules: IPv4 with ports, ARP probes, IPv6, NDP, RA, DHCP ---------

using Ip4 = std::array<uint8_t, 4>;
using Ip6 = std::array<uint8_t, 16>;

Ip4 ip4(const char* text) {
  Ip4 a{};
  REQUIRE(::inet_pton(AF_INET, text, a.data()) == 1);
  return a;
}
Ip6 ip6(const char* text) {
  Ip6 a{};
  REQUIRE(::inet_pton(AF_INET6, text, a.data()) == 1);
  return a;
}
// The Ethernet address of an IPv6 multicast group (RFC 2464 7).
Dest group_mac(const Ip6& group) { return {0x33, 0x33, group[12], group[13], group[14], group[15]}; }

void append(Bytes& to, const auto& bytes) { to.insert(to.end(), std::begin(bytes), std::end(bytes)); }
void append16(Bytes& to, uint16_t v) { to.push_back(v >> 8), to.push_back(v & 0xff); }

// The one's-complement sum of `data` (RFC 1071), starting from `sum`.
uint16_t checksum(const Bytes& data, uint32_t sum = 0) {
  for (size_t i = 0; i < data.size(); i += 2) sum += (data[i] << 8) | (i + 1 < data.size() ? data[i + 1] : 0);
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return static_cast<uint16_t>(~sum);
}

Bytes udp_datagram(uint16_t sport, uint16_t dport, const std::string& marker) {
  Bytes u;
  append16(u, sport), append16(u, dport), append16(u, static_cast<uint16_t>(8 + marker.size())), append16(u, 0);
  append(u, marker);
  return u;
}

// An IPv4/UDP frame from src:sport to dst:dport (checksummed header; UDP checksum 0, which
// IPv4 allows); the marker is the UDP payload.
Bytes udp4(const Ip4& src, const Ip4& dst, uint16_t sport, uint16_t dport, const std::string& marker) {
  Bytes f = eth_header(kVmMac, ETH_P_IP);
  Bytes udp = udp_datagram(sport, dport, marker);
  Bytes ip = {0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, IPPROTO_UDP, 0, 0};
  ip[2] = static_cast<uint8_t>((20 + udp.size()) >> 8), ip[3] = static_cast<uint8_t>((20 + udp.size()) & 0xff);
  append(ip, src), append(ip, dst);
  uint16_t sum = checksum(ip);
  ip[10] = sum >> 8, ip[11] = sum & 0xff;
  append(f, ip), append(f, udp);
  while (f.size() < 60) f.push_back(0);
  return f;
}

// An ARP request "who has TARGET, tell SENDER" from the VM's MAC; the marker follows the ARP
// body (in what would otherwise be padding) so that receivers can tell frames apart.
Bytes arp4(const Ip4& sender, const Ip4& target, const std::string& marker) {
  Bytes f = eth_header(kVmMac, ETH_P_ARP);
  append(f, std::array<uint8_t, 8>{0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01});
  append(f, kVmMac.bytes), append(f, sender);
  append(f, std::array<uint8_t, 6>{}), append(f, target);
  append(f, marker);
  while (f.size() < 60) f.push_back(0);
  return f;
}

// An IPv6 packet carrying `upper` (an ICMPv6 message or a UDP datagram, checksummed here),
// behind a hop-by-hop header with the router alert option if `router_alert` (as MLD sends).
Bytes ipv6(const Ip6& src, const Ip6& dst, uint8_t next_header, Bytes upper, const Dest& dst_mac,
           bool router_alert = false) {
  Bytes pseudo;
  append(pseudo, src), append(pseudo, dst);
  append16(pseudo, 0), append16(pseudo, static_cast<uint16_t>(upper.size()));
  append16(pseudo, 0), append16(pseudo, next_header);
  size_t at = next_header == IPPROTO_UDP ? 6 : 2;  // where the checksum sits
  Bytes all = pseudo;
  append(all, upper);
  uint16_t sum = checksum(all);
  upper[at] = sum >> 8, upper[at + 1] = sum & 0xff;
  Bytes extension;
  if (router_alert) extension = {next_header, 0, 5, 2, 0, 0, 1, 0};  // RFC 2711, then PadN
  Bytes f = eth_header(kVmMac, ETH_P_IPV6, dst_mac);
  append(f, std::array<uint8_t, 4>{0x60, 0, 0, 0});
  append16(f, static_cast<uint16_t>(extension.size() + upper.size()));
  f.push_back(router_alert ? 0 : next_header), f.push_back(router_alert ? 1 : 255);
  append(f, src), append(f, dst), append(f, extension), append(f, upper);
  return f;
}

constexpr uint8_t kMldv2Report = 143;
constexpr uint8_t kRouterSolicit = 133, kRouterAdvert = 134, kNeighbourSolicit = 135, kNeighbourAdvert = 136,
                  kRedirect = 137;

Bytes udp6(const Ip6& src, const Ip6& dst, uint16_t sport, uint16_t dport, const std::string& marker,
           const Dest& dst_mac = kBroadcast) {
  return ipv6(src, dst, IPPROTO_UDP, udp_datagram(sport, dport, marker), dst_mac);
}

// An ICMPv6 message: type, code 0, checksum, then `body`; the marker is appended (receivers
// would read it as an unknown option; only the bridge and packet sockets see these frames).
Bytes icmp6(const Ip6& src, const Ip6& dst, uint8_t type, const Bytes& body, const std::string& marker,
            const Dest& dst_mac) {
  Bytes m = {type, 0, 0, 0};
  append(m, body), append(m, marker);
  return ipv6(src, dst, IPPROTO_ICMPV6, std::move(m), dst_mac, type == kMldv2Report);
}

// Neighbour solicitation or advertisement body: 4 bytes of flags, then the target (RFC 4861).
Bytes nd_body(const Ip6& target, uint8_t flags = 0) {
  Bytes b = {flags, 0, 0, 0};
  append(b, target);
  return b;
}

// An MLDv2 report body (RFC 3810 5.2): one record, "change to exclude {}" (a join) of `group`.
Bytes mldv2_join(const Ip6& group) {
  Bytes b = {0, 0, 0, 1, 4, 0, 0, 0};
  append(b, group);
  return b;
}


using vl::test::send_into;
using vl::test::tap_of_emulator;

// A peer host on br-dmz: a veth whose other end is in its own namespace, with a packet socket.
struct Peer {
  PeerNamespace ns;
  vl::UniqueFd socket;
  Peer() {
    vl::test::run_ok("ip link add vpeer0 type veth peer name vpeer1 && ip link set vpeer0 master br-dmz up");
    vl::test::run_ok("ip link set vpeer1 netns " + ns.name() + " && ip -n " + ns.name() + " link set vpeer1 up");
    socket = ns.packet_socket_inside("vpeer1");
  }
};

// Defines VM `name` with `ips` in libvirt's full form (<ip address=.. family=.. prefix=../>).
void define_with_ips(vl::test::HelperEnv& env, const std::string& name, const std::string& mac,
                     const std::vector<std::pair<std::string, std::string>>& ips) {
  std::string xml = env.define({.name = name, .mac = mac});
  std::string elements;
  for (const auto& [address, family] : ips)
    elements += "<ip address='" + address + "' family='" + family + "' prefix='" + (family == "ipv4" ? "24" : "64") + "'/>";
  xml.insert(xml.find("</interface>"), elements);
  std::string path = env.root() + "/domains/" + name + ".xml";
  std::ofstream(path, std::ios::trunc) << xml;  // keeps the owner and mode define() gave it
}

}  // namespace

TEST_SUITE("root/anti_spoofing") {
  TEST_CASE("forged source MACs, ARP senders and IPs arrive nowhere and are counted") {
    vl::test::ScopedNetns ns;
    PeerNamespace peer;
    vl::test::run_ok("ip link add br-dmz type bridge && ip addr add 10.99.0.1/24 dev br-dmz && ip link set br-dmz up");
    vl::test::run_ok("ip link add vpeer0 type veth peer name vpeer1 && ip link set vpeer0 master br-dmz up");
    vl::test::run_ok("ip link set vpeer1 netns " + peer.name() + " && ip -n " + peer.name() + " link set vpeer1 up");

    // The helper's own steps, in the helper's order: rules, tap (down), attach, up.
    REQUIRE(vl::helper::install_vm_filter("web1", {{"web1-0", kVmMac, {vl::IpAddress::parse("10.99.0.2").value()}}}).ok());
    auto tap = vl::helper::create_tap("web1-0", 0, 0);
    REQUIRE(tap.ok());
    attach_as_helper("web1-0", kVmMac);

    vl::UniqueFd at_peer = peer.packet_socket_inside("vpeer1");
    vl::UniqueFd at_bridge = packet_socket("br-dmz");
    const uint32_t good_ip = 0x0a630002, forged_ip = 0x0a630063;

    // Forged frames first: if any passed, it would arrive before the good one behind it.
    send_as_vm(tap->get(), marker_frame(kForgedMac, "FORGED-MAC"));
    send_as_vm(tap->get(), arp_request(kVmMac, kForgedMac, good_ip));
    send_as_vm(tap->get(), arp_request(kVmMac, kVmMac, forged_ip));
    send_as_vm(tap->get(), udp_frame(kVmMac, forged_ip, "FORGED-IP"));
    send_as_vm(tap->get(), marker_frame(kVmMac, "GOOD-MAC"));
    send_as_vm(tap->get(), arp_request(kVmMac, kVmMac, good_ip));
    send_as_vm(tap->get(), udp_frame(kVmMac, good_ip, "GOOD-IP"));

    for (int sock : {at_peer.get(), at_bridge.get()}) {
      std::string seen = receive_until(sock, "GOOD-IP");
      CHECK(seen.find("GOOD-MAC") != std::string::npos);
      CHECK(seen.find("GOOD-IP") != std::string::npos);
      CHECK(seen.find("FORGED") == std::string::npos);
      // ARP: only the honest request, whose sender MAC and IP are the VM's.
      std::string forged_mac(reinterpret_cast<const char*>(kForgedMac.bytes.data()), 6);
      CHECK(seen.find(forged_mac) == std::string::npos);
    }
    // One forged frame of each kind, each counted once although the bridge both forwards a
    // broadcast and delivers it to itself.
    CHECK(counter("mac") == 1);
    CHECK(counter("arp-mac") == 1);
    CHECK(counter("arp-ip") == 1);
    CHECK(counter("ip") == 1);
    CHECK(counter("vlan") == 0);

    // An 802.1Q-tagged frame with the right MAC is dropped too.
    send_as_vm(tap->get(), vlan_frame(kVmMac, "QTAG"));
    send_as_vm(tap->get(), marker_frame(kVmMac, "AFTER-VLAN"));
    CHECK(receive_until(at_peer.get(), "AFTER-VLAN").find("QTAG") == std::string::npos);
    CHECK(counter("vlan") == 1);

    tap->reset();
    REQUIRE(vl::helper::remove_vm_filter("web1").ok());
    CHECK_FALSE(vl::helper::vm_filter_exists("web1").value());
  }

  TEST_CASE("a VM sending with its neighbour's MAC neither moves the neighbour's FDB entry nor gets its traffic") {
    TwoVmZone zone;
    // B speaks first, so that even a learning bridge knows where B is.
    send_as_vm(zone.b.get(), marker_frame(kNeighbourMac, "B-HELLO"));
    REQUIRE(receive_until(zone.peer.get(), "B-HELLO").find("B-HELLO") != std::string::npos);
    CHECK(fdb_ports(kNeighbourMac) == std::vector<std::string>{"web2-0"});

    // A forges B's MAC: unicast to nobody (flooded), broadcast, ARP.
    for (int i = 0; i < 10; ++i) send_as_vm(zone.a.get(), marker_frame(kNeighbourMac, "FORGED-B", kNobody));
    send_as_vm(zone.a.get(), marker_frame(kNeighbourMac, "FORGED-B"));
    send_as_vm(zone.a.get(), arp_request(kNeighbourMac, kNeighbourMac, 0x0a630003));
    CHECK(fdb_ports(kNeighbourMac) == std::vector<std::string>{"web2-0"});
    // Link-local destinations take other paths through the bridge: 802.1X PAE goes to the
    // input hook without prerouting, LLDP passes no hook at all, and both are learned from.
    send_as_vm(zone.a.get(), marker_frame(kNeighbourMac, "FORGED-B-PAE", kLinkLocalPae));
    send_as_vm(zone.a.get(), marker_frame(kNeighbourMac, "FORGED-B-LLDP", kLinkLocalLldp));
    CHECK(fdb_ports(kNeighbourMac) == std::vector<std::string>{"web2-0"});
    CHECK(learned_on("web1-0") == 0);

    // Traffic for B goes to B, and to B only; a broadcast behind it marks the end.
    zone.send_from_peer(marker_frame(kPeerMac, "TO-B", kNeighbourMac.bytes));
    zone.send_from_peer(marker_frame(kPeerMac, "END"));
    CHECK(receive_until(zone.b.get(), "END").find("TO-B") != std::string::npos);
    CHECK(receive_until(zone.a.get(), "END").find("TO-B") == std::string::npos);
    CHECK(receive_until(zone.peer.get(), "END").find("FORGED") == std::string::npos);
  }

  TEST_CASE("traffic to a VM's declared MAC reaches that VM only, even after another port sent from that MAC") {
    TwoVmZone zone;
    // A has not sent anything yet; the peer host (a port that learns) claims A's MAC.
    zone.send_from_peer(marker_frame(kVmMac, "PEER-AS-A"));
    CHECK(receive_until(zone.b.get(), "PEER-AS-A").find("PEER-AS-A") != std::string::npos);
    CHECK(fdb_ports(kVmMac) == std::vector<std::string>{"web1-0"});
    // B writes to A: A gets it, B's own tap and the peer do not.
    send_as_vm(zone.b.get(), marker_frame(kNeighbourMac, "TO-A", kVmMac.bytes));
    send_as_vm(zone.b.get(), marker_frame(kNeighbourMac, "END"));
    CHECK(receive_until(zone.a.get(), "END").find("TO-A") != std::string::npos);
    CHECK(receive_until(zone.peer.get(), "END").find("TO-A") == std::string::npos);
    // The entry belongs to the port: it goes when the tap does.
    zone.a.reset();
    CHECK(fdb_ports(kVmMac).empty());
  }

  TEST_CASE("1,000 frames with random source MACs leave no FDB entry, and count 1,000 drops") {
    TwoVmZone zone;
    std::mt19937 random(8);
    for (int i = 0; i < 1000; ++i) {
      vl::MacAddress mac;
      for (uint8_t& byte : mac.bytes) byte = static_cast<uint8_t>(random());
      mac.bytes[0] = 0x02;  // unicast, locally administered, never one of the test's 52:54:00:…
      send_as_vm(zone.a.get(), marker_frame(mac, "RANDOM"));
    }
    send_as_vm(zone.a.get(), marker_frame(kVmMac, "GOOD-AFTER"));
    std::string seen = receive_until(zone.peer.get(), "GOOD-AFTER");
    CHECK(seen.find("GOOD-AFTER") != std::string::npos);
    CHECK(seen.find("RANDOM") == std::string::npos);
    CHECK(learned_on("web1-0") == 0);
    CHECK(counter("mac") == 1000);
  }

  TEST_CASE("with the bridge promiscuous, each forged frame is counted once whatever its destination") {
    TwoVmZone zone;
    vl::test::run_ok("ip link set br-dmz promisc on");
    const uint32_t good_ip = 0x0a630002, forged_ip = 0x0a630063;
    constexpr int kEach = 7;
    for (int i = 0; i < kEach; ++i) {
      send_as_vm(zone.a.get(), marker_frame(kForgedMac, "FORGED-MAC"));                 // broadcast
      send_as_vm(zone.a.get(), marker_frame(kForgedMac, "FORGED-MAC", kNobody));        // flooded
      send_as_vm(zone.a.get(), marker_frame(kForgedMac, "FORGED-MAC", kNeighbourMac.bytes));
      send_as_vm(zone.a.get(), marker_frame(kForgedMac, "FORGED-MAC", kLinkLocalPae));  // input only
      send_as_vm(zone.a.get(), arp_request(kVmMac, kForgedMac, good_ip));
      send_as_vm(zone.a.get(), arp_request(kVmMac, kVmMac, forged_ip));
      send_as_vm(zone.a.get(), udp_frame(kVmMac, forged_ip, "FORGED-IP"));
      send_as_vm(zone.a.get(), vlan_frame(kVmMac, "FORGED-VLAN"));
    }
    send_as_vm(zone.a.get(), udp_frame(kVmMac, good_ip, "GOOD-IP"));
    for (int fd : {zone.peer.get(), zone.b.get()}) {
      std::string seen = receive_until(fd, "GOOD-IP");
      CHECK(seen.find("GOOD-IP") != std::string::npos);
      CHECK(seen.find("FORGED") == std::string::npos);
    }
    CHECK(counter("mac") == 4 * kEach);
    CHECK(counter("arp-mac") == kEach);
    CHECK(counter("arp-ip") == kEach);
    CHECK(counter("ip") == kEach);
    CHECK(counter("vlan") == kEach);
    CHECK(counter("mac", "web2") == 0);
  }

  TEST_CASE("a table left by an earlier build loses its forward hook at the next install") {
    vl::test::ScopedNetns ns;
    vl::test::run_ok("nft add table bridge vmlaunch && nft add map bridge vmlaunch taps '{ type ifname : verdict; }' && "
                     "nft add chain bridge vmlaunch forward '{ type filter hook forward priority -200; policy accept; }' && "
                     "nft add rule bridge vmlaunch forward iifname vmap @taps");
    REQUIRE(vl::helper::install_vm_filter("web1", {{"web1-0", kVmMac, {}}}).ok());
    std::string listing = vl::test::command_output("nft list table bridge vmlaunch");
    CHECK(listing.find("hook forward") == std::string::npos);
    CHECK(listing.find("hook prerouting") != std::string::npos);
    CHECK(listing.find("hook input") != std::string::npos);
  }

  TEST_CASE("without the filter the same forged frames do pass (the test can see spoofing)") {
    vl::test::ScopedNetns ns;
    vl::test::run_ok("ip link add br-dmz type bridge && ip link set br-dmz up");
    vl::test::run_ok("ip link add vpeer0 type veth peer name vpeer1 && ip link set vpeer0 master br-dmz up && ip link set vpeer1 up");
    auto tap = vl::helper::create_tap("web1-0", 0, 0);
    REQUIRE(tap.ok());
    auto nl = vl::helper::Netlink::open();
    REQUIRE(nl->enslave(nl->find("br-dmz").value()->ifindex, nl->find("web1-0").value()->ifindex, "attach").ok());
    REQUIRE(nl->set_up("web1-0", 0).ok());
    vl::UniqueFd at_peer = packet_socket("vpeer1");
    send_as_vm(tap->get(), marker_frame(kForgedMac, "FORGED-MAC"));
    CHECK(receive_until(at_peer.get(), "FORGED-MAC").find("FORGED-MAC") != std::string::npos);
  }

  TEST_CASE("launched with <ip> addresses: forged IPv4, ARP, IPv6, NDP, RA and DHCP replies are dropped, counted, delivered nowhere") {
    vl::test::HelperEnv env;
    Peer peer;
    define_with_ips(env, "web1", "52:54:00:00:00:01", {{"10.99.0.2", "ipv4"}, {"2001:db8:99::2", "ipv6"}});
    // Through the planner (libvirt converts the XML) and the helper's real launch.
    auto vm = env.launch("web1");
    REQUIRE_MESSAGE(vm.running(), vm.log);
    vl::UniqueFd tap = tap_of_emulator(vm.pid);
    const Ip4 own4 = ip4("10.99.0.2"), other4 = ip4("10.99.0.3"), any4 = ip4("0.0.0.0"), bcast4 = ip4("255.255.255.255");
    const Ip6 own6 = ip6("2001:db8:99::2"), other6 = ip6("2001:db8:99::3"), router6 = ip6("2001:db8:99::1");
    const Ip6 ll = ip6("fe80::5054:ff:fe00:1");  // EUI-64 of 52:54:00:00:00:01
    const Ip6 other_ll = ip6("fe80::1"), unspec = ip6("::"), all_nodes = ip6("ff02::1"), all_routers = ip6("ff02::2");
    const Ip6 dhcp6_servers = ip6("ff02::1:2");
    const Ip6 own_snm = ip6("ff02::1:ff00:2"), other_snm = ip6("ff02::1:ff00:3");  // solicited-node groups
    Bytes ra_body(12, 0);
    ra_body[0] = 64, ra_body[2] = 0x07, ra_body[3] = 0x08;  // hop limit 64, router lifetime 1800 s
    Bytes redirect_body = nd_body(router6);
    append(redirect_body, other6);

    // Forged first: had any passed, it would arrive before the honest frames behind it.
    const std::pair<Bytes, const char*> forged[] = {
        {udp4(other4, bcast4, 12345, 12345, "FORGED-IP4-SOURCE"), "ip"},
        {udp4(any4, bcast4, 12345, 67, "FORGED-IP4-UNSPEC-NOT-DHCP"), "ip"},
        {arp4(other4, ip4("10.99.0.1"), "FORGED-ARP-SENDER"), "arp-ip"},
        {arp4(any4, other4, "FORGED-ARP-PROBE-OTHER"), "arp-probe"},
        {udp6(other6, all_nodes, 12345, 12345, "FORGED-IP6-SOURCE"), "ip6"},
        {udp6(other_ll, all_nodes, 12345, 12345, "FORGED-IP6-OTHER-LINK-LOCAL"), "ip6"},
        {icmp6(unspec, other_snm, kNeighbourSolicit, nd_body(other6), "FORGED-DAD-OTHER", group_mac(other_snm)), "ip6"},
        {icmp6(ll, all_nodes, kNeighbourAdvert, nd_body(other6, 0x20), "FORGED-NA-OTHER", group_mac(all_nodes)), "nd-target"},
        {icmp6(ll, all_nodes, kRouterAdvert, ra_body, "FORGED-RA", group_mac(all_nodes)), "ra"},
        {icmp6(ll, all_nodes, kRedirect, redirect_body, "FORGED-REDIRECT", group_mac(all_nodes)), "redirect"},
        {udp4(own4, bcast4, 67, 68, "FORGED-DHCP-OFFER"), "dhcp-server"},
        {udp6(ll, all_nodes, 547, 546, "FORGED-DHCP6-REPLY", group_mac(all_nodes)), "dhcp6-server"},
    };
    std::map<std::string, uint64_t> expected;
    for (const auto& [frame, what] : forged) {
      send_into(tap.get(), frame);
      ++expected[what];
    }
    const Bytes honest[] = {
        udp4(own4, bcast4, 12345, 12345, "OK-IP4"),
        arp4(own4, ip4("10.99.0.1"), "OK-ARP-REQUEST"),
        arp4(any4, own4, "OK-ARP-PROBE"),
        udp4(any4, bcast4, 68, 67, "OK-DHCP-DISCOVER"),
        udp6(own6, all_nodes, 12345, 12345, "OK-IP6-GLOBAL", group_mac(all_nodes)),
        udp6(ll, all_nodes, 12345, 12345, "OK-IP6-LINK-LOCAL", group_mac(all_nodes)),
        icmp6(unspec, own_snm, kNeighbourSolicit, nd_body(own6), "OK-DAD", group_mac(own_snm)),
        // An MLDv2 report joining the solicited-node group, as Linux sends it before DAD.
        icmp6(unspec, ip6("ff02::16"), kMldv2Report, mldv2_join(own_snm), "OK-MLD-UNSPEC", group_mac(ip6("ff02::16"))),
        icmp6(ll, ip6("ff02::1:ff00:1"), kNeighbourSolicit, nd_body(router6), "OK-NS", group_mac(ip6("ff02::1:ff00:1"))),
        icmp6(own6, all_nodes, kNeighbourAdvert, nd_body(own6, 0x20), "OK-NA-GLOBAL", group_mac(all_nodes)),
        icmp6(ll, all_nodes, kNeighbourAdvert, nd_body(ll, 0x20), "OK-NA-LINK-LOCAL", group_mac(all_nodes)),
        icmp6(ll, all_routers, kRouterSolicit, Bytes(4, 0), "OK-RS", group_mac(all_routers)),
        udp6(ll, dhcp6_servers, 546, 547, "OK-DHCP6-SOLICIT", group_mac(dhcp6_servers)),
        udp4(own4, bcast4, 12345, 12345, "OK-END"),
    };
    for (const Bytes& frame : honest) send_into(tap.get(), frame);

    std::string seen = receive_until(peer.socket.get(), "OK-END");
    for (const char* ok : {"OK-IP4", "OK-ARP-REQUEST", "OK-ARP-PROBE", "OK-DHCP-DISCOVER", "OK-IP6-GLOBAL", "OK-IP6-LINK-LOCAL", "OK-DAD", "OK-MLD-UNSPEC",
                           "OK-NS", "OK-NA-GLOBAL", "OK-NA-LINK-LOCAL", "OK-RS", "OK-DHCP6-SOLICIT", "OK-END"})
      CHECK_MESSAGE(seen.find(ok) != std::string::npos, ok);
    CHECK(seen.find("FORGED") == std::string::npos);
    // Each forged frame counted once, by the rule that says what was wrong with it.
    for (const auto& [what, n] : expected) {
      CAPTURE(what);
      CHECK(counter(what) == n);
    }
    CHECK(counter("mac") == 0);
    tap.reset();  // cleanup waits for every holder of the tap
    env.kill_vm(vm.pid);
    auto cleaned = env.helper({"cleanup", "web1"});
    CHECK_MESSAGE(WIFEXITED(cleaned.status), cleaned.log);
    CHECK_FALSE(vl::helper::vm_filter_exists("web1").value());
  }

  TEST_CASE("launched without <ip>: sources are not filtered, but no VM is a router or a DHCP server") {
    vl::test::HelperEnv env;
    Peer peer;
    env.define({.name = "web1", .mac = "52:54:00:00:00:01"});
    auto vm = env.launch("web1");
    REQUIRE_MESSAGE(vm.running(), vm.log);
    vl::UniqueFd tap = tap_of_emulator(vm.pid);
    const Ip6 ll = ip6("fe80::5054:ff:fe00:1"), all_nodes = ip6("ff02::1");
    Bytes ra_body(12, 0);
    ra_body[0] = 64, ra_body[2] = 0x07, ra_body[3] = 0x08;
    Bytes redirect_body = nd_body(ip6("2001:db8:99::1"));
    append(redirect_body, ip6("2001:db8:99::3"));
    send_into(tap.get(), icmp6(ll, all_nodes, kRouterAdvert, ra_body, "FORGED-RA", group_mac(all_nodes)));
    send_into(tap.get(), icmp6(ll, all_nodes, kRedirect, redirect_body, "FORGED-REDIRECT", group_mac(all_nodes)));
    send_into(tap.get(), udp4(ip4("10.99.0.2"), ip4("255.255.255.255"), 67, 68, "FORGED-DHCP-OFFER"));
    send_into(tap.get(), udp6(ll, all_nodes, 547, 546, "FORGED-DHCP6-REPLY", group_mac(all_nodes)));
    // Any source address passes (the MAC is right): no addresses are declared.
    send_into(tap.get(), udp4(ip4("10.99.0.77"), ip4("255.255.255.255"), 12345, 12345, "OK-ANY-IP4"));
    send_into(tap.get(), udp6(ip6("2001:db8:99::77"), all_nodes, 12345, 12345, "OK-ANY-IP6", group_mac(all_nodes)));
    send_into(tap.get(), icmp6(ll, all_nodes, kNeighbourAdvert, nd_body(ip6("2001:db8:99::77"), 0x20), "OK-ANY-NA",
                               group_mac(all_nodes)));
    send_into(tap.get(), udp4(ip4("10.99.0.2"), ip4("255.255.255.255"), 12345, 12345, "OK-END"));
    std::string seen = receive_until(peer.socket.get(), "OK-END");
    for (const char* ok : {"OK-ANY-IP4", "OK-ANY-IP6", "OK-ANY-NA", "OK-END"}) CHECK_MESSAGE(seen.find(ok) != std::string::npos, ok);
    CHECK(seen.find("FORGED") == std::string::npos);
    for (const char* what : {"ra", "redirect", "dhcp-server", "dhcp6-server"}) {
      CAPTURE(what);
      CHECK(counter(what) == 1);
    }
    auto counters = vl::helper::read_vm_counters("web1");
    REQUIRE(counters.ok());
    for (const auto& c : *counters)
      CHECK_MESSAGE((c.what != "ip" && c.what != "ip6" && c.what != "arp-ip"), c.what);
    tap.reset();
    env.kill_vm(vm.pid);
    (void)env.helper({"cleanup", "web1"});
  }

  TEST_CASE("only IPv6 declared: the VM sends no IPv4 or ARP at all, and IPv6 from its addresses") {
    vl::test::ScopedNetns ns;
    vl::test::run_ok("ip link add br-dmz type bridge && ip link set br-dmz up");
    Peer peer;
    REQUIRE(vl::helper::install_vm_filter("web1", {{"web1-0", kVmMac, {vl::IpAddress::parse("2001:db8:99::2").value()}}}).ok());
    auto tap = vl::helper::create_tap("web1-0", 0, 0);
    REQUIRE(tap.ok());
    attach_as_helper("web1-0", kVmMac);
    const Ip6 all_nodes = ip6("ff02::1");
    send_into(tap->get(), udp4(ip4("10.99.0.2"), ip4("255.255.255.255"), 12345, 12345, "FORGED-IP4"));
    send_into(tap->get(), udp4(ip4("0.0.0.0"), ip4("255.255.255.255"), 68, 67, "FORGED-DHCP-DISCOVER"));
    send_into(tap->get(), arp4(ip4("10.99.0.2"), ip4("10.99.0.1"), "FORGED-ARP"));
    send_into(tap->get(), udp6(ip6("fe80::5054:ff:fe00:1"), all_nodes, 1, 1, "OK-LINK-LOCAL", group_mac(all_nodes)));
    send_into(tap->get(), udp6(ip6("2001:db8:99::2"), all_nodes, 1, 1, "OK-END", group_mac(all_nodes)));
    std::string seen = receive_until(peer.socket.get(), "OK-END");
    CHECK(seen.find("OK-LINK-LOCAL") != std::string::npos);
    CHECK(seen.find("OK-END") != std::string::npos);
    CHECK(seen.find("FORGED") == std::string::npos);
    CHECK(counter("ip") == 2);
    CHECK(counter("arp-ip") == 1);
    tap->reset();
    REQUIRE(vl::helper::remove_vm_filter("web1").ok());
  }

  TEST_CASE("an IPv6 first fragment that hides its UDP or ICMPv6 header in a later fragment is dropped") {
    vl::test::ScopedNetns ns;
    vl::test::run_ok("ip link add br-dmz type bridge && ip link set br-dmz up");
    Peer peer;
    REQUIRE(vl::helper::install_vm_filter("web1", {{"web1-0", kVmMac, {}}}).ok());
    auto tap = vl::helper::create_tap("web1-0", 0, 0);
    REQUIRE(tap.ok());
    attach_as_helper("web1-0", kVmMac);
    const Ip6 ll = ip6("fe80::5054:ff:fe00:1"), all_nodes = ip6("ff02::1");
    // IPv6 header and a fragment header (offset 0, more fragments) before `fragment`.
    auto first_fragment = [&](uint8_t next_header, const Bytes& fragment) {
      Bytes f = eth_header(kVmMac, ETH_P_IPV6, group_mac(all_nodes));
      append(f, std::array<uint8_t, 4>{0x60, 0, 0, 0});
      append16(f, static_cast<uint16_t>(8 + fragment.size()));
      f.push_back(IPPROTO_FRAGMENT), f.push_back(255);
      append(f, ll), append(f, all_nodes);
      append(f, std::array<uint8_t, 8>{next_header, 0, 0, 1, 0, 0, 0, 7});
      append(f, fragment);
      return f;
    };
    // A DHCPv6 reply behind a 40-byte destination options header, cut after 32 bytes of it:
    // the UDP header (source port 547) would come in the second fragment.
    std::string hidden = "FORGED-FRAG-HIDES-UDP";
    Bytes options = {IPPROTO_UDP, 4, 1, 36};  // next header, length 4 (40 bytes), PadN of 36
    append(options, hidden);
    while (options.size() < 32) options.push_back(0);
    send_into(tap->get(), first_fragment(IPPROTO_DSTOPTS, options));
    // A fragmented datagram whose first fragment carries its UDP header passes.
    Bytes udp = udp_datagram(12345, 12345, "OK-FRAGMENT-1ST");
    while (udp.size() % 8) udp.push_back(0);
    send_into(tap->get(), first_fragment(IPPROTO_UDP, udp));
    send_into(tap->get(), udp6(ll, all_nodes, 1, 1, "OK-END", group_mac(all_nodes)));
    std::string seen = receive_until(peer.socket.get(), "OK-END");
    CHECK(seen.find("OK-FRAGMENT-1ST") != std::string::npos);
    CHECK(seen.find("FORGED") == std::string::npos);
    CHECK(counter("ip6-frag") == 1);
    tap->reset();
    REQUIRE(vl::helper::remove_vm_filter("web1").ok());
  }
}
