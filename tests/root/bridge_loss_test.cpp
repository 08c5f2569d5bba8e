// A zone bridge deleted under running VMs, and created again: the daemon reports the loss, and
// the broker puts the taps back, filtered, with the port as the launch made it. Real broker,
// daemon and emulator in a private network namespace; the test plays the VM by writing into
// the emulator's own tap fd.
#include <doctest/doctest.h>
#include <linux/if_packet.h>
#include <linux/if_tun.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>

#include <chrono>
#include <functional>
#include <nlohmann/json.hpp>
#include <thread>

#include "helper/nft_filter.h"
#include "helper/reattach.h"
#include "tests/support/tap_io.h"
#include "tests/support/system_env.h"

using vl::test::SystemEnv;
using Json = nlohmann::json;

namespace {

using Bytes = std::vector<uint8_t>;
constexpr uint16_t kTestEtherType = 0x88b5;  // IEEE local experimental
const std::string kVmMac = "52:54:00:00:30:01";
const vl::MacAddress kForgedMac = vl::MacAddress::parse("52:54:00:66:66:66").value();
const vl::MacAddress kPeerMac = vl::MacAddress::parse("52:54:00:aa:aa:aa").value();

Bytes marker_frame(const vl::MacAddress& src, const vl::MacAddress& dst, const std::string& marker) {
  Bytes f(dst.bytes.begin(), dst.bytes.end());
  f.insert(f.end(), src.bytes.begin(), src.bytes.end());
  f.push_back(kTestEtherType >> 8);
  f.push_back(kTestEtherType & 0xff);
  f.insert(f.end(), marker.begin(), marker.end());
  while (f.size() < 60) f.push_back(0);
  return f;
}

Bytes broadcast_frame(const vl::MacAddress& src, const std::string& marker) {
  Bytes f = marker_frame(src, src, marker);
  std::fill(f.begin(), f.begin() + 6, 0xff);
  return f;
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

// Reads frames until one carries `until` or `ms` pass; returns everything seen as text.
std::string receive_until(int sock, const std::string& until, int ms = 5000) {
  std::string seen;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd p{sock, POLLIN, 0};
    if (::poll(&p, 1, 100) != 1) continue;
    char buf[2048];
    ssize_t n = ::recv(sock, buf, sizeof buf, MSG_DONTWAIT);
    if (n <= 0) continue;
    seen.append(buf, static_cast<size_t>(n));
    seen += '\n';
    if (seen.find(until) != std::string::npos) break;
  }
  return seen;
}

using vl::test::send_into;
using vl::test::tap_of_emulator;

// A peer host on br-dmz: a veth whose other end is in its own named namespace.
class Peer final {
 public:
  Peer() : ns_("vmlaunch-bl-" + std::to_string(::getpid())) {
    vl::test::run_ok("ip netns add " + ns_);
    vl::test::run_ok("ip link add vpeer0 type veth peer name vpeer1 address " + kPeerMac.str());
    vl::test::run_ok("ip link set vpeer0 master br-dmz up");
    vl::test::run_ok("ip link set vpeer1 netns " + ns_ + " && ip -n " + ns_ + " link set vpeer1 up");
    vl::UniqueFd here(::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC));
    vl::UniqueFd there(::open(("/run/netns/" + ns_).c_str(), O_RDONLY | O_CLOEXEC));
    REQUIRE(::setns(there.get(), CLONE_NEWNET) == 0);
    socket = packet_socket("vpeer1");
    REQUIRE(::setns(here.get(), CLONE_NEWNET) == 0);
  }
  ~Peer() { (void)std::system(("ip netns delete " + ns_).c_str()); }
  Peer(const Peer&) = delete;
  Peer& operator=(const Peer&) = delete;

  void send(const Bytes& frame) {
    REQUIRE(::write(socket.get(), frame.data(), frame.size()) == static_cast<ssize_t>(frame.size()));
  }
  vl::UniqueFd socket;

 private:
  std::string ns_;
};

