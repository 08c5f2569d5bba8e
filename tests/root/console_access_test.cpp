// Who may reach a VM's VNC console, against the real helper binary, a real qemu and the real
// nftables rule, in a network namespace of the test's own: root and the admin group's members
// get QEMU's RFB banner; another VM's uid (even one listed in the admin group) and any other
// local user get "connection refused". The rule goes with cleanup and with a failed launch.
//
// The users and the admin group exist only in a private mount namespace, where /etc/passwd and
// /etc/group are replaced by copies with the test's entries: the helper resolves operators from
// the group database, and the host's must not change.
#include <doctest/doctest.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include "helper/console_filter.h"
#include "helper/uid_map.h"
#include "tests/support/system_env.h"

using vl::test::DomainSpec;
using vl::test::HelperEnv;

namespace {

constexpr uint16_t kPort = 5907;
constexpr gid_t kAdminGid = 4250;
constexpr uid_t kStranger = 4242;       // no group of vmlaunch's
constexpr uid_t kAdmin = 4243;          // listed in the admin group
constexpr uid_t kPrimaryAdmin = 4244;   // the admin group is its primary group
#ifdef VMLAUNCH_FAULT_INJECTION
constexpr bool kFaultInjection = true;
#else
constexpr bool kFaultInjection = false;  // a release build has no VMLAUNCH_FAIL_AT
#endif

// /etc/passwd and /etc/group with extra lines, for this process and its children only, until
// scope exit.
class ScopedUserDb final {
 public:
  ScopedUserDb(const std::string& dir, const std::string& passwd_lines, const std::string& group_lines)
      : original_(::open("/proc/self/ns/mnt", O_RDONLY | O_CLOEXEC)) {
    REQUIRE(original_);
    REQUIRE_MESSAGE(::unshare(CLONE_NEWNS) == 0, std::strerror(errno));
    REQUIRE(::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) == 0);
    for (auto [name, extra] : {std::pair{"passwd", passwd_lines}, std::pair{"group", group_lines}}) {
      std::string copy = dir + "/" + name;
      std::ofstream(copy) << vl::sys::read_file(std::string("/etc/") + name, 1 << 22).value() << extra;
      ::chmod(copy.c_str(), 0644);
      REQUIRE(::mount(copy.c_str(), (std::string("/etc/") + name).c_str(), nullptr, MS_BIND, nullptr) == 0);
    }
  }
  ~ScopedUserDb() {
    if (::setns(original_.get(), CLONE_NEWNS) != 0) std::abort();
  }
  ScopedUserDb(const ScopedUserDb&) = delete;
  ScopedUserDb& operator=(const ScopedUserDb&) = delete;

 private:
  vl::UniqueFd original_;
};

// Gives a defined domain a VNC server on 127.0.0.1:kPort.
void add_vnc(HelperEnv& env, const std::string& name) {
  std::string path = env.root() + "/domains/" + name + ".xml";
  std::string xml = vl::sys::read_file(path, 1 << 20).value();
  size_t end = xml.find("  </devices>");
  REQUIRE(end != std::string::npos);
  xml.insert(end, "    <graphics type='vnc' autoport='no' port='" + std::to_string(kPort) + "' listen='127.0.0.1'/>\n");
  std::ofstream(path, std::ios::trunc) << xml;
}

// Connects to 127.0.0.1:port from a child running as uid:gid (groups: `groups`): "refused",
// the first line the server sent, or what else went wrong.
std::string connect_as(uid_t uid, gid_t gid, std::vector<gid_t> groups, uint16_t port = kPort) {
  int fds[2];
  REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
  vl::UniqueFd read_end(fds[0]), write_end(fds[1]);
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    auto report = [&](const std::string& s) {
      (void)!::write(write_end.get(), s.data(), s.size());
      ::_exit(0);
    };
    if (::setgroups(groups.size(), groups.data()) != 0 || ::setresgid(gid, gid, gid) != 0 || ::setresuid(uid, uid, uid) != 0)
      report("cannot become uid " + std::to_string(uid));
    int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    timeval timeout{30, 0};
    ::setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(s, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0)
      report(errno == ECONNREFUSED ? "refused" : std::string("connect: ") + std::strerror(errno));
    char banner[12];
    size_t got = 0;
    while (got < sizeof banner) {
      ssize_t n = ::read(s, banner + got, sizeof banner - got);
      if (n <= 0) report("read: " + std::string(n == 0 ? "EOF" : std::strerror(errno)));
      got += static_cast<size_t>(n);
    }
    report(std::string(banner, 11));  // without the newline
  }
  write_end.reset();
  std::string result = vl::sys::read_all(read_end.get(), 4096).value();
  (void)vl::wait_for(pid);
  return result;
}

