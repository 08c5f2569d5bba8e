// The network half of the emulator's jail (helper/net_namespace.h), against the real helper
// binary and a real qemu: a process that enters the running emulator's network namespace
// (/proc/PID/ns/net) and takes its uid finds loopback alone, up, no route anywhere, and
// neither the listener the test opens on its own loopback nor one on an address of its
// namespace; so `-nic user` (slirp), `-gdb tcp:`, an `nbd:` backing file would have nowhere to
// go. The emulator still answers on the monitor and the VNC socket, and its namespace goes
// with it.
#include <doctest/doctest.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "helper/uid_map.h"
#include "tests/support/helper_env.h"

using vl::test::HelperEnv;

namespace {

constexpr char kHostAddress[] = "192.0.2.1";  // given to a zone bridge of the test's namespace

// A listening TCP socket on addr:port (port 0: any), and its port.
std::pair<vl::UniqueFd, uint16_t> listen_on(const char* addr) {
  vl::UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  REQUIRE(s);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  REQUIRE(::inet_pton(AF_INET, addr, &sa.sin_addr) == 1);
  REQUIRE_MESSAGE(::bind(s.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0, std::strerror(errno));
  REQUIRE(::listen(s.get(), 4) == 0);
  socklen_t len = sizeof sa;
  REQUIRE(::getsockname(s.get(), reinterpret_cast<sockaddr*>(&sa), &len) == 0);
  return {std::move(s), ntohs(sa.sin_port)};
}

// "ok", or the errno name of a TCP connect to addr:port.
std::string try_connect(const char* addr, uint16_t port) {
  vl::UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!s) return std::string("socket: ") + std::strerror(errno);
  timeval timeout{10, 0};
  ::setsockopt(s.get(), SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  ::inet_pton(AF_INET, addr, &sa.sin_addr);
  if (::connect(s.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0) return "ok";
  return errno == ECONNREFUSED ? "ECONNREFUSED" : errno == ENETUNREACH ? "ENETUNREACH" : std::strerror(errno);
}

// The routes of /proc/self/net/FILE (the caller's namespace) whose device is not `lo`.
int routes_off_loopback(const char* file, size_t device_field) {
  std::ifstream in(std::string("/proc/self/net/") + file);
  std::string line;
  int n = 0;
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::vector<std::string> w{std::istream_iterator<std::string>(words), {}};
    if (w.size() > device_field && w[device_field] != "lo" && w[device_field] != "Iface") ++n;
  }
  return n;
}

// What a process sees from inside the emulator's network namespace, as the VM's uid: one
// "key=value" line per observation.
std::map<std::string, std::string> look_from_inside(pid_t emulator, uid_t uid, uint16_t loopback_port, uint16_t host_port) {
  int fds[2];
  REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
  vl::UniqueFd read_end(fds[0]), write_end(fds[1]);
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    std::string out;
    auto put = [&](const std::string& k, const std::string& v) { out += k + "=" + v + "\n"; };
    int ns = ::open(("/proc/" + std::to_string(emulator) + "/ns/net").c_str(), O_RDONLY | O_CLOEXEC);
    gid_t gid = uid;
    if (ns < 0 || ::setns(ns, CLONE_NEWNET) != 0) put("error", std::string("setns: ") + std::strerror(errno));
    else if (::setgroups(0, nullptr) != 0 || ::setresgid(gid, gid, gid) != 0 || ::setresuid(uid, uid, uid) != 0)
      put("error", "cannot become uid " + std::to_string(uid));
    else {
      std::string names;
      if (struct if_nameindex* list = ::if_nameindex()) {
        for (struct if_nameindex* i = list; i->if_index != 0; ++i) names += (names.empty() ? "" : ",") + std::string(i->if_name);
        ::if_freenameindex(list);
      }
      put("interfaces", names);
      ifreq ifr{};
      std::strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
      int s = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
      put("lo_up", ::ioctl(s, SIOCGIFFLAGS, &ifr) == 0 && (ifr.ifr_flags & IFF_UP) ? "yes" : "no");
      put("routes", std::to_string(routes_off_loopback("route", 0) + routes_off_loopback("ipv6_route", 9)));
      put("loopback_listener", try_connect("127.0.0.1", loopback_port));
      put("host_listener", try_connect(kHostAddress, host_port));
      put("outside", try_connect("198.51.100.1", 80));
    }
    (void)!::write(write_end.get(), out.data(), out.size());
    ::_exit(0);
  }
  write_end.reset();
  std::string text = vl::sys::read_all(read_end.get(), 1 << 16).value();
  (void)vl::wait_for(pid);
  std::map<std::string, std::string> seen;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);)
    if (auto eq = line.find('='); eq != std::string::npos) seen[line.substr(0, eq)] = line.substr(eq + 1);
  return seen;
}

