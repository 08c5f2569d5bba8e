// The nftables anti-spoofing filter against real frames: the test acts as the VM by holding
// the tap fd itself and writes Ethernet frames into it; a veth peer in another network
// namespace and the bridge itself are the receivers.
#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>

#include <chrono>
#include <cstring>
#include <random>
#include <sstream>

#include "helper/bridge_port.h"
#include "helper/netlink.h"
#include "helper/nft_filter.h"
#include "helper/tap.h"
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
    REQUIRE(vl::helper::install_vm_filter("web1", {{"web1-0", kVmMac, {"10.99.0.2"}}}).ok());
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

}  // namespace

TEST_SUITE("root/anti_spoofing") {
  TEST_CASE("forged source MACs, ARP senders and IPs arrive nowhere and are counted") {
    vl::test::ScopedNetns ns;
    PeerNamespace peer;
    vl::test::run_ok("ip link add br-dmz type bridge && ip addr add 10.99.0.1/24 dev br-dmz && ip link set br-dmz up");
    vl::test::run_ok("ip link add vpeer0 type veth peer name vpeer1 && ip link set vpeer0 master br-dmz up");
    vl::test::run_ok("ip link set vpeer1 netns " + peer.name() + " && ip -n " + peer.name() + " link set vpeer1 up");

    // The helper's own steps, in the helper's order: rules, tap (down), attach, up.
    REQUIRE(vl::helper::install_vm_filter("web1", {{"web1-0", kVmMac, {"10.99.0.2"}}}).ok());
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
}