std::map<std::string, std::string> status_of(SystemEnv& env, const std::string& vm) {
  auto r = env.vmctl({"status", vm, "--json"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.out);
  Json j = Json::parse(r.out, nullptr, false);
  REQUIRE((j.is_array() && j.size() == 1));
  return j[0].get<std::map<std::string, std::string>>();
}

// Polls `vmctl status` until the VM's network field satisfies `pred` (generous deadline: CI
// runs under load); returns the last status seen.
std::map<std::string, std::string> wait_for_network(SystemEnv& env, const std::string& vm,
                                                    const std::function<bool(const std::string&)>& pred) {
  std::map<std::string, std::string> status;
  for (auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
       std::chrono::steady_clock::now() < deadline; std::this_thread::sleep_for(std::chrono::milliseconds(50))) {
    status = status_of(env, vm);
    if (pred(status["network"])) return status;
  }
  FAIL("network of " << vm << " is still '" << status["network"] << "'\n" << env.log());
  return status;
}

bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

// The master of interface `name` (as `ip -j link` says), "" if none.
std::string master_of(const std::string& name) {
  Json j = Json::parse(vl::test::command_output("ip -j link show dev " + name), nullptr, false);
  REQUIRE((j.is_array() && j.size() == 1));
  return j[0].value("master", "");
}

int start_vm(SystemEnv& env, const std::string& name) {
  env.define({.name = name, .mac = kVmMac, .zone = "dmz"});
  auto started = env.vmctl({"start", name});
  REQUIRE_MESSAGE(started.exit_code == 0, started.out << env.log());
  auto status = wait_for_network(env, name, [](const std::string& n) { return n == "attached to bridge 'br-dmz'"; });
  return std::stoi(status["pid"]);
}

uint64_t mac_drops(const std::string& vm) {
  auto counters = vl::helper::read_vm_counters(vm);
  REQUIRE(counters.ok());
  for (const auto& c : *counters)
    if (c.tap == vm + "-0" && c.what == "mac") return c.packets;
  FAIL("no mac counter");
  return 0;
}

// The checks of a port as the launch makes it, and traffic both ways through it.
void check_port_as_launched(int tap, Peer& peer, const vl::MacAddress& vm_mac, const std::string& round) {
  CHECK(master_of("web1-0") == "br-dmz");
  CHECK(vl::test::command_output("bridge -d link show dev web1-0").find("learning off") != std::string::npos);
  CHECK(vl::test::bridge_fdb("br-dmz").find(kVmMac + " dev web1-0 sticky master br-dmz static") != std::string::npos);
  // Forged source: dropped by the filter (counted), seen by no one.
  uint64_t drops = mac_drops("web1");
  send_into(tap, broadcast_frame(kForgedMac, "forged-" + round));
  // Honest: reaches the peer; the forged frame, sent first, must not have.
  send_into(tap, broadcast_frame(vm_mac, "honest-" + round));
  std::string seen = receive_until(peer.socket.get(), "honest-" + round);
  CHECK(seen.find("honest-" + round) != std::string::npos);
  CHECK(seen.find("forged-" + round) == std::string::npos);
  CHECK(mac_drops("web1") == drops + 1);
  // The peer reaches the VM's MAC: the frame leaves through the tap.
  vl::UniqueFd on_tap = packet_socket("web1-0");
  peer.send(marker_frame(kPeerMac, vm_mac, "to-vm-" + round));
  CHECK(receive_until(on_tap.get(), "to-vm-" + round).find("to-vm-" + round) != std::string::npos);
}

}  // namespace

