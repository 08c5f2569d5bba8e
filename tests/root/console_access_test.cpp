// Who may reach a VM's VNC console, against the real helper binary and a real qemu: its
// emulator runs in a network namespace of its own, so VNC is a Unix socket in a directory of
// the VM's uid with the daemon's group (helper/vnc_socket.h). Root and the daemon's group get
// QEMU's RFB banner; another VM's uid, the admin group's members and any other local user are
// denied (operators use `vmctl vnc`). The directory goes with cleanup and with a failed launch,
// and cleanup still removes the nftables console rule an earlier version installed.
//
// The users and the admin group of the last case exist only in a private mount namespace,
// where /etc/passwd and /etc/group are replaced by copies with the test's entries: the daemon
// resolves the admin group from the group database, and the host's must not change.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "helper/uid_map.h"
#include "tests/support/system_env.h"

using vl::test::DomainSpec;
using vl::test::HelperEnv;

namespace {

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

// Gives a defined domain a VNC server (on its socket).
void add_vnc(HelperEnv& env, const std::string& name) {
  std::string path = env.root() + "/domains/" + name + ".xml";
  std::string xml = vl::sys::read_file(path, 1 << 20).value();
  size_t end = xml.find("  </devices>");
  REQUIRE(end != std::string::npos);
  xml.insert(end, "    <graphics type='vnc' listen='127.0.0.1'/>\n");
  std::ofstream(path, std::ios::trunc) << xml;
}

// Connects to the Unix socket at `path` from a child running as uid:gid (groups: `groups`):
// "denied", "refused" (nothing listens yet), the first line the server sent (without its
// newline), or what else went wrong.
std::string connect_as(const std::string& path, uid_t uid, gid_t gid, std::vector<gid_t> groups) {
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
    int s = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    timeval timeout{30, 0};
    ::setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::strncpy(sa.sun_path, path.c_str(), sizeof sa.sun_path - 1);
    if (::connect(s, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0)
      report(errno == EACCES ? "denied" : errno == ECONNREFUSED || errno == ENOENT ? "refused" : std::string("connect: ") + std::strerror(errno));
    char banner[12];
    size_t got = 0;
    while (got < sizeof banner) {
      ssize_t n = ::read(s, banner + got, sizeof banner - got);
      if (n <= 0) report("read: " + std::string(n == 0 ? "EOF" : std::strerror(errno)));
      got += static_cast<size_t>(n);
    }
    report(std::string(banner, 11));
  }
  write_end.reset();
  std::string result = vl::sys::read_all(read_end.get(), 4096).value();
  (void)vl::wait_for(pid);
  return result;
}

// Root's view, polled: the emulator may not be listening yet when the helper has become it.
std::string wait_for_console(const std::string& path) {
  std::string seen;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    seen = connect_as(path, 0, 0, {});
    if (seen != "refused") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return seen;
}

std::string vnc_socket(HelperEnv& env, const std::string& vm) { return env.config().vnc_socket_path(vl::VmName::parse(vm).value()); }

}  // namespace

