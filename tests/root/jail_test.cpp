// The emulator's filesystem jail (helper/jail.h), probed from inside the emulator itself: QEMU
// opens each path as the VM's uid, in its mount namespace and under its Landlock rules, when
// the monitor asks it to add a block node on that path (blockdev-add, driver 'file').
#include <doctest/doctest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "tests/support/helper_env.h"
#include "tests/support/loop_device.h"

using vl::test::HelperEnv;

namespace {

// Asks the emulator behind `qmp` to open `path` read-only ("host_device" for a block device);
// "" if it could, else its error.
std::string open_in_emulator(vl::test::QmpConnection& qmp, const std::string& path, const char* driver = "file") {
  static int probes = 0;
  std::string node = "probe" + std::to_string(++probes);
  auto added = qmp.execute("blockdev-add", {{"driver", driver}, {"node-name", node}, {"filename", path},
                                            {"read-only", true}, {"locking", "off"}});
  if (!added) return added.error().message();
  CHECK(qmp.execute("blockdev-del", {{"node-name", node}}).ok());
  return "";
}

std::string mount_ns(pid_t pid) {
  return std::filesystem::read_symlink("/proc/" + std::to_string(pid) + "/ns/mnt").string();
}

// A world-readable file that belongs to no VM.
std::string world_readable(const std::string& path) {
  std::ofstream(path) << "not for any VM\n";
  REQUIRE(::chmod(path.c_str(), 0644) == 0);
  return path;
}

}  // namespace