ino_t net_namespace_of(pid_t pid) {
  struct stat st {};
  if (::stat(("/proc/" + std::to_string(pid) + "/ns/net").c_str(), &st) != 0) return 0;
  return st.st_ino;
}

// The processes whose network namespace is `ns`.
std::vector<pid_t> processes_in(ino_t ns) {
  std::vector<pid_t> found;
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    std::string name = e.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    pid_t pid = std::stoi(name);
    if (net_namespace_of(pid) == ns) found.push_back(pid);
  }
  return found;
}

// The RFB banner (without its newline) on the Unix socket at `path`, polled: the emulator may
// not listen yet when the helper has become it.
std::string vnc_banner(const std::string& path) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  std::string seen = "nothing";
  while (std::chrono::steady_clock::now() < deadline) {
    vl::UniqueFd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    path.copy(sa.sun_path, sizeof sa.sun_path - 1);
    if (::connect(s.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0) {
      char banner[12];
      size_t got = 0;
      while (got < sizeof banner) {
        ssize_t n = ::read(s.get(), banner + got, sizeof banner - got);
        if (n <= 0) break;
        got += static_cast<size_t>(n);
      }
      return std::string(banner, got > 0 ? got - 1 : 0);
    }
    seen = std::strerror(errno);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return seen;
}

}  // namespace

TEST_SUITE("root/emulator_netns") {
  TEST_CASE("the emulator's network namespace holds loopback alone: no route to the host, nowhere for slirp to go") {
    HelperEnv env;
    vl::test::run_ok(std::string("ip addr add ") + kHostAddress + "/24 dev br-lan && ip link set br-lan up");
    auto [loopback, loopback_port] = listen_on("127.0.0.1");
    auto [host, host_port] = listen_on(kHostAddress);
    // From the test's own namespace both listeners answer: what fails below fails because of
    // where the emulator is.
    REQUIRE(try_connect("127.0.0.1", loopback_port) == "ok");
    REQUIRE(try_connect(kHostAddress, host_port) == "ok");

    vl::test::DomainSpec spec{.name = "jail1", .mac = "52:54:00:00:00:31", .bridge = "br-lan"};
    spec.devices = "    <graphics type='vnc'/>\n";
    env.define(spec);
    auto r = env.launch("jail1");
    REQUIRE_MESSAGE(r.running(), r.log);
    uid_t uid = vl::helper::read_uid_map(env.config()).value().at("jail1");

    ino_t jail = net_namespace_of(r.pid);
    REQUIRE(jail != 0);
    CHECK(jail != net_namespace_of(::getpid()));
    auto seen = look_from_inside(r.pid, uid, loopback_port, host_port);
    CAPTURE(seen);
    CHECK(seen.count("error") == 0);
    CHECK(seen["interfaces"] == "lo");
    CHECK(seen["lo_up"] == "yes");
    CHECK(seen["routes"] == "0");
    CHECK(seen["loopback_listener"] == "ECONNREFUSED");  // its loopback is its own
    CHECK(seen["host_listener"] == "ENETUNREACH");
    CHECK(seen["outside"] == "ENETUNREACH");

    // The tap, created in the test's namespace and passed as an fd, stays there, on its bridge.
    CHECK(vl::test::command_output("ip -o link show jail1-0").find("master br-lan") != std::string::npos);
    // The monitor and VNC work: both are sockets in the runtime directory the daemon reaches.
    auto qmp = vl::test::QmpConnection::connect(env.root() + "/run/vms/jail1/qmp.sock");
    REQUIRE_MESSAGE(qmp.ok(), (qmp.ok() ? "" : qmp.error().message()));
    REQUIRE(qmp->execute("qmp_capabilities").ok());
    auto status = qmp->execute("query-status");
    REQUIRE(status.ok());
    CHECK((*status)["status"] == "prelaunch");
    auto vnc = qmp->execute("query-vnc");
    REQUIRE(vnc.ok());
    CHECK((*vnc)["family"] == "unix");
    CHECK(vnc_banner(env.config().vnc_socket_path(vl::VmName::parse("jail1").value())) == "RFB 003.008");

    // The namespace has no name and no mount: with the emulator gone, no process is in it.
    env.kill_vm(r.pid);
    CHECK(processes_in(jail).empty());
    auto cleaned = env.helper({"cleanup", "jail1"});
    CHECK_MESSAGE(WEXITSTATUS(cleaned.status) == 0, cleaned.log);
  }
}