TEST_SUITE("root/console_access") {
  TEST_CASE("a VM's VNC socket answers root and the daemon's group; other VMs' uids and other users are denied") {
    HelperEnv env;  // its daemon group is root's (gid 0)
    // Another VM, whose uid is the attacker's: it exists only once that VM has launched.
    env.define({.name = "dmz1", .mac = "52:54:00:00:00:01", .bridge = "br-dmz"});
    add_vnc(env, "dmz1");
    auto dmz = env.launch("dmz1");
    REQUIRE_MESSAGE(dmz.running(), dmz.log);
    uid_t dmz_uid = vl::helper::read_uid_map(env.config()).value().at("dmz1");

    env.define({.name = "intra1", .mac = "52:54:00:00:00:02", .bridge = "br-lan"});
    add_vnc(env, "intra1");
    auto intra = env.launch("intra1");
    REQUIRE_MESSAGE(intra.running(), intra.log);
    uid_t intra_uid = vl::helper::read_uid_map(env.config()).value().at("intra1");
    const std::string path = vnc_socket(env, "intra1");

    CHECK(wait_for_console(path) == "RFB 003.008");
    CHECK(connect_as(path, kStranger, kStranger, {0}) == "RFB 003.008");  // the daemon's group
    CHECK(connect_as(path, dmz_uid, dmz_uid, {}) == "denied");
    CHECK(connect_as(path, kStranger, kStranger, {}) == "denied");
    CHECK(connect_as(path, kAdmin, kAdmin, {kAdminGid}) == "denied");
    // The other VM reaches its own socket only: it cannot even enter intra1's directory.
    CHECK(wait_for_console(vnc_socket(env, "dmz1")) == "RFB 003.008");
    // The directory: the VM's uid binds the socket there, the daemon's group may enter.
    struct stat st {};
    REQUIRE(::stat(env.config().vnc_socket_dir(vl::VmName::parse("intra1").value()).c_str(), &st) == 0);
    CHECK(st.st_uid == intra_uid);
    CHECK(st.st_gid == 0);
    CHECK((st.st_mode & 07777) == 02750);
    REQUIRE(::stat(path.c_str(), &st) == 0);
    CHECK(S_ISSOCK(st.st_mode));
    CHECK((st.st_mode & 0777) == 0770);
    // No console rule any more: nothing of vmlaunch's in the inet family.
    CHECK(vl::test::command_output("nft list tables").find("inet vmlaunch") == std::string::npos);

    env.kill_vm(intra.pid);
    auto cleaned = env.helper({"cleanup", "intra1"});
    CHECK_MESSAGE(WIFEXITED(cleaned.status), cleaned.log);
    CHECK_MESSAGE(WEXITSTATUS(cleaned.status) == 0, cleaned.log);
    CHECK_FALSE(std::filesystem::exists(env.config().vnc_socket_dir(vl::VmName::parse("intra1").value())));
    // Cleanup is idempotent.
    cleaned = env.helper({"cleanup", "intra1"});
    CHECK_MESSAGE(WEXITSTATUS(cleaned.status) == 0, cleaned.log);
    env.kill_vm(dmz.pid);
    (void)env.helper({"cleanup", "dmz1"});
  }

  TEST_CASE("cleanup removes the console rule an earlier version installed, and its table with the last VM's") {
    HelperEnv env;
    env.define({.name = "intra1", .mac = "52:54:00:00:00:02", .bridge = "br-lan"});
    env.define({.name = "intra2", .mac = "52:54:00:00:00:03", .bridge = "br-lan"});
    // What an earlier helper left for two VMs whose emulators it started (console_filter.h).
    auto legacy = vl::test::command_output(
        "nft -f - 2>&1 <<'EOF'\n"
        "add table inet vmlaunch\n"
        "add map inet vmlaunch consoles { type inet_service : verdict; }\n"
        "add chain inet vmlaunch output { type filter hook output priority 0; policy accept; }\n"
        "add rule inet vmlaunch output tcp flags & (syn | ack) == syn fib daddr type local tcp dport vmap @consoles\n"
        "add chain inet vmlaunch vm-intra1\n"
        "add rule inet vmlaunch vm-intra1 meta skuid != { 0 } counter reject with tcp reset\n"
        "add chain inet vmlaunch vm-intra2\n"
        "add rule inet vmlaunch vm-intra2 meta skuid != { 0 } counter reject with tcp reset\n"
        "add element inet vmlaunch consoles { 5907 : jump vm-intra1, 5908 : jump vm-intra2 }\n"
        "EOF\n");
    REQUIRE_MESSAGE(legacy.empty(), legacy);
    auto cleaned = env.helper({"cleanup", "intra1"});
    CHECK_MESSAGE(WEXITSTATUS(cleaned.status) == 0, cleaned.log);
    std::string table = vl::test::command_output("nft list table inet vmlaunch 2>&1");
    CHECK(table.find("vm-intra1") == std::string::npos);
    CHECK(table.find("5907") == std::string::npos);
    CHECK(table.find("vm-intra2") != std::string::npos);
    cleaned = env.helper({"cleanup", "intra2"});
    CHECK_MESSAGE(WEXITSTATUS(cleaned.status) == 0, cleaned.log);
    CHECK(vl::test::command_output("nft list tables").find("inet vmlaunch") == std::string::npos);
  }

  TEST_CASE("a launch that fails at or after the VNC socket's directory leaves no directory") {
    if (!kFaultInjection) return;
    HelperEnv env;
    env.define({.name = "intra1", .mac = "52:54:00:00:00:02", .bridge = "br-lan"});
    add_vnc(env, "intra1");
    for (const char* step : {"vnc-socket", "tap", "bridge-attach", "monitor-socket", "state-file", "exec"}) {
      CAPTURE(step);
      auto before = env.snapshot();  // interfaces, nftables tables, files
      auto r = env.launch("intra1", {std::string("VMLAUNCH_FAIL_AT=") + step});
      REQUIRE_FALSE(r.running());
      CHECK(WEXITSTATUS(r.status) == 1);
      if (std::string(step) != "vnc-socket")  // the directory was there, and went
        CHECK_MESSAGE(r.log.find("rolling back step 'vnc-socket'") != std::string::npos, r.log);
      CHECK_FALSE(std::filesystem::exists(env.config().vnc_socket_dir(vl::VmName::parse("intra1").value())));
      CHECK_MESSAGE(vl::test::snapshot_diff(before, env.snapshot()).empty(), vl::test::snapshot_diff(before, env.snapshot()));
    }
  }

  TEST_CASE("an admin member asks vmctl for the VNC socket, but only the daemon reaches it; a stranger gets neither") {
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
    std::string socket = "unix:" + env.config().vnc_socket_path(vl::VmName::parse("intra1").value());
    CHECK(display.out == socket + "\n");
    CHECK(connect_as(socket.substr(5), kAdmin, kAdmin, {kAdminGid}) == "denied");
    CHECK(vncdisplay_as({"--reuid=4242", "--regid=4242", "--clear-groups"}).exit_code == 1);
    auto stopped = env.vmctl({"stop", "--force", "intra1"});
    CHECK_MESSAGE(stopped.exit_code == 0, stopped.out);
  }
}
