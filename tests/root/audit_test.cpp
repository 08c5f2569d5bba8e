// `vmctl audit` against real VMs: vmctl -> vmlaunchd (as nobody) -> broker `inspect` (root),
// each rule broken on purpose on the running system and the exact finding checked.
#include <doctest/doctest.h>
#include <sys/stat.h>

#include <nlohmann/json.hpp>
#include <set>

#include "tests/support/system_env.h"

using vl::test::DomainSpec;
using vl::test::SystemEnv;
using vl::test::run_ok;
using vl::test::snapshot_diff;
using Json = nlohmann::json;

namespace {

// Today's emulators share the host's network and mount namespaces: jailed-namespaces fails for
// every running VM. Once the emulator jail lands, set this to true: a healthy run then has no
// failure at all and exits 0.
constexpr bool kEmulatorsJailed = true;

struct Audit {
  int exit_code = -1;
  Json report;
  std::string out;
};

Audit audit(SystemEnv& env, std::vector<std::string> names = {}) {
  std::vector<std::string> args = {"audit", "--json"};
  args.insert(args.end(), names.begin(), names.end());
  auto r = env.vmctl(args);
  Audit a{r.exit_code, Json::parse(r.out, nullptr, false), r.out};
  REQUIRE_MESSAGE(a.report.is_object(), r.out);
  return a;
}

// "VM/rule" (or "(host)/rule") of every failed finding.
std::set<std::string> failures(const Audit& a) {
  std::set<std::string> out;
  for (const Json& f : a.report["findings"])
    if (f["verdict"] == "fail") out.insert((f["vm"] == "" ? std::string("(host)") : f["vm"].get<std::string>()) + "/" + f["rule"].get<std::string>());
  return out;
}

const Json& finding(const Audit& a, const std::string& vm, const std::string& rule) {
  for (const Json& f : a.report["findings"])
    if (f["vm"] == vm && f["rule"] == rule) return f;
  FAIL("no finding " << vm << "/" << rule << " in " << a.out);
  static Json none;
  return none;
}

std::set<std::string> healthy_failures(const std::vector<std::string>& running) {
  std::set<std::string> out;
  if (!kEmulatorsJailed)
    for (const std::string& vm : running) out.insert(vm + "/jailed-namespaces");
  return out;
}

// Breaking one thing adds exactly the finding `rule` of `vm` with `evidence`, and fails the audit.
void expect_only(SystemEnv& env, const std::string& vm, const std::string& rule, const std::string& evidence,
                 const std::vector<std::string>& running) {
  Audit a = audit(env);
  std::set<std::string> want = healthy_failures(running);
  want.insert((vm.empty() ? std::string("(host)") : vm) + "/" + rule);
  CHECK_MESSAGE(failures(a) == want, a.out);
  CHECK(a.exit_code == 1);
  const Json& f = finding(a, vm, rule);
  CHECK(f["verdict"] == "fail");
  CHECK(f["evidence"] == evidence);
  CHECK(f["fix"] != "");
}

uint32_t uid_of(SystemEnv& env, const std::string& vm) {
  auto r = env.vmctl({"list", "--json"});
  Json rows = Json::parse(r.out, nullptr, false);
  REQUIRE(rows.is_array());
  for (const Json& row : rows)
    if (row["name"] == vm) return row["uid"].get<uint32_t>();
  FAIL("no row for " << vm);
  return 0;
}

}  // namespace

