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

#include "helper/netlink.h"
#include "helper/nft_filter.h"
#include "helper/tap.h"
#include "tests/support/helper_env.h"

namespace {

using Bytes = std::vector<uint8_t>;
constexpr uint16_t kTestEtherType = 0x88b5;  // IEEE local experimental
const vl::MacAddress kVmMac = vl::MacAddress::parse("52:54:00:00:00:01").value();
const vl::MacAddress kForgedMac = vl::MacAddress::parse("52:54:00:66:66:66").value();
constexpr uint8_t kBroadcast[6] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

Bytes eth_header(const vl::MacAddress& src, uint16_t type) {
  Bytes f(kBroadcast, kBroadcast + 6);
  f.insert(f.end(), src.bytes.begin(), src.bytes.end());
  f.push_back(type >> 8);
  f.push_back(type & 0xff);
  return f;
}

Bytes marker_frame(const vl::MacAddress& src, const std::string& marker) {
  Bytes f = eth_header(src, kTestEtherType);
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

// Reads frames until one carries `until` (or 5 s pass); returns every payload seen as text.
std::string receive_until(int sock, const std::string& until) {
  std::string seen;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd p{sock, POLLIN, 0};
    if (::poll(&p, 1, 200) != 1) continue;
    char buf[2048];
    ssize_t n = ::recv(sock, buf, sizeof buf, 0);
    if (n <= 0) continue;
    seen.append(buf, static_cast<size_t>(n));
    seen += '\n';
    if (seen.find(until) != std::string::npos) break;
  }
  return seen;
}

uint64_t counter(const std::string& what) {
  auto counters = vl::helper::read_vm_counters("web1");
  REQUIRE(counters.ok());
  for (const auto& c : *counters)
    if (c.tap == "web1-0" && c.what == what) return c.packets;
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
    auto nl = vl::helper::Netlink::open();
    REQUIRE(nl.ok());
    auto bridge = nl->find("br-dmz").value();
    auto port = nl->find("web1-0").value();
    REQUIRE(nl->enslave(bridge->ifindex, port->ifindex, "attach").ok());
    REQUIRE(nl->set_up("web1-0", 0).ok());

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
    CHECK(counter("mac") >= 1);
    CHECK(counter("arp-mac") >= 1);
    CHECK(counter("arp-ip") >= 1);
    CHECK(counter("ip") >= 1);
    CHECK(counter("vlan") == 0);

    // An 802.1Q-tagged frame with the right MAC is dropped too.
    Bytes tagged = eth_header(kVmMac, 0x8100);
    const uint8_t tag[] = {0x00, 0x05, 0x88, 0xb5, 'Q', 'T', 'A', 'G'};
    tagged.insert(tagged.end(), tag, tag + sizeof tag);
    while (tagged.size() < 60) tagged.push_back(0);
    send_as_vm(tap->get(), tagged);
    send_as_vm(tap->get(), marker_frame(kVmMac, "AFTER-VLAN"));
    CHECK(receive_until(at_peer.get(), "AFTER-VLAN").find("QTAG") == std::string::npos);
    CHECK(counter("vlan") >= 1);  // a broadcast passes both the forward and the input hook

    tap->reset();
    REQUIRE(vl::helper::remove_vm_filter("web1").ok());
    CHECK_FALSE(vl::helper::vm_filter_exists("web1").value());
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
