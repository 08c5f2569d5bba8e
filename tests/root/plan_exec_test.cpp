// Integration: a real domain XML, converted by real libvirt, executed under TCG with a real
// tap fd and a real monitor fd inside a network namespace the test creates.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>

#include "common/argv_policy.h"
#include "common/domain.h"
#include "common/zone_network.h"
#include "common/spawn.h"
#include "daemon/planner.h"
#include "tests/support/netns.h"
#include "tests/support/qmp.h"
#include "tests/support/temp_dir.h"

namespace {

vl::UniqueFd create_tap(const std::string& name) {
  vl::UniqueFd fd(::open("/dev/net/tun", O_RDWR | O_CLOEXEC));
  REQUIRE(fd.valid());
  ifreq ifr{};
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_TUN_EXCL;
  name.copy(ifr.ifr_name, IFNAMSIZ - 1);
  REQUIRE(::ioctl(fd.get(), TUNSETIFF, &ifr) == 0);
  return fd;
}

vl::UniqueFd listen_unix(const std::string& path) {
  vl::UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  path.copy(sa.sun_path, sizeof sa.sun_path - 1);
  REQUIRE(::bind(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
  REQUIRE(::listen(fd.get(), 4) == 0);
  return fd;
}

std::string domain_xml(const std::string& disk) {
  return R"(<domain type='qemu'>
  <name>web1</name>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file=')" + disk + R"('/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='bridge'>
      <mac address='52:54:00:12:34:56'/>
      <source bridge='br-test'/>
      <model type='virtio'/>
    </interface>
    <serial type='pty'/>
    <graphics type='vnc' autoport='yes' listen='127.0.0.1' passwd='secret12'/>
  </devices>
</domain>
)";
}

}  // namespace

TEST_SUITE("root/plan_exec") {
  TEST_CASE("a converted plan runs under TCG with real tap and monitor fds, and leaves nothing") {
    vl::test::TempDir tmp;
    std::string disk = tmp.path() + "/web 1,disk.img";
    std::ofstream(disk).close();
    std::filesystem::resize_file(disk, 1 << 20);

    vl::HostConfig config;
    config.cache_dir = tmp.path() + "/cache";
    config.runtime_dir = tmp.path() + "/run";
    std::string xml = domain_xml(disk);
    auto domain = vl::parse_domain(xml, "web1.xml");
    REQUIRE_MESSAGE(domain.ok(), domain.error().message());
    // Its VNC socket, where the helper would have made the directory (vnc_socket.h).
    vl::resolve_vnc(*domain, config);
    std::filesystem::create_directories(config.vnc_socket_dir(domain->name));
    vl::Planner planner(config);
    auto plan = planner.plan(*domain, xml);
    REQUIRE_MESSAGE(plan.ok(), plan.error().message());

    ino_t ns_inode = 0;
    {
      vl::test::ScopedNetns ns;
      ns_inode = ns.inode();
      std::string tap_name = domain->name.tap_name(0);
      std::string monitor_path = tmp.path() + "/monitor.sock";
      vl::UniqueFd monitor = listen_unix(monitor_path);
      vl::UniqueFd console = listen_unix(tmp.path() + "/console.sock");
      int log_pipe[2];
      REQUIRE(::pipe2(log_pipe, O_CLOEXEC) == 0);
      vl::UniqueFd serial_log(log_pipe[0]), serial_log_writer(log_pipe[1]);
      vl::UniqueFd log(::open((tmp.path() + "/qemu.log").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600));
      pid_t pid;
      {
        vl::UniqueFd tap = create_tap(tap_name);
        std::vector<vl::FdMapping> fds = {{log.get(), 1}, {log.get(), 2}};
        for (const vl::FdSlot& slot : plan->fds) {
          int fd = slot.kind == vl::FdSlot::Kind::kMonitor   ? monitor.get()
                   : slot.kind == vl::FdSlot::Kind::kSerial  ? console.get()
                   : slot.kind == vl::FdSlot::Kind::kSerialLog ? serial_log_writer.get()
                                                               : tap.get();
          fds.push_back({fd, slot.fd});
        }
        std::vector<std::string> argv = plan->argv;  // as the helper runs it: with its sandbox
        for (std::string& arg : vl::emulator_sandbox_args()) argv.push_back(std::move(arg));
        auto spawned = vl::spawn({plan->emulator, argv, vl::emulator_environment(), fds});
        REQUIRE_MESSAGE(spawned.ok(), spawned.error().message());
        pid = *spawned;
      }
      // qemu alone holds the tap now; the monitor socket stays ours only for connect().
      monitor.reset();
      console.reset();
      serial_log_writer.reset();

      auto qmp = vl::test::QmpConnection::connect(monitor_path);
      std::string qemu_log = vl::sys::read_file(tmp.path() + "/qemu.log", 1 << 16).value();
      REQUIRE_MESSAGE(qmp.ok(), (qmp.ok() ? std::string() : qmp.error().message() + "\n" + qemu_log));
      REQUIRE(qmp->execute("qmp_capabilities").ok());
      auto status = qmp->execute("query-status");
      REQUIRE(status.ok());
      CHECK((*status)["status"] == "prelaunch");
      REQUIRE(qmp->execute("set_password", {{"protocol", "vnc"}, {"password", "secret12"}}).ok());
      REQUIRE(qmp->execute("cont").ok());
      status = qmp->execute("query-status");
      REQUIRE(status.ok());
      CHECK((*status)["status"] == "running");
      CHECK((*status)["running"] == true);
      CHECK(::if_nametoindex(tap_name.c_str()) != 0);

      REQUIRE(qmp->execute("quit").ok());
      auto waited = vl::wait_for(pid);
      REQUIRE(waited.ok());
      CHECK(WIFEXITED(*waited));
      CHECK(WEXITSTATUS(*waited) == 0);
      // The tap was non-persistent: it went away with qemu's fd.
      CHECK(::if_nametoindex(tap_name.c_str()) == 0);
      std::filesystem::remove(monitor_path);
      std::filesystem::remove(tmp.path() + "/console.sock");
    }
    CHECK_FALSE(vl::test::netns_in_use(ns_inode));
    // Only what the test made itself is left in its directory: the disk, the log, the cache, and
    // the VNC socket's directory (what is in it is the helper's cleanup's business, not tested here).
    for (const auto& e : std::filesystem::directory_iterator(tmp.path())) {
      auto name = e.path().filename().string();
      CHECK_MESSAGE((name == "web 1,disk.img" || name == "qemu.log" || name == "cache" || name == "run"), name);
    }
  }
}
