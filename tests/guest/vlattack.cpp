// vlattack: crafts the frames a hostile guest sends, for the real-guest attack suite
// (tests/root/guest_attack_test.cpp). It runs inside the test's Linux guest, linked statically,
// and writes whole Ethernet frames through an AF_PACKET socket, so every header field is the
// attacker's choice: source MAC, ARP sender, 802.1Q tag, IPv4/IPv6 source, NDP and DHCP
// messages. It prints "VLG SENT KIND N" on success; the test compares N with what the host saw.
//
//   vlattack IFACE arp   ETH_SRC SENDER_MAC SENDER_IP TARGET_IP COUNT
//   vlattack IFACE vlan  ETH_SRC VID COUNT
//   vlattack IFACE flood COUNT                       random unicast source MACs
//   vlattack IFACE udp4  ETH_SRC SRC DST SPORT DPORT COUNT   (to the broadcast MAC)
//   vlattack IFACE udp6  ETH_SRC SRC DST SPORT DPORT COUNT   (to DST's multicast or all-nodes MAC)
//   vlattack IFACE na    ETH_SRC SRC TARGET COUNT    unsolicited override NA to all-nodes
//   vlattack IFACE ra    ETH_SRC SRC COUNT           RA with a /64 prefix to all-nodes
// ETH_SRC "-" is the interface's own MAC.
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>

namespace {

using Bytes = std::vector<uint8_t>;
using Mac = std::array<uint8_t, 6>;

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "vlattack: %s\n", what.c_str());
  std::exit(2);
}

int g_sock = -1;
int g_ifindex = 0;
Mac g_own{};

Mac parse_mac(const char* s) {
  if (std::strcmp(s, "-") == 0) return g_own;
  Mac m{};
  unsigned v[6];
  if (std::sscanf(s, "%x:%x:%x:%x:%x:%x", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5]) != 6) die(std::string("bad MAC ") + s);
  for (int i = 0; i < 6; ++i) m[i] = static_cast<uint8_t>(v[i]);
  return m;
}

in_addr parse_ip4(const char* s) {
  in_addr a{};
  if (::inet_pton(AF_INET, s, &a) != 1) die(std::string("bad IPv4 address ") + s);
  return a;
}

in6_addr parse_ip6(const char* s) {
  in6_addr a{};
  if (::inet_pton(AF_INET6, s, &a) != 1) die(std::string("bad IPv6 address ") + s);
  return a;
}

long parse_count(const char* s) {
  char* end = nullptr;
  long n = std::strtol(s, &end, 10);
  if (*end != '\0' || n < 0 || n > 1000000) die(std::string("bad number ") + s);
  return n;
}

void put16(Bytes& f, uint16_t v) {
  f.push_back(static_cast<uint8_t>(v >> 8));
  f.push_back(static_cast<uint8_t>(v & 0xff));
}
void put(Bytes& f, const void* p, size_t n) {
  const auto* b = static_cast<const uint8_t*>(p);
  f.insert(f.end(), b, b + n);
}

Bytes eth(const Mac& dst, const Mac& src, uint16_t type) {
  Bytes f;
  put(f, dst.data(), 6);
  put(f, src.data(), 6);
  put16(f, type);
  return f;
}

uint32_t sum16(const uint8_t* p, size_t n, uint32_t sum = 0) {
  for (size_t i = 0; i + 1 < n; i += 2) sum += (p[i] << 8) | p[i + 1];
  if (n & 1) sum += p[n - 1] << 8;
  return sum;
}
uint16_t fold(uint32_t sum) {
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return static_cast<uint16_t>(~sum);
}

// IPv4 header (no options) followed by `payload`, whose checksum field (if any) the caller set.
Bytes ip4(uint8_t proto, in_addr src, in_addr dst, const Bytes& payload) {
  Bytes h;
  uint16_t total = static_cast<uint16_t>(20 + payload.size());
  const uint8_t fixed[] = {0x45, 0, uint8_t(total >> 8), uint8_t(total & 0xff), 0, 0, 0x40, 0, 64, proto, 0, 0};
  put(h, fixed, sizeof fixed);
  put(h, &src, 4);
  put(h, &dst, 4);
  uint16_t c = fold(sum16(h.data(), h.size()));
  h[10] = static_cast<uint8_t>(c >> 8), h[11] = static_cast<uint8_t>(c & 0xff);
  put(h, payload.data(), payload.size());
  return h;
}

