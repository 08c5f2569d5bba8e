// Zone isolation against a real guest: a Linux guest (tests/guest/init.sh, vlattack), launched
// by the real helper on a zone bridge next to a second Linux guest (the victim) and a peer host
// in its own network namespace, attacks the zone from inside: it changes its MAC, takes its
// neighbour's MAC and addresses, forges ARP senders, IPv4 and IPv6 sources, NDP and DHCP
// server messages, sends 802.1Q frames and floods random source MACs.
//
// The guest only acts; the host decides. A capture on the attacker's tap sees every frame the
// guest sent, and each is classified as forged or honest by the policy the domain declares.
// Then: no forged frame reaches the peer or the victim, the bridge's FDB learned nothing from
// them, frames for the victim never reach the attacker, the drop counters add up to exactly the
// forged frames, and honest traffic flows before and after.
#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <signal.h>

#include <algorithm>
#include <map>
#include <set>
#include <sstream>

#include "helper/nft_filter.h"
#include "tests/support/linux_guest.h"

namespace {

using vl::test::Frame;
using vl::test::FrameCapture;
using vl::test::LinuxGuest;
using Bytes = std::vector<uint8_t>;

const vl::MacAddress kAttackerMac = vl::MacAddress::parse("52:54:00:00:00:01").value();
const vl::MacAddress kVictimMac = vl::MacAddress::parse("52:54:00:00:00:02").value();
const vl::MacAddress kPeerMac = vl::MacAddress::parse("52:54:00:aa:aa:aa").value();
constexpr char kChangedMac[] = "52:54:00:66:66:66";  // the MAC init.sh changes to

/// What a NIC may send: its declared MAC, and with IP filtering its declared addresses (plus the
/// MAC's EUI-64 link-local address for IPv6).
struct Policy {
  vl::MacAddress mac;
  bool ips = false;
  std::vector<std::string> ipv4, ipv6;
  std::string link_local;
};

uint16_t be16(const Bytes& b, size_t at) { return static_cast<uint16_t>(b[at] << 8 | b[at + 1]); }

bool mac_at(const Bytes& b, size_t at, const vl::MacAddress& mac) {
  return b.size() >= at + 6 && std::equal(mac.bytes.begin(), mac.bytes.end(), b.begin() + static_cast<long>(at));
}

std::string ip4_at(const Bytes& b, size_t at) {
  char s[INET_ADDRSTRLEN] = "";
  if (b.size() >= at + 4) ::inet_ntop(AF_INET, b.data() + at, s, sizeof s);
  return s;
}

std::string ip6_at(const Bytes& b, size_t at) {
  char s[INET6_ADDRSTRLEN] = "";
  if (b.size() >= at + 16) ::inet_ntop(AF_INET6, b.data() + at, s, sizeof s);
  return s;
}

// The EUI-64 link-local address of a MAC, as the guest's kernel derives it.
std::string link_local(const vl::MacAddress& mac) {
  in6_addr a{};
  a.s6_addr[0] = 0xfe, a.s6_addr[1] = 0x80;
  const uint8_t eui[8] = {uint8_t(mac.bytes[0] ^ 0x02), mac.bytes[1], mac.bytes[2], 0xff, 0xfe, mac.bytes[3], mac.bytes[4], mac.bytes[5]};
  std::copy(eui, eui + 8, a.s6_addr + 8);
  char s[INET6_ADDRSTRLEN];
  ::inet_ntop(AF_INET6, &a, s, sizeof s);
  return s;
}

bool in(const std::vector<std::string>& set, const std::string& x) { return std::find(set.begin(), set.end(), x) != set.end(); }

// Why a frame a VM sent breaks `policy`, or "" if it does not: the rules the zone promises
// (docs/security.md), written independently of the nftables rules that enforce them.
std::string violation(const Bytes& f, const Policy& policy) {
  if (f.size() < 14) return "runt";
  uint16_t type = be16(f, 12);
  if (type == 0x8100 || type == 0x88a8) return "802.1Q";
  if (!mac_at(f, 6, policy.mac)) return "source MAC";
  if (type == 0x0806) {
    if (f.size() < 42) return "short ARP";
    if (!mac_at(f, 22, policy.mac)) return "ARP sender MAC";
    if (policy.ips && !in(policy.ipv4, ip4_at(f, 28))) return "ARP sender IP";
  }
  if (!policy.ips) return "";
  if (type == 0x0800 && f.size() >= 34) {
    size_t l4 = 14 + (f[14] & 0x0f) * 4u;
    bool udp = f[23] == 17 && f.size() >= l4 + 4;
    std::string src = ip4_at(f, 26);
    if (src == "0.0.0.0") return udp && be16(f, l4) == 68 && be16(f, l4 + 2) == 67 ? "" : "IPv4 source 0.0.0.0";
    if (!in(policy.ipv4, src)) return "IPv4 source";
    if (udp && be16(f, l4) == 67) return "DHCP server";
  }
  if (type == 0x86dd && f.size() >= 54) {
    uint8_t next = f[20];
    bool icmp = next == 58 && f.size() >= 58;
    std::string src = ip6_at(f, 22);
    if (src == "::") {
      // From :: a VM may only solicit for duplicate address detection and, before its
      // link-local address is usable, report the multicast groups it joins (RFC 3590): MLD
      // reports sit behind a hop-by-hop header with the router alert option.
      size_t l4 = 54;
      uint8_t proto = next;
      if (proto == 0 && f.size() >= 56) proto = f[54], l4 += (f[55] + 1u) * 8;
      bool icmp6 = proto == 58 && f.size() > l4;
      if (icmp6 && (f[l4] == 135 || f[l4] == 131 || f[l4] == 143)) return "";
      return "IPv6 source :: (next header " + std::to_string(next) + ")";
    }
    if (!in(policy.ipv6, src) && src != policy.link_local) return "IPv6 source";
    if (icmp && f[54] == 134) return "RA";
    if (icmp && f[54] == 136 && !in(policy.ipv6, ip6_at(f, 62)) && ip6_at(f, 62) != policy.link_local) return "NA target";
    if (next == 17 && f.size() >= 58 && be16(f, 54) == 547) return "DHCPv6 server";
  }
  return "";
}

uint64_t drop_count(const std::string& vm) {
  auto counters = vl::helper::read_vm_counters(vm);
  REQUIRE_MESSAGE(counters.ok(), counters.error().message());
  uint64_t n = 0;
  for (const auto& c : *counters) n += c.packets;
  return n;
}

std::string describe_counters(const std::string& vm) {
  auto counters = vl::helper::read_vm_counters(vm);
  if (!counters.ok()) return counters.error().message();
  std::string out;
  for (const auto& c : *counters) out += c.what + "=" + std::to_string(c.packets) + " ";
  return out;
}

// The FDB of br-dmz, one entry a line as `bridge fdb show` prints it, without the bridge's and
// the ports' own addresses (permanent) and the multicast entries.
std::vector<std::string> fdb_lines() {
  std::vector<std::string> lines;
  std::istringstream all(vl::test::bridge_fdb("br-dmz"));
  for (std::string line; std::getline(all, line);)
    if (line.find(" master br-dmz") != std::string::npos && !line.ends_with(" permanent")) lines.push_back(line);
  return lines;
}

// The sum of N over the guest's "VLG SENT KIND N" lines.
long reported_sent(const std::string& console) {
  long total = 0;
  std::istringstream lines(console);
  for (std::string line; std::getline(lines, line);)
    if (line.rfind("VLG SENT ", 0) == 0) total += std::atol(line.substr(line.rfind(' ') + 1).c_str());
  return total;
}

// The frames a VM sent (captured on its tap), sorted by the policy.
struct SentFrames {
  std::set<Bytes> forged;
  size_t forged_count = 0, honest_count = 0;
  std::map<std::string, size_t> kinds;  ///< forged frames by violation and by stolen identity
};

SentFrames classify(const FrameCapture& tap, const Policy& policy) {
  SentFrames sent;
  const vl::MacAddress changed = vl::MacAddress::parse(kChangedMac).value();
  for (const Frame& f : tap.frames()) {
    if (f.outgoing) continue;
    std::string why = violation(f.bytes, policy);
    if (why.empty()) {
      ++sent.honest_count;
      continue;
    }
    ++sent.forged_count, ++sent.kinds[why];
    sent.forged.insert(f.bytes);
    if (mac_at(f.bytes, 6, kVictimMac)) ++sent.kinds["as the victim's MAC"];
    if (mac_at(f.bytes, 6, changed)) ++sent.kinds["as the changed MAC"];
  }
  return sent;
}

// How many frames that `at` received (a veth) or delivered into its VM (a tap) are forged ones.
// A frame that `innocent` also sent, byte for byte, is not evidence either way.
size_t forged_delivered(const FrameCapture& at, bool tap, const std::set<Bytes>& forged, const std::set<Bytes>& innocent) {
  size_t n = 0;
  for (const Frame& f : at.frames())
    if (f.outgoing == tap && forged.contains(f.bytes) && !innocent.contains(f.bytes)) ++n;
  return n;
}

// How many frames for `mac` a tap delivered into its VM.
size_t delivered_for(const FrameCapture& tap, const vl::MacAddress& mac) {
  size_t n = 0;
  for (const Frame& f : tap.frames())
    if (f.outgoing && mac_at(f.bytes, 0, mac)) ++n;
  return n;
}

// FDB entries that forged frames could have made: on the attacker's port anything but its
// declared MAC, the victim's MAC anywhere but on the victim's port, the changed or a random MAC.
std::vector<std::string> fdb_entries_from_forged() {
  std::vector<std::string> wrong;
  for (const std::string& line : fdb_lines()) {
    bool on_attacker = line.find(" dev attacker-0 ") != std::string::npos;
    bool victim_mac = line.rfind(kVictimMac.str(), 0) == 0;
    if ((on_attacker && line.rfind(kAttackerMac.str() + " dev attacker-0 ", 0) != 0) ||
        (victim_mac && line.find(" dev victim-0 ") == std::string::npos) || line.rfind(kChangedMac, 0) == 0 ||
        line.rfind("02:", 0) == 0)
      wrong.push_back(line);
  }
  return wrong;
}

// Runs `ping` from the peer namespace to `ip` until stopped; counts the replies. Busybox's
// (busybox-static is a test dependency already; the host need not have iputils).
class PeerPing final {
 public:
  PeerPing(const std::string& netns, const std::string& ip, const std::string& log) : log_(log) {
    vl::UniqueFd out(::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    auto pid = vl::spawn({"/bin/sh", {"sh", "-c", "exec ip netns exec " + netns + " busybox ping -i 0.2 " + ip},
                          {"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, {{out.get(), 1}, {out.get(), 2}}});
    REQUIRE_MESSAGE(pid.ok(), pid.error().message());
    pid_ = *pid;
  }
  ~PeerPing() { stop(); }
  PeerPing(const PeerPing&) = delete;
  PeerPing& operator=(const PeerPing&) = delete;

  /// Stops it; returns the number of replies.
  int stop() {
    if (pid_ > 0) {
      ::kill(pid_, SIGINT);
      (void)vl::wait_for(pid_);
      pid_ = 0;
    }
    auto read = vl::sys::read_file(log_, 1 << 22);
    output_ = read.ok() ? *read : read.error().message();
    int replies = 0;
    for (size_t at = 0; (at = output_.find("bytes from", at)) != std::string::npos; ++at) ++replies;
    return replies;
  }
  const std::string& output() const { return output_; }

 private:
  std::string log_;
  std::string output_;
  pid_t pid_ = 0;
};

// The zone: br-dmz with the victim (a guest that only answers), the attacker, and the peer
// host on a veth, all addresses in 10.99.0.0/24 and fd00::/64.
class GuestZone final {
 public:
  explicit GuestZone(bool ip_policy) : ip_policy_(ip_policy) {
    std::string p = peer_.name();
    vl::test::run_ok("ip link add vpeer0 type veth peer name vpeer1 netns " + p);
    vl::test::run_ok("ip link set vpeer0 master br-dmz up");
    vl::test::run_ok("ip -n " + p + " link set vpeer1 address " + kPeerMac.str() + " up");
    vl::test::run_ok("ip -n " + p + " addr add 10.99.0.1/24 dev vpeer1");
    vl::test::run_ok("ip -n " + p + " addr add fd00::1/64 dev vpeer1 nodad");
    define("victim", kVictimMac, "10.99.0.3", "fd00::3", "neighbour");
    define("attacker", kAttackerMac, "10.99.0.2", "fd00::2", ip_policy ? "ip" : "mac");
    attacker_policy_ = {kAttackerMac, ip_policy, {"10.99.0.2"}, {"fd00::2"}, link_local(kAttackerMac)};
  }

  void run() {
    // The victim first, up and answering the peer before the attack starts.
    LinuxGuest victim(env_, "victim");
    victim.run();
    bool ready = vl::test::watch({&victim}, {}, std::chrono::seconds(300), [&] { return victim.printed("VLG READY"); });
    REQUIRE_MESSAGE(ready, "victim console:\n" << victim.console());

    LinuxGuest attacker(env_, "attacker");  // paused: its tap exists, nothing sent yet
    FrameCapture at_attacker("attacker-0"), at_victim("victim-0");
    auto at_peer = peer_.inside([] { return std::make_unique<FrameCapture>("vpeer1"); });
    PeerPing ping_victim(peer_.name(), "10.99.0.3", env_.root() + "/ping-victim.log");
    attacker.run();
    bool done = vl::test::watch({&victim, &attacker}, {&at_attacker, &at_victim, at_peer.get()}, std::chrono::seconds(600),
                                [&] { return attacker.printed("VLG DONE"); });
    int victim_replies = ping_victim.stop();
    at_attacker.drain(), at_victim.drain(), at_peer->drain();
    INFO("attacker console:\n" << attacker.console());
    REQUIRE(done);
    CHECK(attacker.console().find("VLG ERROR") == std::string::npos);
    for (auto* c : {&at_attacker, &at_victim, at_peer.get()}) REQUIRE_MESSAGE(c->dropped() == 0, c->name());

    // What the attacker sent, classified by the host.
    SentFrames sent = classify(at_attacker, attacker_policy_);
    std::set<Bytes> victim_sent;
    for (const Frame& f : at_victim.frames())
      if (!f.outgoing) victim_sent.insert(f.bytes);
    std::string kinds_seen;
    for (const auto& [why, n] : sent.kinds) kinds_seen += why + ": " + std::to_string(n) + "\n";
    INFO("forged frames by kind:\n" << kinds_seen);
    MESSAGE("attacker sent " << sent.forged_count << " forged and " << sent.honest_count
                             << " honest frames; counters: " << describe_counters("attacker"));

    // The guest really attacked: at least what vlattack says it sent, and every kind of attack.
    CHECK(sent.forged_count >= static_cast<size_t>(reported_sent(attacker.console())));
    CHECK(reported_sent(attacker.console()) > 0);
    for (const char* kind : ip_policy_ ? std::vector<const char*>{"IPv4 source", "ARP sender IP", "DHCP server",
                                                                   "IPv6 source", "NA target", "RA", "DHCPv6 server"}
                                       : std::vector<const char*>{"source MAC", "as the victim's MAC", "as the changed MAC",
                                                                   "ARP sender MAC", "802.1Q"})
      CHECK_MESSAGE(sent.kinds[kind] > 0, kind);

    // 0 forged frames delivered: none at the peer, none into the victim.
    CHECK(forged_delivered(*at_peer, false, sent.forged, victim_sent) == 0);
    CHECK(forged_delivered(at_victim, true, sent.forged, victim_sent) == 0);
    // The victim's traffic never reaches the attacker (and there was traffic to steal).
    CHECK(delivered_for(at_attacker, kVictimMac) == 0);
    CHECK(delivered_for(at_victim, kVictimMac) > 0);
    CHECK_MESSAGE(victim_replies > 0, ping_victim.output());

    // The FDB learned nothing from the attacker.
    std::vector<std::string> fdb_wrong = fdb_entries_from_forged();
    std::string shown;
    for (size_t i = 0; i < fdb_wrong.size() && i < 10; ++i) shown += fdb_wrong[i] + "\n";
    CHECK_MESSAGE(fdb_wrong.empty(), fdb_wrong.size() << " FDB entries from forged frames, among them:\n" << shown);

    // Every forged frame dropped and counted once; the victim's filter dropped nothing.
    CHECK(drop_count("attacker") == sent.forged_count);
    CHECK(drop_count("victim") == 0);

    // Honest traffic flows before and after the attack.
    CHECK(attacker.printed("VLG PING before ok"));
    CHECK(attacker.printed("VLG PING after ok"));
    if (ip_policy_) {
      CHECK(attacker.printed("VLG PING6 before ok"));
      CHECK(attacker.printed("VLG PING6 after ok"));
    }

    for (LinuxGuest* g : {&attacker, &victim}) {
      env_.kill_vm(g->pid());
      auto cleaned = env_.helper({"cleanup", g->name()});
      CHECK_MESSAGE(WEXITSTATUS(cleaned.status) == 0, cleaned.log);
    }
  }

 private:
  void define(const std::string& name, const vl::MacAddress& mac, const std::string& ip, const std::string& ip6,
              const std::string& scenario) {
    std::string cmdline = "console=ttyS0 quiet panic=-1 vlg.scenario=" + scenario + " vlg.dev_mac=" + mac.str() +
                          " vlg.ip=" + ip + " vlg.peer=10.99.0.1 vlg.nbr_mac=" + kVictimMac.str() + " vlg.nbr_ip=10.99.0.3";
    if (ip_policy_)
      cmdline += " vlg.ip6=" + ip6 + " vlg.ll6=" + link_local(mac) + " vlg.peer6=fd00::1 vlg.nbr_ip6=fd00::3";
    vl::test::DomainSpec spec{.name = name, .mac = mac.str(), .zone = "dmz"};
    if (ip_policy_) spec.ips = {ip, ip6};
    spec.memory_mib = 256;
    spec.nic_model = "virtio";
    spec.kernel = files_.kernel();
    spec.initrd = files_.initrd();
    spec.cmdline = cmdline;
    env_.define(spec);
  }

  bool ip_policy_;
  vl::test::HelperEnv env_;  // first: its network namespace holds everything below
  vl::test::PeerNetns peer_;
  vl::test::LinuxGuestFiles files_;
  Policy attacker_policy_;
};

}  // namespace

TEST_SUITE("root/guest_attack") {
  TEST_CASE("a Linux guest's MAC-level attacks reach no one, teach the bridge nothing, and are all counted") {
    // Changed MAC, the neighbour's MAC and IP, forged ARP sender MACs, 802.1Q frames, a flood of
    // 2,000 random source MACs.
    GuestZone zone(false);
    zone.run();
  }

  TEST_CASE("a Linux guest with declared addresses cannot forge IPv4, IPv6, ARP, NDP or DHCP server traffic") {
    // Forged IPv4 and IPv6 sources, ARP sender IPs, the neighbour's IP with its own MAC, NAs for
    // others' addresses, RAs, DHCP and DHCPv6 server replies.
    GuestZone zone(true);
    zone.run();
  }
}