TEST_SUITE("root/bridge_loss") {
  TEST_CASE("a deleted zone bridge is reported; recreated, it gets the VM's tap back, filtered and not learning") {
    SystemEnv env;
    Peer peer;
    int pid = start_vm(env, "web1");
    vl::UniqueFd tap = tap_of_emulator(pid);
    const vl::MacAddress vm_mac = vl::MacAddress::parse(kVmMac).value();
    check_port_as_launched(tap.get(), peer, vm_mac, "before");

    vl::test::run_ok("ip link delete br-dmz");
    auto lost = wait_for_network(env, "web1", [](const std::string& n) { return starts_with(n, "detached"); });
    CHECK(lost["network"] == "detached: bridge 'br-dmz' is gone");
    CHECK(lost["state"] == "running");  // the guest still runs
    CHECK(lost["pid"] == std::to_string(pid));
    CHECK(master_of("web1-0").empty());
    Json list = Json::parse(env.vmctl({"list", "--json"}).out, nullptr, false);
    REQUIRE(list.is_array());
    CHECK(list[0]["reason"] == "network detached: bridge 'br-dmz' is gone");
    CHECK(list[0]["state"] == "running");
    // The filter outlives the bridge: it matches the tap by name in the bridge family's hooks.
    CHECK(vl::helper::vm_filter_exists("web1").value());

    vl::test::run_ok("ip link add br-dmz type bridge && ip link set br-dmz up && ip link set vpeer0 master br-dmz");
    auto back = wait_for_network(env, "web1", [](const std::string& n) { return n == "attached to bridge 'br-dmz'"; });
    CHECK(back["state"] == "running");
    CHECK(back["pid"] == std::to_string(pid));
    CHECK(back["reason"].empty());
    check_port_as_launched(tap.get(), peer, vm_mac, "after");
  }

  TEST_CASE("an interface that is not a bridge, under the zone bridge's name, does not get the tap") {
    SystemEnv env;
    int pid = start_vm(env, "web1");
    vl::test::run_ok("ip link delete br-dmz && ip link add br-dmz type veth peer name br-dmz-peer");
    auto impostor = wait_for_network(env, "web1", [](const std::string& n) { return starts_with(n, "detached: 'br-dmz'"); });
    CHECK(impostor["network"] == "detached: 'br-dmz' is not a bridge");
    CHECK(impostor["state"] == "running");
    CHECK(master_of("web1-0").empty());
    // The broker's own check, whatever the daemon asks: it refuses and changes nothing.
    auto refused = vl::helper::reattach_vm(env.config(), vl::VmName::parse("web1").value());
    REQUIRE_FALSE(refused.ok());
    CHECK(refused.error().code == vl::ErrorCode::kDenied);
    CHECK(refused.error().message().find("'br-dmz' is not a bridge") != std::string::npos);
    CHECK(master_of("web1-0").empty());
    CHECK(master_of("br-dmz-peer").empty());
    // A real bridge under that name gets the tap.
    vl::test::run_ok("ip link delete br-dmz && ip link add br-dmz type bridge && ip link set br-dmz up");
    auto back = wait_for_network(env, "web1", [](const std::string& n) { return n == "attached to bridge 'br-dmz'"; });
    CHECK(back["pid"] == std::to_string(pid));
    CHECK(master_of("web1-0") == "br-dmz");
  }

  TEST_CASE("a tap taken off its bridge is put back, as the launch made it") {
    SystemEnv env;
    int pid = start_vm(env, "web1");
    vl::test::run_ok("ip link set dev web1-0 nomaster");
    bool back = false;
    for (auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
         !back && std::chrono::steady_clock::now() < deadline; std::this_thread::sleep_for(std::chrono::milliseconds(50)))
      back = master_of("web1-0") == "br-dmz";
    REQUIRE_MESSAGE(back, env.log());
    CHECK(vl::test::command_output("bridge -d link show dev web1-0").find("learning off") != std::string::npos);
    CHECK(vl::test::bridge_fdb("br-dmz").find(kVmMac + " dev web1-0 sticky master br-dmz static") != std::string::npos);
    auto status = wait_for_network(env, "web1", [](const std::string& n) { return n == "attached to bridge 'br-dmz'"; });
    CHECK(status["pid"] == std::to_string(pid));
  }

  TEST_CASE("a bridge lost and recreated while the daemon was down is found at its start") {
    SystemEnv env;
    int pid = start_vm(env, "web1");
    env.kill_daemon();
    vl::test::run_ok("ip link delete br-dmz && ip link add br-dmz type bridge && ip link set br-dmz up");
    CHECK(master_of("web1-0").empty());
    env.start_daemon();
    auto back = wait_for_network(env, "web1", [](const std::string& n) { return n == "attached to bridge 'br-dmz'"; });
    CHECK(back["pid"] == std::to_string(pid));
    CHECK(master_of("web1-0") == "br-dmz");
    CHECK(vl::test::command_output("bridge -d link show dev web1-0").find("learning off") != std::string::npos);
  }
}
