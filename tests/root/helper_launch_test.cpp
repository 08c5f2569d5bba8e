// vmlaunch-helper launch/cleanup against real kernel objects and real qemu processes.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <grp.h>
#include <net/if.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>

#include "helper/nft_filter.h"
#include "helper/uid_map.h"
#include "tests/support/helper_env.h"

using vl::test::DomainSpec;
using vl::test::HelperEnv;
using vl::test::owner_and_mode;

namespace {

// Tries to open `path` for reading as uid:gid in a child; returns the errno (0 = success).
int open_as(uid_t uid, gid_t gid, const std::string& path) {
  pid_t pid = ::fork();
  if (pid == 0) {
    if (::setgroups(0, nullptr) != 0 || ::setresgid(gid, gid, gid) != 0 || ::setresuid(uid, uid, uid) != 0) ::_exit(255);
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    ::_exit(fd >= 0 ? 0 : errno);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WEXITSTATUS(status);
}

}  // namespace

TEST_SUITE("root/helper_launch") {
  TEST_CASE("a launched VM runs as its own uid with no privileges, on its zone bridge, filtered") {
    HelperEnv env;
    env.define({.name = "web1", .mac = "52:54:00:00:00:01", .zone = "dmz"});
    env.define({.name = "web2", .mac = "52:54:00:00:00:02"});
    std::string disk1 = env.root() + "/images/web1.img";
    auto before = env.snapshot();

    auto vm1 = env.launch("web1");
    REQUIRE_MESSAGE(vm1.running(), vm1.log);
    auto status = vl::test::proc_status(vm1.pid);
    auto uid1 = vl::helper::read_uid_map(env.config()).value().at("web1");
    std::string u = std::to_string(uid1);
    CHECK(status["Uid"] == u + "\t" + u + "\t" + u + "\t" + u);
    CHECK(status["Gid"] == u + "\t" + u + "\t" + u + "\t" + u);
    CHECK(status["Groups"] == std::to_string(::getgrnam("kvm")->gr_gid));
    for (const char* cap : {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"}) CHECK(status[cap] == "0000000000000000");
    CHECK(status["NoNewPrivs"] == "1");
    CHECK(status["Seccomp"] == "2");

    std::string tap = vl::test::link_details("web1-0");
    CHECK(tap.find("master br-dmz") != std::string::npos);
    CHECK(tap.find("tun type tap") != std::string::npos);
    CHECK(tap.find("persist off user " + u) != std::string::npos);
    CHECK(tap.find("mtu 1500") != std::string::npos);
    CHECK(vl::helper::vm_filter_exists("web1").value());
    // The port learns nothing; the declared MAC is a static, sticky FDB entry on it.
    CHECK(vl::test::command_output("bridge -d link show dev web1-0").find("learning off") != std::string::npos);
    CHECK(vl::test::bridge_fdb("br-dmz").find("52:54:00:00:00:01 dev web1-0 sticky master br-dmz static") != std::string::npos);
    CHECK(owner_and_mode(disk1) == u + ":" + u + " 0600");
    // The uid has a name: a userdb record nss-systemd resolves, by name and by id.
    std::string record = vl::sys::read_file(env.root() + "/userdb/vm-web1.user", 4096).value();
    CHECK(record.find("\"userName\":\"vm-web1\",\"uid\":" + u) != std::string::npos);
    CHECK(std::filesystem::read_symlink(env.root() + "/userdb/" + u + ".user") == "vm-web1.user");
    CHECK(std::filesystem::exists(env.root() + "/userdb/vm-web1.group"));

    // QEMU answers on the root-bound monitor socket and runs the guest.
    auto qmp = vl::test::QmpConnection::connect(env.root() + "/run/vms/web1/qmp.sock");
    REQUIRE_MESSAGE(qmp.ok(), (qmp.ok() ? "" : qmp.error().message()) << "\n" << vl::sys::read_file(env.root() + "/helper.log", 1 << 16).value());
    REQUIRE(qmp->execute("qmp_capabilities").ok());
    REQUIRE(qmp->execute("cont").ok());
    CHECK((*qmp->execute("query-status"))["status"] == "running");

    auto vm2 = env.launch("web2");
    REQUIRE_MESSAGE(vm2.running(), vm2.log);
    auto uid2 = vl::helper::read_uid_map(env.config()).value().at("web2");
    CHECK(uid2 != uid1);
    CHECK(open_as(uid2, uid2, disk1) == EACCES);
    CHECK(open_as(uid1, uid1, disk1) == 0);

    // kill -9, then cleanup: everything is as before (the uid assignments are permanent).
    env.kill_vm(vm1.pid);
    env.kill_vm(vm2.pid);
    for (const char* vm : {"web1", "web2"}) {
      auto cleaned = env.helper({"cleanup", vm});
      CHECK_MESSAGE(WEXITSTATUS(cleaned.status) == 0, cleaned.log);
    }
    CHECK_MESSAGE(vl::test::snapshot_diff(before, env.snapshot()).empty(), vl::test::snapshot_diff(before, env.snapshot()));
    // The static FDB entries went with the ports.
    CHECK(vl::test::bridge_fdb("br-dmz").find("52:54:00:00:00:0") == std::string::npos);
    // The uids stay assigned: web1 gets the same one next time.
    auto again = env.launch("web1");
    REQUIRE_MESSAGE(again.running(), again.log);
    CHECK(vl::test::proc_status(again.pid)["Uid"].rfind(u + "\t", 0) == 0);
    env.kill_vm(again.pid);
    CHECK(WEXITSTATUS(env.helper({"cleanup", "web1"}).status) == 0);
  }

  TEST_CASE("cleanup is idempotent, safe when nothing exists, and refuses while the VM runs") {
    HelperEnv env;
    env.define({.name = "web1"});
    auto before = env.snapshot();
    CHECK(WEXITSTATUS(env.helper({"cleanup", "web1"}).status) == 0);
    CHECK_MESSAGE(vl::test::snapshot_diff(before, env.snapshot()).empty(), vl::test::snapshot_diff(before, env.snapshot()));
    auto vm = env.launch("web1");
    REQUIRE_MESSAGE(vm.running(), vm.log);
    auto refused = env.helper({"cleanup", "web1"});
    CHECK(WEXITSTATUS(refused.status) == 1);
    CHECK(refused.log.find("still running") != std::string::npos);
    CHECK(::if_nametoindex("web1-0") != 0);
    env.kill_vm(vm.pid);
    CHECK(WEXITSTATUS(env.helper({"cleanup", "web1"}).status) == 0);
    CHECK(WEXITSTATUS(env.helper({"cleanup", "web1"}).status) == 0);
    CHECK_MESSAGE(vl::test::snapshot_diff(before, env.snapshot()).empty(), vl::test::snapshot_diff(before, env.snapshot()));
  }

  TEST_CASE("a second launch of a running VM is refused without touching the first") {
    HelperEnv env;
    env.define({.name = "web1"});
    auto first = env.launch("web1");
    REQUIRE_MESSAGE(first.running(), first.log);
    auto second = env.launch("web1");
    CHECK_FALSE(second.running());
    CHECK(second.log.find("already running") != std::string::npos);
    CHECK(::if_nametoindex("web1-0") != 0);
    CHECK(vl::helper::vm_filter_exists("web1").value());
    CHECK(std::filesystem::exists(env.root() + "/run/vms/web1/state.json"));
    env.kill_vm(first.pid);
    CHECK(WEXITSTATUS(env.helper({"cleanup", "web1"}).status) == 0);
  }

  TEST_CASE("hostile input is refused with a clear error and changes nothing") {
    HelperEnv env;
    env.define({.name = "good", .mac = "52:54:00:00:00:09"});
    // A copy of /etc/shadow outside the storage root, and a symlink to it inside.
    std::filesystem::create_directory(env.root() + "/secret");
    std::filesystem::copy_file("/etc/shadow", env.root() + "/secret/shadow");
    ::chmod((env.root() + "/secret/shadow").c_str(), 0600);
    std::filesystem::create_symlink(env.root() + "/secret/shadow", env.root() + "/images/link.img");
    std::filesystem::create_directory(env.root() + "/images/sub");
    std::filesystem::create_symlink(env.root() + "/secret", env.root() + "/images/dirlink");
    std::filesystem::copy_file(env.root() + "/images/good.img", env.root() + "/images/hard.img");
    ::link((env.root() + "/images/hard.img").c_str(), (env.root() + "/images/hard2.img").c_str());

    struct Case {
      const char* what;
      DomainSpec spec;
      const char* expected;
    };
    const Case cases[] = {
        {"symlink to a file outside the roots", {.name = "evil", .disk = env.root() + "/images/link.img"}, "symlink"},
        {"symlinked directory", {.name = "evil", .disk = env.root() + "/images/dirlink/shadow"}, "symlink"},
        {"disk outside the roots", {.name = "evil", .disk = env.root() + "/secret/shadow"}, "not below any storage root"},
        {"hard-linked disk", {.name = "evil", .disk = env.root() + "/images/hard.img"}, "hard links"},
        {"bridge that is no zone", {.name = "evil", .bridge = "br-other"}, "is not the bridge of any zone"},
        {"zone mismatch", {.name = "evil", .bridge = "br-lan", .zone = "dmz"}, "belongs to zone 'lan'"},
        {"unknown zone", {.name = "evil", .zone = "partners"}, "zone 'partners'"},
        {"MAC of a running VM", {.name = "evil", .mac = "52:54:00:00:00:09"}, "in use by running VM 'good'"},
        {"multicast MAC", {.name = "evil", .mac = "01:00:5e:00:00:01"}, "multicast"},
    };
    auto good = env.launch("good");
    REQUIRE_MESSAGE(good.running(), good.log);
    auto before = env.snapshot();
    for (const auto& c : cases) {
      INFO(std::string(c.what));
      env.define(c.spec);
      auto before_case = env.snapshot();
      std::string plan;
      if (std::string(c.what) == "multicast MAC") {
        plan = env.write_plan("evil", "{}");  // the XML is refused before the plan is read
      } else {
        plan = env.write_plan("evil", env.plan_json("evil"));
      }
      auto r = env.helper({"launch", "evil", "--plan", plan});
      CHECK_FALSE(r.running());
      CHECK(WEXITSTATUS(r.status) == 1);
      CHECK_MESSAGE(r.log.find(c.expected) != std::string::npos, r.log);
      CHECK_MESSAGE(vl::test::snapshot_diff(before_case, env.snapshot()).empty(), vl::test::snapshot_diff(before_case, env.snapshot()));
      std::filesystem::remove(env.root() + "/domains/evil.xml");
    }
    CHECK(owner_and_mode(env.root() + "/secret/shadow") == "0:0 0600");

    // An emulator the configuration does not allow.
    {
      env.define({.name = "evil", .mac = "52:54:00:00:00:0a"});
      std::string plan = env.write_plan("evil", env.plan_json("evil"));
      auto before_case = env.snapshot();
      env.write_config("[emulators]\nallowed = [\"/usr/bin/qemu-system-i386\"]\n");
      auto r = env.helper({"launch", "evil", "--plan", plan});
      CHECK(WEXITSTATUS(r.status) == 1);
      CHECK_MESSAGE(r.log.find("emulator '/usr/bin/qemu-system-x86_64' is not allowed") != std::string::npos, r.log);
      env.write_config("");
      CHECK_MESSAGE(vl::test::snapshot_diff(before_case, env.snapshot()).empty(), vl::test::snapshot_diff(before_case, env.snapshot()));
      std::filesystem::remove(env.root() + "/domains/evil.xml");
    }

    // A bridge name that is a zone but not a bridge.
    {
      env.write_config("[zones.fake]\nbridge = \"notbr0\"\n");
      env.define({.name = "evil", .bridge = "notbr0"});
      auto r = env.launch("evil");
      CHECK(WEXITSTATUS(r.status) == 1);
      CHECK_MESSAGE(r.log.find("'notbr0' is not a bridge") != std::string::npos, r.log);
      std::filesystem::remove(env.root() + "/domains/evil.xml");
      env.write_config("");
    }

    // Bad names never reach the filesystem.
    for (const char* name : {"../x", "a/b", "UPPER", "abcdefghijklmn", ""}) {
      INFO(std::string(name));
      auto r = env.helper({"launch", name, "--plan", "/dev/null"});
      CHECK(WEXITSTATUS(r.status) == 1);
      CHECK(r.log.find("invalid VM name") != std::string::npos);
    }

    // Hostile plans: another binary, extra fds, fds for NICs the domain lacks, another VM.
    std::string good_plan = env.plan_json("good");
    auto hostile = [&](const std::string& from, const std::string& to) {
      std::string p = good_plan;
      auto at = p.find(from);
      REQUIRE(at != std::string::npos);
      return p.replace(at, from.size(), to);
    };
    const std::pair<std::string, const char*> plans[] = {
        {hostile("\"emulator\":\"/usr/bin/qemu-system-x86_64\"", "\"emulator\":\"/bin/sh\""), "argv[0] is not the emulator"},
        {hostile("\"argv\":[\"/usr/bin/qemu-system-x86_64\"", "\"argv\":[\"/bin/sh\""), "argv[0] is not the emulator"},
        {hostile("\"emulator\":\"/usr/bin/qemu-system-x86_64\",\"argv\":[\"/usr/bin/qemu-system-x86_64\"",
                 "\"emulator\":\"/bin/sh\",\"argv\":[\"/bin/sh\""), "plan runs '/bin/sh'"},
        {hostile("\"fds\":[", "\"fds\":[{\"fd\":9,\"kind\":\"tap\",\"nic\":3},"), "interface 3"},
        {hostile("\"fds\":[", "\"fds\":[{\"fd\":9,\"kind\":\"monitor\"},"), "duplicate fd slot"},
        {hostile("\"fds\":[", "\"fds\":[{\"fd\":9,\"kind\":\"disk\"},"), "unknown fd kind"},
        {hostile("\"vm\":\"good\"", "\"vm\":\"evil\""), "plan is for VM 'evil'"},
    };
    for (const auto& [plan, expected] : plans) {
      CAPTURE(plan);
      auto r = env.helper({"launch", "good", "--plan", env.write_plan("good", plan)});
      CHECK(WEXITSTATUS(r.status) == 1);
      CHECK_MESSAGE(r.log.find(expected) != std::string::npos, r.log);
    }
    std::filesystem::remove(env.root() + "/images/evil.img");  // made by the test itself
    CHECK_MESSAGE(vl::test::snapshot_diff(before, env.snapshot()).empty(), vl::test::snapshot_diff(before, env.snapshot()));
  }

#ifdef VMLAUNCH_FAULT_INJECTION
  constexpr bool kFaultInjection = true;
#else
  constexpr bool kFaultInjection = false;  // a release build has no VMLAUNCH_FAIL_AT
#endif

  TEST_CASE("a failure at any step leaves nothing behind" * doctest::skip(!kFaultInjection)) {
    HelperEnv env;
    // A block device too, so that the udev rule step has something to do.
    vl::test::run_ok("truncate -s 1M " + env.root() + "/loop.img");
    FILE* p = ::popen(("losetup --find --show " + env.root() + "/loop.img").c_str(), "r");
    char dev[64] = {};
    REQUIRE(std::fgets(dev, sizeof dev, p));
    ::pclose(p);
    std::string loop = dev;
    loop.pop_back();
    struct stat st {};
    REQUIRE(::stat(loop.c_str(), &st) == 0);
    std::string node = env.root() + "/images/data";
    REQUIRE(::mknod(node.c_str(), S_IFBLK | 0640, st.st_rdev) == 0);
    env.define({.name = "web1", .block_disk = node});
    auto before = env.snapshot();

    // disk-chmod fails inside the disk-owner step, after the first disk's owner has changed.
    for (const char* step : {"runtime-dir", "mac-claim", "disk-journal", "uid", "disk-owner", "disk-chmod", "udev-rule", "nft-filter", "tap",
                             "bridge-attach", "monitor-socket", "console-socket", "serial-log", "state-file", "exec", "jail"}) {
      INFO(std::string(step));
      auto r = env.launch("web1", {std::string("VMLAUNCH_FAIL_AT=") + step});
      CHECK_FALSE(r.running());
      CHECK(WEXITSTATUS(r.status) == 1);
      CHECK_MESSAGE(r.log.find(std::string("injected fault at step '") + step + "'") != std::string::npos, r.log);
      CHECK_MESSAGE(vl::test::snapshot_diff(before, env.snapshot()).empty(), vl::test::snapshot_diff(before, env.snapshot()));
    }
    // And without a fault it really launches, with the block device given to the VM.
    auto r = env.launch("web1");
    REQUIRE_MESSAGE(r.running(), r.log);
    auto uid = std::to_string(vl::helper::read_uid_map(env.config()).value().at("web1"));
    CHECK(owner_and_mode(node) == uid + ":" + uid + " 0600");
    std::string rule = vl::sys::read_file(env.root() + "/udev/90-vmlaunch-web1.rules", 4096).value();
    CHECK(rule.find("OWNER=\"" + uid + "\"") != std::string::npos);
    env.kill_vm(r.pid);
    CHECK(WEXITSTATUS(env.helper({"cleanup", "web1"}).status) == 0);
    CHECK_MESSAGE(vl::test::snapshot_diff(before, env.snapshot()).empty(), vl::test::snapshot_diff(before, env.snapshot()));
    vl::test::run_ok("losetup -d " + loop);
  }
}

TEST_SUITE("root/helper_report") {
  TEST_CASE("a failure after the privilege drop still reaches the report pipe, and cleanup undoes it") {
    HelperEnv env;
    // An emulator root can stat but the VM's uid cannot reach: execve fails after the drop.
    vl::test::define_with_unreachable_emulator(env, "web1");
    std::string plan = env.write_plan("web1", env.plan_json("web1"));
    vl::UniqueFd log(::open((env.root() + "/launch.log").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600));
    auto before = env.snapshot();

    int fds[2];
    REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
    vl::UniqueFd report_read(fds[0]), report_write(fds[1]);
    auto pid = vl::spawn({vl::test::build_path("VMLAUNCH_HELPER"),
                          {"vmlaunch-helper", "--config", env.config_path(), "launch", "web1", "--plan", plan,
                           "--report-fd", "3"},
                          {}, {{report_write.get(), 3}, {log.get(), 1}, {log.get(), 2}}});
    REQUIRE(pid.ok());
    report_write.reset();
    std::string report = vl::sys::read_all(report_read.get(), 4096).value();
    int status = vl::wait_for(*pid).value();
    CHECK(WEXITSTATUS(status) == 1);
    CAPTURE(report);
    CHECK(report.find("\"ok\":false") != std::string::npos);
    CHECK(report.find("after the privilege drop") != std::string::npos);
    CHECK(report.find("Permission denied") == std::string::npos);  // errno travels as a number
    CHECK(report.find("\"errno\":13") != std::string::npos);
    // The launch could not undo itself as the VM's uid; cleanup does.
    CHECK(WEXITSTATUS(env.helper({"cleanup", "web1"}).status) == 0);
    CHECK_MESSAGE(vl::test::snapshot_diff(before, env.snapshot()).empty(), vl::test::snapshot_diff(before, env.snapshot()));
  }

  TEST_CASE("a kernel the VM's user cannot read is refused before launch, naming it, and nothing changes") {
    HelperEnv env;
    // Where the argv policy accepts boot files (a directory only root can change), but the
    // kernel is root's alone (0600): QEMU, as the VM's uid, could not open it.
    vl::test::TempDir boot("/run");
    ::chmod(boot.path().c_str(), 0755);
    std::string kernel = boot.path() + "/vmlinuz", initrd = boot.path() + "/initramfs";
    std::ofstream(kernel) << "not a kernel, and nobody but root may read it\n";
    std::ofstream(initrd) << "initramfs\n";
    REQUIRE(::chmod(kernel.c_str(), 0600) == 0);
    REQUIRE(::chmod(initrd.c_str(), 0644) == 0);
    env.define({.name = "kern1", .mac = "52:54:00:00:00:41", .kernel = kernel, .initrd = initrd, .cmdline = "console=ttyS0"});
    vl::test::check_launch_refused(env, "kern1", "cannot read '" + kernel + "' (Permission denied)");
    // The fix names the group as the operator knows it.
    vl::test::check_launch_refused(env, "kern1", "or by group '" + env.config().vm_group + "' (gid ");

    // Readable, it passes this check (and boots, or fails, as QEMU decides).
    REQUIRE(::chmod(kernel.c_str(), 0644) == 0);
    auto r = env.launch("kern1");
    CHECK(r.log.find("cannot read '") == std::string::npos);
    if (r.running()) env.kill_vm(r.pid);
    (void)env.helper({"cleanup", "kern1"});
  }
}