// Root's view, polled: the emulator may not be listening yet when the helper has become it.
std::string wait_for_console() {
  std::string seen;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    seen = connect_as(0, 0, {});
    if (seen != "refused") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return seen;
}

bool console_rule_exists(const std::string& vm) { return vl::helper::console_filter_exists(vm).value(); }

}  // namespace

TEST_SUITE("root/console_access") {
  TEST_CASE("a VM's console answers root and the admin group; other VMs' uids and other users are refused") {
    HelperEnv env;
    // Another VM, whose uid is the attacker's: it exists only once that VM has launched.
    env.define({.name = "dmz1", .mac = "52:54:00:00:00:01", .bridge = "br-dmz"});
    auto dmz = env.launch("dmz1");
    REQUIRE_MESSAGE(dmz.running(), dmz.log);
    uid_t dmz_uid = vl::helper::read_uid_map(env.config()).value().at("dmz1");
    // The admin group lists the DMZ VM's user too: a VM's uid is never an operator.
    ScopedUserDb users(env.root(),
                       "vncstranger:x:4242:4242::/:/usr/sbin/nologin\n"
                       "vncadmin:x:4243:4243::/:/usr/sbin/nologin\n"
                       "vncprimary:x:4244:4250::/:/usr/sbin/nologin\n"
                       "dmzvm:x:" + std::to_string(dmz_uid) + ":" + std::to_string(dmz_uid) + "::/:/usr/sbin/nologin\n",
                       "vmlaunch-admin:x:4250:vncadmin,dmzvm\n");

    env.define({.name = "intra1", .mac = "52:54:00:00:00:02", .bridge = "br-lan"});
    add_vnc(env, "intra1");
    auto intra = env.launch("intra1");
    REQUIRE_MESSAGE(intra.running(), intra.log);
    CHECK_MESSAGE(intra.log.find("has uid " + std::to_string(dmz_uid) + ", which is a VM's") != std::string::npos, intra.log);

    CHECK(wait_for_console() == "RFB 003.008");
    CHECK(connect_as(dmz_uid, dmz_uid, {}) == "refused");
    CHECK(connect_as(dmz_uid, dmz_uid, {kAdminGid}) == "refused");  // group membership alone is not enough
    CHECK(connect_as(kStranger, kStranger, {}) == "refused");
    CHECK(connect_as(kAdmin, kAdmin, {kAdminGid}) == "RFB 003.008");
    CHECK(connect_as(kPrimaryAdmin, kAdminGid, {}) == "RFB 003.008");
    CHECK(connect_as(0, 0, {}) == "RFB 003.008");
    CHECK(console_rule_exists("intra1"));
    CHECK_FALSE(console_rule_exists("dmz1"));  // no VNC, no rule

    env.kill_vm(intra.pid);
    auto cleaned = env.helper({"cleanup", "intra1"});
    CHECK_MESSAGE(WIFEXITED(cleaned.status), cleaned.log);
    CHECK_MESSAGE(WEXITSTATUS(cleaned.status) == 0, cleaned.log);
    CHECK_FALSE(console_rule_exists("intra1"));
    // It was the table's only VM: the table goes too.
    CHECK(vl::test::command_output("nft list tables").find("inet vmlaunch") == std::string::npos);
    // Cleanup is idempotent.
    cleaned = env.helper({"cleanup", "intra1"});
    CHECK_MESSAGE(WEXITSTATUS(cleaned.status) == 0, cleaned.log);
  }

  TEST_CASE("a port another VM's console rule guards is refused, and the refusal changes nothing") {
    HelperEnv env;
    env.define({.name = "intra1", .mac = "52:54:00:00:00:02", .bridge = "br-lan"});
    add_vnc(env, "intra1");
    auto intra = env.launch("intra1");
    REQUIRE_MESSAGE(intra.running(), intra.log);
    env.define({.name = "intra2", .mac = "52:54:00:00:00:03", .bridge = "br-lan"});
    add_vnc(env, "intra2");
    vl::test::check_launch_refused(env, "intra2", "VNC port 5907 is guarded for VM 'intra1'");
    CHECK(console_rule_exists("intra1"));
  }

  TEST_CASE("a launch that fails at or after the console rule leaves no rule") {
    if (!kFaultInjection) return;
    HelperEnv env;
    env.define({.name = "intra1", .mac = "52:54:00:00:00:02", .bridge = "br-lan"});
    add_vnc(env, "intra1");
    for (const char* step : {"console-filter", "tap", "bridge-attach", "monitor-socket", "state-file", "exec"}) {
      CAPTURE(step);
      auto before = env.snapshot();  // interfaces, nftables tables, files
      auto r = env.launch("intra1", {std::string("VMLAUNCH_FAIL_AT=") + step});
      REQUIRE_FALSE(r.running());
      CHECK(WEXITSTATUS(r.status) == 1);
      if (std::string(step) != "console-filter")  // the rule was there, and went
        CHECK_MESSAGE(r.log.find("rolling back step 'console-filter'") != std::string::npos, r.log);
      CHECK_FALSE(console_rule_exists("intra1"));
      CHECK_MESSAGE(vl::test::snapshot_diff(before, env.snapshot()).empty(), vl::test::snapshot_diff(before, env.snapshot()));
    }
  }

  TEST_CASE("an admin member asks vmctl for the display and reaches the console; a stranger does neither") {
    vl::test::TempDir db;
    ::chmod(db.path().c_str(), 0755);
    // Before the broker and the daemon start: they must see the same users.
    ScopedUserDb users(db.path(),
                       "vncstranger:x:4242:4242::/:/usr/sbin/nologin\n"
                       "vncadmin:x:4243:4243::/:/usr/sbin/nologin\n",
                       "vmlaunch-admin:x:4250:vncadmin\n");
    vl::test::SystemEnv env;
    env.define({.name = "intra1", .nic = false});
    std::string path = env.root() + "/domains/intra1.xml";
    std::string xml = vl::sys::read_file(path, 1 << 20).value();
    xml.insert(xml.find("  </devices>"), "    <graphics type='vnc' autoport='yes' listen='127.0.0.1'/>\n");
    std::ofstream(path, std::ios::trunc) << xml;
    auto started = env.vmctl({"start", "intra1"});
    REQUIRE_MESSAGE(started.exit_code == 0, started.out << env.log());

    auto vncdisplay_as = [&](std::vector<std::string> ids) {
      std::vector<std::string> argv = {"setpriv"};
      argv.insert(argv.end(), ids.begin(), ids.end());
      for (std::string arg : {vl::test::build_path("VMLAUNCH_VMCTL"), std::string("--config"), env.config_path(),
                              std::string("vncdisplay"), std::string("intra1")})
        argv.push_back(arg);
      return vl::test::run_program("/usr/bin/setpriv", argv);
    };
    auto display = vncdisplay_as({"--reuid=4243", "--regid=4243", "--groups=4250"});
    REQUIRE_MESSAGE(display.exit_code == 0, display.out);
    REQUIRE(display.out.rfind("127.0.0.1:", 0) == 0);
    uint16_t port = static_cast<uint16_t>(5900 + std::stoi(display.out.substr(10)));
    CHECK(connect_as(kAdmin, kAdmin, {kAdminGid}, port) == "RFB 003.008");
    CHECK(vncdisplay_as({"--reuid=4242", "--regid=4242", "--clear-groups"}).exit_code == 1);
    CHECK(connect_as(kStranger, kStranger, {}, port) == "refused");
    auto stopped = env.vmctl({"stop", "--force", "intra1"});
    CHECK_MESSAGE(stopped.exit_code == 0, stopped.out);
    // The daemon runs cleanup once the emulator has gone, which takes the rule with it.
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (console_rule_exists("intra1") && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    CHECK_FALSE(console_rule_exists("intra1"));
  }
}