TEST_SUITE("root/jail") {
  TEST_CASE("the emulator opens its own disks and nothing of other VMs or the host, even a file a mount adds") {
    HelperEnv env;
    // A read-only installer image (world-readable, as the operator leaves it) and a block
    // device node, besides the usual disk.
    std::string iso = env.root() + "/images/install.iso";
    std::filesystem::copy_file(vl::test::build_path("VMLAUNCH_GUEST_IMG"), iso);
    ::chmod(iso.c_str(), 0644);
    vl::test::LoopDevice loop(env.root() + "/loop.img");
    std::string node = env.root() + "/images/data";
    REQUIRE(::mknod(node.c_str(), S_IFBLK | 0640, loop.rdev()) == 0);
    env.define({.name = "web1", .mac = "52:54:00:00:00:01", .block_disk = node,
                .devices = "    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='" + iso +
                           "'/><target dev='hdc' bus='ide'/><readonly/></disk>\n"});
    env.define({.name = "web2", .mac = "52:54:00:00:00:02"});
    std::string stray = world_readable(env.root() + "/images/stray.img");
    char tmp_name[] = "/tmp/vmlaunch-jail-probe.XXXXXX";
    int tmp_fd = ::mkstemp(tmp_name);
    REQUIRE(tmp_fd >= 0);
    ::close(tmp_fd);
    std::string in_tmp = world_readable(tmp_name);
    auto before = env.snapshot();

    auto vm1 = env.launch("web1");
    REQUIRE_MESSAGE(vm1.running(), vm1.log);
    auto vm2 = env.launch("web2");
    REQUIRE_MESSAGE(vm2.running(), vm2.log);
    CHECK(mount_ns(vm1.pid) != mount_ns(::getpid()));
    CHECK(mount_ns(vm1.pid) != mount_ns(vm2.pid));
    auto qmp = vl::test::QmpConnection::connect(env.root() + "/run/vms/web1/qmp.sock");
    REQUIRE_MESSAGE(qmp.ok(), qmp.error().message());
    REQUIRE(qmp->execute("qmp_capabilities").ok());
    REQUIRE(qmp->execute("cont").ok());

    // What the VM owns opens: the probe can succeed.
    CHECK(open_in_emulator(*qmp, env.root() + "/images/web1.img") == "");
    CHECK(open_in_emulator(*qmp, iso) == "");
    CHECK(open_in_emulator(*qmp, node, "host_device") == "");
    // What it does not is not there at all: another VM's disk and runtime files, world-readable
    // files outside the set, the host's secrets.
    for (const std::string& path : {env.root() + "/images/web2.img", env.root() + "/run/vms/web2/state.json",
                                    env.root() + "/run/vms/web2/qmp.sock", stray, in_tmp, std::string("/etc/shadow"),
                                    std::string("/etc/passwd"), std::string("/dev/kvm"), std::string("/dev/net/tun")}) {
      CAPTURE(path);
      CHECK(open_in_emulator(*qmp, path).find("No such file or directory") != std::string::npos);
    }
    // Only the VM's own processes in its /proc.
    CHECK(open_in_emulator(*qmp, "/proc/" + std::to_string(vm2.pid) + "/environ").find("No such file or directory") !=
          std::string::npos);

    // A file that a mount makes visible inside the jail is still refused: Landlock holds the
    // emulator to the paths of its set, whatever the mount layer shows. Root adds the mount in
    // the emulator's namespace, over a directory the jail holds only to reach the disks.
    std::string inside = env.root() + "/images";
    REQUIRE(mount_ns(vm1.pid) != mount_ns(::getpid()));  // else the mount would be the host's
    vl::test::run_ok("nsenter -t " + std::to_string(vm1.pid) + " -m -- sh -c 'mount -t tmpfs probe " + inside +
                     " && echo not-for-any-vm > " + inside + "/planted && chmod 644 " + inside + "/planted'");
    CHECK(open_in_emulator(*qmp, inside + "/planted").find("Permission denied") != std::string::npos);

    env.kill_vm(vm1.pid);
    env.kill_vm(vm2.pid);
    for (const char* vm : {"web1", "web2"}) CHECK(WEXITSTATUS(env.helper({"cleanup", vm}).status) == 0);
    std::filesystem::remove(in_tmp);
    CHECK_MESSAGE(vl::test::snapshot_diff(before, env.snapshot()).empty(), vl::test::snapshot_diff(before, env.snapshot()));
    // The namespace died with the emulator: none of its mounts is left on the host.
    CHECK(vl::test::command_output("grep -c ' " + env.root() + "' /proc/self/mountinfo") == "0\n");
  }

  TEST_CASE("the jail holds no shell for the guest: the root is read-only, /dev minimal, and only /usr executable") {
    HelperEnv env;
    env.define({.name = "web1"});
    auto vm = env.launch("web1");
    REQUIRE_MESSAGE(vm.running(), vm.log);
    REQUIRE(mount_ns(vm.pid) != mount_ns(::getpid()));
    std::string in_jail = "nsenter -t " + std::to_string(vm.pid) + " -m -- ";
    // No /dev/kvm for a TCG guest, no /dev/net/tun (its taps are fds), no host terminals.
    CHECK(vl::test::command_output(in_jail + "ls /dev") == "full\nnull\nptmx\npts\nrandom\nurandom\nzero\n");
    CHECK(vl::test::command_output(in_jail + "ls /dev/pts") == "ptmx\n");
    // Of /etc, only the files QEMU reads.
    std::istringstream etc(vl::test::command_output(in_jail + "ls /etc"));
    for (std::string entry; std::getline(etc, entry);) {
      CAPTURE(entry);
      CHECK((entry == "ld.so.cache" || entry == "localtime" || entry == "gnutls"));
    }
    CHECK(vl::test::command_output(in_jail + "ls /etc").find("ld.so.cache") != std::string::npos);
    CHECK(vl::test::command_output(in_jail + "sh -c 'touch /new 2>&1 || echo refused'").find("refused") != std::string::npos);
    std::string mounts = vl::test::command_output(in_jail + "cat /proc/self/mounts");
    CAPTURE(mounts);
    CHECK(mounts.find(" / tmpfs ro,nosuid,nodev,noexec") != std::string::npos);
    CHECK(mounts.find(" /proc proc rw,nosuid,nodev,noexec") != std::string::npos);
    CHECK(mounts.find("hidepid=invisible,subset=pid") != std::string::npos);
    CHECK(mounts.find(env.root() + "/images/web1.img ") != std::string::npos);
    CHECK(mounts.find(env.root() + "/run/vms/web1 ") != std::string::npos);
    env.kill_vm(vm.pid);
    CHECK(WEXITSTATUS(env.helper({"cleanup", "web1"}).status) == 0);
  }

  TEST_CASE("a file the jail would have to mount inside another of its directories is refused, naming both, and nothing changes") {
    HelperEnv env;
    // A read-only image inside the runtime directory, which the jail mounts whole: its mount
    // point would be made in the host's directory.
    std::string inside = env.root() + "/run/vms/web1/install.iso";
    env.define({.name = "web1",
                .devices = "    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='" + inside +
                           "'/><target dev='hdc' bus='ide'/><readonly/></disk>\n"});
    vl::test::check_launch_refused(env, "web1", "jail: '" + inside + "' lies inside '" + env.root() + "/run/vms/web1'");
  }

  TEST_CASE("without Landlock in the kernel the VM starts in its mount namespace with a warning; a filter that refuses Landlock stops the launch") {
    HelperEnv env;
    env.define({.name = "web1"});
    // The helper run through a wrapper that makes Landlock's calls fail (HelperEnv runs
    // whatever VMLAUNCH_HELPER names, with the environment given here).
    std::string helper = vl::test::build_path("VMLAUNCH_HELPER");
    struct RestoreHelper {
      std::string path;
      ~RestoreHelper() { ::setenv("VMLAUNCH_HELPER", path.c_str(), 1); }  // for the cases after this one
    } restore{helper};
    REQUIRE(::setenv("VMLAUNCH_HELPER", vl::test::build_path("VMLAUNCH_LANDLOCK_BLOCKER").c_str(), 1) == 0);
    auto launch_with_errno = [&](int err) {
      return env.launch("web1", {"VMLAUNCH_REAL_HELPER=" + helper, "VMLAUNCH_LANDLOCK_ERRNO=" + std::to_string(err)});
    };

    auto before = env.snapshot();
    auto refused = launch_with_errno(EPERM);
    CHECK_FALSE(refused.running());
    CHECK(WEXITSTATUS(refused.status) == 1);
    CHECK_MESSAGE(refused.log.find("ask the kernel for its Landlock ABI (a seccomp filter around the helper must allow "
                                   "landlock_create_ruleset, landlock_add_rule and landlock_restrict_self): Operation not permitted") !=
                      std::string::npos,
                  refused.log);
    CHECK_MESSAGE(vl::test::snapshot_diff(before, env.snapshot()).empty(), vl::test::snapshot_diff(before, env.snapshot()));

    auto vm = launch_with_errno(ENOSYS);
    REQUIRE(::setenv("VMLAUNCH_HELPER", helper.c_str(), 1) == 0);  // the real one for cleanup
    REQUIRE_MESSAGE(vm.running(), vm.log);
    CHECK_MESSAGE(vm.log.find("the kernel has no Landlock: VM 'web1' runs in its mount namespace without Landlock's file rules") !=
                      std::string::npos,
                  vm.log);
    auto qmp = vl::test::QmpConnection::connect(env.root() + "/run/vms/web1/qmp.sock");
    REQUIRE_MESSAGE(qmp.ok(), qmp.error().message());
    REQUIRE(qmp->execute("qmp_capabilities").ok());
    // The mount namespace still hides the host; only what a mount adds is no longer refused.
    CHECK(open_in_emulator(*qmp, "/etc/shadow").find("No such file or directory") != std::string::npos);
    REQUIRE(mount_ns(vm.pid) != mount_ns(::getpid()));
    std::string inside = env.root() + "/images";
    vl::test::run_ok("nsenter -t " + std::to_string(vm.pid) + " -m -- sh -c 'mount -t tmpfs probe " + inside +
                     " && echo not-for-any-vm > " + inside + "/planted && chmod 644 " + inside + "/planted'");
    CHECK(open_in_emulator(*qmp, inside + "/planted") == "");
    env.kill_vm(vm.pid);
    CHECK(WEXITSTATUS(env.helper({"cleanup", "web1"}).status) == 0);
  }
}