TEST_SUITE("root/audit") {
  TEST_CASE("vmctl audit: a healthy system, then each rule broken on purpose and found, one at a time") {
    SystemEnv env;
    // Zone bridges carry no host address, link-local included (as LinkLocalAddressing=no).
    run_ok("for b in br-dmz br-lan; do ip link set dev $b addrgenmode none && ip address flush dev $b; done");
    env.define({.name = "web1", .mac = "52:54:00:00:20:01", .zone = "dmz"});
    env.define({.name = "web2", .mac = "52:54:00:00:20:02", .zone = "dmz"});
    auto started = env.vmctl({"start", "web1", "web2"});
    REQUIRE_MESSAGE(started.exit_code == 0, started.out << env.log());
    const std::vector<std::string> running = {"web1", "web2"};
    const std::string disk = env.root() + "/images/web1.img";
    const uint32_t uid1 = uid_of(env, "web1"), uid2 = uid_of(env, "web2");

    // Healthy: only the jail rule fails until the jail lands; every other rule passes.
    auto before = env.snapshot();
    Audit healthy = audit(env);
    CHECK_MESSAGE(snapshot_diff(before, env.snapshot()).empty(), snapshot_diff(before, env.snapshot()));
    CHECK_MESSAGE(failures(healthy) == healthy_failures(running), healthy.out);
    CHECK(healthy.exit_code == (kEmulatorsJailed ? 0 : 1));
    CHECK(healthy.report["skipped"] == 0);
    CHECK(finding(healthy, "web1", "seccomp")["evidence"] == "Seccomp 2 (filter)");
    CHECK(finding(healthy, "web1", "no-new-privs")["evidence"] == "NoNewPrivs 1");
    CHECK(finding(healthy, "web1", "own-uid")["evidence"] == "runs as uid " + std::to_string(uid1) + ", its own");
    CHECK(finding(healthy, "web1", "sandbox")["verdict"] == "pass");
    CHECK(finding(healthy, "web1", "anti-spoofing")["verdict"] == "pass");
    CHECK(finding(healthy, "web1", "bridge-learning")["verdict"] == "pass");
    CHECK(finding(healthy, "web1", "disk-owner")["verdict"] == "pass");
    if (!kEmulatorsJailed)
      CHECK(finding(healthy, "web1", "jailed-namespaces")["evidence"].get<std::string>().find(" namespace ") != std::string::npos);
    // Text output: the failures first, a summary, the same exit status.
    auto text = env.vmctl({"audit", "web1"});
    CHECK(text.exit_code == (kEmulatorsJailed ? 0 : 1));
    CHECK(text.out.find("audit: ") != std::string::npos);

    {  // disk-owner: mode 0644
      REQUIRE(::chmod(disk.c_str(), 0644) == 0);
      expect_only(env, "web1", "disk-owner", "'" + disk + "' has mode 0644, not 0600", running);
      REQUIRE(::chmod(disk.c_str(), 0600) == 0);
    }
    {  // disk-owner: another VM's uid
      REQUIRE(::chown(disk.c_str(), uid2, uid2) == 0);
      expect_only(env, "web1", "disk-owner",
                  "'" + disk + "' is owned by uid " + std::to_string(uid2) + ", VM 'web2''s, not the VM's uid " + std::to_string(uid1),
                  running);
      REQUIRE(::chown(disk.c_str(), uid1, uid1) == 0);
    }
    {  // bridge-learning: turned on
      run_ok("bridge link set dev web1-0 learning on");
      expect_only(env, "web1", "bridge-learning", "bridge port 'web1-0' learns MACs", running);
      run_ok("bridge link set dev web1-0 learning off");
    }
    {  // bridge-learning: the static entry of the VM's MAC removed
      run_ok("bridge fdb del 52:54:00:00:20:01 dev web1-0 master");
      expect_only(env, "web1", "bridge-learning",
                  "bridge port 'web1-0' has no static, sticky FDB entry for 52:54:00:00:20:01", running);
      run_ok("bridge fdb replace 52:54:00:00:20:01 dev web1-0 master static sticky");
    }
    {  // anti-spoofing: the chain flushed
      run_ok("nft flush chain bridge vmlaunch vm-web1");
      expect_only(env, "web1", "anti-spoofing",
                  "chain 'vm-web1' has no rule dropping frames from 'web1-0' whose source is not 52:54:00:00:20:01", running);
      // The fix it names: a restart installs the chain again.
      auto restarted = env.vmctl({"restart", "web1"});
      REQUIRE_MESSAGE(restarted.exit_code == 0, restarted.out);
      CHECK(failures(audit(env)) == healthy_failures(running));
    }
    {  // bridge-address: an address on the zone bridge
      run_ok("ip address add 192.0.2.1/24 dev br-dmz");
      expect_only(env, "", "bridge-address", "zone bridge 'br-dmz' has address 192.0.2.1/24", running);
      run_ok("ip address del 192.0.2.1/24 dev br-dmz");
    }
    {  // stale-taps: a tap of a VM uid that no VM runs
      uint32_t stray = env.config().uids.first + env.config().uids.count - 1;
      run_ok("ip tuntap add dev old-0 mode tap user " + std::to_string(stray));
      expect_only(env, "", "stale-taps", "tap 'old-0' of uid " + std::to_string(stray), running);
      run_ok("ip link delete old-0");
    }
    {  // stale-chains: a chain of no running VM
      run_ok("nft add chain bridge vmlaunch vm-ghost");
      expect_only(env, "", "stale-chains", "chain 'vm-ghost'", running);
      run_ok("nft delete chain bridge vmlaunch vm-ghost");
    }
    {  // stale-journals: a disk journal of a VM that does not run
      std::string journal = env.root() + "/state/disks/ghost.json";
      std::ofstream(journal) << "{}";
      expect_only(env, "", "stale-journals", "VM 'ghost' is not running and has a disk journal", running);
      std::filesystem::remove(journal);
    }
    {  // stale-udev-rules: a rule of a VM that does not run
      std::string rule = env.root() + "/udev/90-vmlaunch-ghost.rules";
      std::ofstream(rule) << "# vmlaunch: block devices of VM ghost\n";
      expect_only(env, "", "stale-udev-rules", "VM 'ghost' is not running and has a udev rule", running);
      std::filesystem::remove(rule);
    }
    {  // control-socket: its directory opened to everyone
      std::string run = env.root() + "/run";
      struct stat st {};
      REQUIRE(::stat(run.c_str(), &st) == 0);
      REQUIRE(::chmod(run.c_str(), 01777) == 0);
      expect_only(env, "", "control-socket",
                  "'" + run + "' is uid 0 mode 1777 (want root's, 1775): others could replace the control socket", running);
      REQUIRE(::chmod(run.c_str(), st.st_mode & 07777) == 0);
    }
    {  // nic-zone: the tap moved to another zone's bridge (a new port learns, too)
      run_ok("ip link set dev web1-0 master br-lan");
      Audit a = audit(env);
      std::set<std::string> want = healthy_failures(running);
      want.insert({"web1/nic-zone", "web1/bridge-learning"});
      CHECK_MESSAGE(failures(a) == want, a.out);
      CHECK(a.exit_code == 1);
      CHECK(finding(a, "web1", "nic-zone")["evidence"] == "tap 'web1-0' is on bridge 'br-lan', not 'br-dmz'");
      run_ok("ip link set dev web1-0 master br-dmz && bridge link set dev web1-0 learning off && "
             "bridge fdb replace 52:54:00:00:20:01 dev web1-0 master static sticky");
    }
    // Each repair brings the audit back to healthy.
    CHECK(failures(audit(env)) == healthy_failures(running));
  }

  TEST_CASE("vmctl audit: VNC rules, a VM that is not running, and names that are not VMs") {
    SystemEnv env;
    run_ok("for b in br-dmz br-lan; do ip link set dev $b addrgenmode none && ip address flush dev $b; done");
    env.define({.name = "vnc1", .mac = "52:54:00:00:21:01", .zone = "dmz",
                .devices = "    <graphics type='vnc' autoport='yes' passwd='123456789'/>\n"});
    auto before = env.snapshot();
    Audit a = audit(env, {"vnc1"});
    CHECK(snapshot_diff(before, env.snapshot()).empty());
    CHECK(a.exit_code == 1);
    CHECK_MESSAGE((failures(a) == std::set<std::string>{"vnc1/vnc-password"}), a.out);
    CHECK(finding(a, "vnc1", "vnc-listen")["evidence"] == "on the VM's Unix socket only (from its definition)");
    CHECK(finding(a, "vnc1", "vnc-password")["evidence"] == "the password has 9 characters; VNC uses only the first 8");
    for (const char* rule : {"own-uid", "seccomp", "disk-owner", "anti-spoofing", "bridge-learning", "jailed-namespaces"}) {
      CHECK(finding(a, "vnc1", rule)["verdict"] == "skip");
      CHECK(finding(a, "vnc1", rule)["evidence"] == "not running");
    }
    // --all is every defined VM.
    CHECK(failures(audit(env, {"--all"})) == failures(a));

    auto nosuch = env.vmctl({"audit", "nosuch"});
    CHECK(nosuch.exit_code == 1);
    CHECK_MESSAGE(nosuch.out.find("nosuch") != std::string::npos, nosuch.out);
    auto bad = env.vmctl({"audit", "../etc"});
    CHECK(bad.exit_code == 1);
    CHECK_MESSAGE(bad.out.find("../etc") != std::string::npos, bad.out);
    auto both = env.vmctl({"audit", "vnc1", "--all"});
    CHECK(both.exit_code == 2);
    CHECK(snapshot_diff(before, env.snapshot()).empty());
  }
}