// The checksum of an upper-layer IPv6 payload (RFC 8200 8.1), stored at `offset` in it.
void ip6_checksum(Bytes& payload, size_t offset, const in6_addr& src, const in6_addr& dst, uint8_t next) {
  uint32_t sum = sum16(src.s6_addr, 16);
  sum = sum16(dst.s6_addr, 16, sum);
  sum += static_cast<uint32_t>(payload.size());
  sum += next;
  uint16_t c = fold(sum16(payload.data(), payload.size(), sum));
  payload[offset] = static_cast<uint8_t>(c >> 8), payload[offset + 1] = static_cast<uint8_t>(c & 0xff);
}

Bytes ip6(uint8_t next, uint8_t hops, const in6_addr& src, const in6_addr& dst, const Bytes& payload) {
  Bytes h = {0x60, 0, 0, 0};
  put16(h, static_cast<uint16_t>(payload.size()));
  h.push_back(next);
  h.push_back(hops);
  put(h, src.s6_addr, 16);
  put(h, dst.s6_addr, 16);
  put(h, payload.data(), payload.size());
  return h;
}

Mac multicast_mac(const in6_addr& dst) {
  return {0x33, 0x33, dst.s6_addr[12], dst.s6_addr[13], dst.s6_addr[14], dst.s6_addr[15]};
}

Bytes udp(uint16_t sport, uint16_t dport, const std::string& text) {
  Bytes u;
  put16(u, sport);
  put16(u, dport);
  put16(u, static_cast<uint16_t>(8 + text.size()));
  put16(u, 0);
  put(u, text.data(), text.size());
  return u;
}

void send_frame(Bytes f) {
  while (f.size() < 60) f.push_back(0);
  sockaddr_ll to{};
  to.sll_family = AF_PACKET;
  to.sll_ifindex = g_ifindex;
  to.sll_halen = 6;
  std::memcpy(to.sll_addr, f.data(), 6);
  // A full transmit queue says ENOBUFS; wait and resend rather than lose count.
  for (int attempt = 0;; ++attempt) {
    if (::sendto(g_sock, f.data(), f.size(), 0, reinterpret_cast<sockaddr*>(&to), sizeof to) ==
        static_cast<ssize_t>(f.size()))
      return;
    if (errno != ENOBUFS || attempt > 1000) die(std::string("sendto: ") + std::strerror(errno));
    ::usleep(1000);
  }
}

const Mac kBroadcast = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

void open_interface(const char* ifname) {
  g_sock = ::socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL));
  if (g_sock < 0) die(std::string("socket: ") + std::strerror(errno));
  g_ifindex = static_cast<int>(::if_nametoindex(ifname));
  if (g_ifindex == 0) die(std::string("no interface ") + ifname);
  ifreq ifr{};
  std::snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", ifname);
  if (::ioctl(g_sock, SIOCGIFHWADDR, &ifr) != 0) die("SIOCGIFHWADDR");
  std::memcpy(g_own.data(), ifr.ifr_hwaddr.sa_data, 6);
}

