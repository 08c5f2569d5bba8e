// Consoles through the daemon, end to end with the real helper, daemon, vmctl and qemu: the
// serial log from the guest's first byte, and `vmctl vnc` forwarding a local port to QEMU's
// VNC server (the RFB banner, and with a password the VNC authentication challenge). The
// interactive console against a real Linux guest is root/guest_console_test.cpp.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <chrono>
#include <thread>

#include "tests/support/live_vmctl.h"

using vl::test::LiveVmctl;
using vl::test::SystemEnv;
using vl::test::log_shows;
using namespace std::chrono_literals;

namespace {

constexpr char kBanner[] = "vmlaunch test guest: hello from COM1";

std::string read_exactly(int fd, size_t n, std::chrono::seconds limit) {
  std::string out;
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (out.size() < n && std::chrono::steady_clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    (void)::poll(&p, 1, 200);
    char buf[256];
    ssize_t k = ::recv(fd, buf, std::min(sizeof buf, n - out.size()), MSG_DONTWAIT);
    if (k == 0) break;
    if (k > 0) out.append(buf, static_cast<size_t>(k));
  }
  return out;
}

vl::UniqueFd connect_tcp(uint16_t port) {
  vl::UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE_MESSAGE(::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0, std::strerror(errno));
  return fd;
}

// Starts `vmctl vnc NAME` on a free local port and returns the port it printed.
uint16_t vnc_port(LiveVmctl& vnc) {
  REQUIRE_MESSAGE(vnc.wait_for("; connect a VNC viewer", 60s), vnc.output());
  size_t at = vnc.output().find("127.0.0.1:");
  REQUIRE(at != std::string::npos);
  return static_cast<uint16_t>(std::stoi(vnc.output().substr(at + 10)));
}

}  // namespace

TEST_SUITE("root/console") {
  TEST_CASE("the serial log holds the guest's output from its first byte, root's and the daemon group's only") {
    SystemEnv env;
    env.define({.name = "log1", .mac = "52:54:00:00:31:01"});
    auto started = env.vmctl({"start", "log1"});
    REQUIRE_MESSAGE(started.exit_code == 0, started.out << env.log());
    // Nobody attached: the banner the guest printed at boot is in the log all the same.
    std::string log;
    CHECK_MESSAGE(log_shows(env, "log1", kBanner, 60s, log), log << env.log());

    std::string path = env.root() + "/log/log1.serial.log";
    struct stat st {};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    CHECK(st.st_uid == 0);
    CHECK(st.st_gid == ::getgrnam("nogroup")->gr_gid);  // the daemon's group (SystemEnv)
    CHECK((st.st_mode & 07777) == 0640);
    REQUIRE(::stat((env.root() + "/log").c_str(), &st) == 0);
    CHECK(st.st_uid == 0);
    CHECK((st.st_mode & 07777) == 0750);
    // The emulator's uid can neither write nor read it.
    auto info = env.vmctl({"status", "log1"});
    size_t at = info.out.find("uid:");
    REQUIRE(at != std::string::npos);
    std::string uid = std::to_string(std::stoul(info.out.substr(at + 4)));
    auto as_vm = vl::test::run_program("/usr/bin/setpriv", {"setpriv", "--reuid=" + uid, "--regid=" + uid, "--clear-groups",
                                                            "/bin/sh", "-c", "echo forged >> " + path + " || cat " + path});
    CHECK(as_vm.exit_code != 0);
    CHECK(vl::sys::read_file(path, 1 << 20).value().find("forged") == std::string::npos);

    // A second run: the first run's output moves to the previous part, still shown first.
    REQUIRE(env.vmctl({"stop", "log1", "--force"}).exit_code == 0);
    REQUIRE(env.vmctl({"start", "log1"}).exit_code == 0);
    auto deadline = std::chrono::steady_clock::now() + 60s;
    while (std::chrono::steady_clock::now() < deadline) {
      log = env.vmctl({"console", "log1", "--log"}).out;
      size_t first = log.find(kBanner);
      if (first != std::string::npos && log.find(kBanner, first + 1) != std::string::npos) break;
      std::this_thread::sleep_for(200ms);
    }
    size_t first = log.find(kBanner);
    CHECK_MESSAGE((first != std::string::npos && log.find(kBanner, first + 1) != std::string::npos), log);
    CHECK(std::filesystem::exists(path + ".1"));
  }

  TEST_CASE("console: a VM without a running emulator has no console; the log of an unknown VM is an error") {
    SystemEnv env;
    env.define({.name = "off1", .mac = "52:54:00:00:31:03"});
    auto attach = env.vmctl({"console", "off1"});
    CHECK(attach.exit_code == 1);
    CHECK_MESSAGE(attach.out.find("VM 'off1' has no serial console now") != std::string::npos, attach.out);
    auto log = env.vmctl({"console", "nosuch", "--log"});
    CHECK(log.exit_code == 1);
    CHECK_MESSAGE(log.out.find("no serial log of VM 'nosuch'") != std::string::npos, log.out);
    auto bad = env.vmctl({"console", "../etc", "--log"});
    CHECK(bad.exit_code == 1);
  }

  TEST_CASE("vnc: a local port reaches the VM's VNC server through the daemon: RFB banner and, with a password, its challenge") {
    SystemEnv env;
    vl::test::DomainSpec spec{.name = "vnc1", .mac = "52:54:00:00:31:04"};
    spec.devices = "    <graphics type='vnc' autoport='no' port='5931' listen='127.0.0.1' passwd='secret1'/>\n";
    env.define(spec);
    auto started = env.vmctl({"start", "vnc1"});
    REQUIRE_MESSAGE(started.exit_code == 0, started.out << env.log());
    LiveVmctl vnc(env, {"vnc", "vnc1", "--listen", "127.0.0.1:0"});
    uint16_t port = vnc_port(vnc);
    CHECK(port != 5931);
    for (int round = 0; round < 2; ++round) {  // each connection gets a channel of its own
      vl::UniqueFd viewer = connect_tcp(port);
      CHECK(read_exactly(viewer.get(), 12, 60s) == "RFB 003.008\n");
      REQUIRE(vl::sys::write_all(viewer.get(), "RFB 003.008\n").ok());
      std::string count = read_exactly(viewer.get(), 1, 60s);
      REQUIRE(count.size() == 1);
      std::string types = read_exactly(viewer.get(), static_cast<uint8_t>(count[0]), 60s);
      CHECK_MESSAGE(types == std::string(1, '\x02'), "security types offered: " << types.size());  // VNC authentication only
      REQUIRE(vl::sys::write_all(viewer.get(), std::string(1, '\x02')).ok());
      CHECK(read_exactly(viewer.get(), 16, 60s).size() == 16);  // the DES challenge
    }
    vnc.terminate();
    CHECK(vnc.wait_exit(60s) == 0);
  }

  TEST_CASE("vnc: a VM without VNC is refused with a clear message") {
    SystemEnv env;
    env.define({.name = "novnc", .mac = "52:54:00:00:31:05"});
    REQUIRE(env.vmctl({"start", "novnc"}).exit_code == 0);
    LiveVmctl vnc(env, {"vnc", "novnc"});
    uint16_t port = vnc_port(vnc);
    vl::UniqueFd viewer = connect_tcp(port);
    CHECK(vnc.wait_for("VM 'novnc' has no VNC display", 60s));
    CHECK(read_exactly(viewer.get(), 1, 10s).empty());  // closed, nothing forwarded
  }
}