void need(int argc, int n, const char* usage) {
  if (argc != n) die(std::string("usage: vlattack IFACE ") + usage);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) die("usage: vlattack IFACE KIND ARGS... (see the source)");
  open_interface(argv[1]);
  std::string kind = argv[2];
  long count = 0;
  if (kind == "arp") {
    need(argc, 8, "arp ETH_SRC SENDER_MAC SENDER_IP TARGET_IP COUNT");
    Mac src = parse_mac(argv[3]), sender = parse_mac(argv[4]);
    in_addr sip = parse_ip4(argv[5]), tip = parse_ip4(argv[6]);
    count = parse_count(argv[7]);
    Bytes f = eth(kBroadcast, src, ETH_P_ARP);
    const uint8_t fixed[] = {0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01};
    put(f, fixed, sizeof fixed);
    put(f, sender.data(), 6);
    put(f, &sip, 4);
    f.insert(f.end(), 6, 0);
    put(f, &tip, 4);
    for (long i = 0; i < count; ++i) send_frame(f);
  } else if (kind == "vlan") {
    need(argc, 6, "vlan ETH_SRC VID COUNT");
    Mac src = parse_mac(argv[3]);
    long vid = parse_count(argv[4]);
    count = parse_count(argv[5]);
    Bytes f = eth(kBroadcast, src, ETH_P_8021Q);
    put16(f, static_cast<uint16_t>(vid & 0x0fff));
    put16(f, 0x88b5);  // IEEE local experimental
    const char text[] = "vlattack 802.1Q";
    put(f, text, sizeof text - 1);
    for (long i = 0; i < count; ++i) send_frame(f);
  } else if (kind == "flood") {
    need(argc, 4, "flood COUNT");
    count = parse_count(argv[3]);
    std::srand(static_cast<unsigned>(std::time(nullptr)) ^ static_cast<unsigned>(::getpid()));
    for (long i = 0; i < count; ++i) {
      Mac src;
      for (uint8_t& b : src) b = static_cast<uint8_t>(std::rand());
      src[0] = 0x02;  // unicast, locally administered: never a real NIC's
      Bytes f = eth(kBroadcast, src, 0x88b5);
      const char text[] = "vlattack flood";
      put(f, text, sizeof text - 1);
      send_frame(f);
    }
  } else if (kind == "udp4") {
    need(argc, 9, "udp4 ETH_SRC SRC DST SPORT DPORT COUNT");
    Mac src = parse_mac(argv[3]);
    in_addr s = parse_ip4(argv[4]), d = parse_ip4(argv[5]);
    auto sport = static_cast<uint16_t>(parse_count(argv[6])), dport = static_cast<uint16_t>(parse_count(argv[7]));
    count = parse_count(argv[8]);
    Bytes f = eth(kBroadcast, src, ETH_P_IP);
    Bytes packet = ip4(IPPROTO_UDP, s, d, udp(sport, dport, "vlattack udp4"));
    put(f, packet.data(), packet.size());
    for (long i = 0; i < count; ++i) send_frame(f);
  } else if (kind == "udp6") {
    need(argc, 9, "udp6 ETH_SRC SRC DST SPORT DPORT COUNT");
    Mac src = parse_mac(argv[3]);
    in6_addr s = parse_ip6(argv[4]), d = parse_ip6(argv[5]);
    auto sport = static_cast<uint16_t>(parse_count(argv[6])), dport = static_cast<uint16_t>(parse_count(argv[7]));
    count = parse_count(argv[8]);
    Bytes u = udp(sport, dport, "vlattack udp6");
    ip6_checksum(u, 6, s, d, IPPROTO_UDP);
    Mac dst = d.s6_addr[0] == 0xff ? multicast_mac(d) : kBroadcast;
    Bytes f = eth(dst, src, ETH_P_IPV6);
    Bytes packet = ip6(IPPROTO_UDP, 64, s, d, u);
    put(f, packet.data(), packet.size());
    for (long i = 0; i < count; ++i) send_frame(f);
  } else if (kind == "na" || kind == "ra") {
    bool na = kind == "na";
    need(argc, na ? 7 : 6, na ? "na ETH_SRC SRC TARGET COUNT" : "ra ETH_SRC SRC COUNT");
    Mac src = parse_mac(argv[3]);
    in6_addr s = parse_ip6(argv[4]);
    count = parse_count(argv[na ? 6 : 5]);
    in6_addr all_nodes = parse_ip6("ff02::1");
    Bytes icmp;
    if (na) {
      in6_addr target = parse_ip6(argv[5]);
      // Flags: override (0x20), not solicited: "TARGET is now at this MAC", unasked.
      icmp = {136, 0, 0, 0, 0x20, 0, 0, 0};
      put(icmp, target.s6_addr, 16);
      icmp.push_back(2);  // target link-layer address option
      icmp.push_back(1);
      put(icmp, src.data(), 6);
    } else {
      icmp = {134, 0, 0, 0, 64, 0, 0x07, 0x08 /* router lifetime 1800 s */, 0, 0, 0, 0, 0, 0, 0, 0};
      icmp.push_back(1);  // source link-layer address option
      icmp.push_back(1);
      put(icmp, src.data(), 6);
      // Prefix information: fd66::/64, on-link and autonomous, valid and preferred 1 h.
      const uint8_t prefix[] = {3, 4, 64, 0xc0, 0, 0, 0x0e, 0x10, 0, 0, 0x0e, 0x10, 0, 0, 0, 0,
                                0xfd, 0x66, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
      put(icmp, prefix, sizeof prefix);
    }
    ip6_checksum(icmp, 2, s, all_nodes, IPPROTO_ICMPV6);
    Bytes f = eth(multicast_mac(all_nodes), src, ETH_P_IPV6);
    Bytes packet = ip6(IPPROTO_ICMPV6, 255, s, all_nodes, icmp);
    put(f, packet.data(), packet.size());
    for (long i = 0; i < count; ++i) send_frame(f);
  } else {
    die("unknown kind " + kind);
  }
  std::printf("VLG SENT %s %ld\n", kind.c_str(), count);
  return 0;
}
