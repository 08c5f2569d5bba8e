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
#include <pty.h>
#include <termios.h>

#include <chrono>
#include <thread>
#include <vector>

#include "common/vm_state.h"
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

// Defines and starts VM `name` with a VNC server (on its socket; `extra`: more attributes of
// <graphics>).
void start_with_vnc(SystemEnv& env, const std::string& name, const std::string& mac, const std::string& extra = "") {
  vl::test::DomainSpec spec{.name = name, .mac = mac};
  spec.devices = "    <graphics type='vnc' listen='127.0.0.1'" + extra + "/>\n";
  env.define(spec);
  auto started = env.vmctl({"start", name});
  REQUIRE_MESSAGE(started.exit_code == 0, started.out << env.log());
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

  TEST_CASE("console: on a terminal, raw mode while attached and the terminal restored after Ctrl-], SIGTERM, SIGQUIT, and while stopped by SIGTSTP") {
    SystemEnv env;
    env.define({.name = "term1", .mac = "52:54:00:00:31:06"});
    REQUIRE(env.vmctl({"start", "term1"}).exit_code == 0);
    for (int signal : {0, SIGTERM, SIGQUIT, SIGTSTP}) {
      INFO(signal);
      int master = -1, slave = -1;
      REQUIRE(::openpty(&master, &slave, nullptr, nullptr, nullptr) == 0);
      vl::UniqueFd term(master), tty(slave);
      ::fcntl(term.get(), F_SETFD, FD_CLOEXEC);
      ::fcntl(tty.get(), F_SETFD, FD_CLOEXEC);
      termios before{};
      REQUIRE(::tcgetattr(tty.get(), &before) == 0);
      REQUIRE((before.c_lflag & (ICANON | ECHO)) == (ICANON | ECHO));
      auto pid = vl::spawn({vl::test::build_path("VMLAUNCH_VMCTL"), {"vmctl", "--config", env.config_path(), "console", "term1"},
                            {"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, {{tty.get(), 0}, {tty.get(), 1}, {tty.get(), 2}}});
      REQUIRE(pid.ok());
      // Attached: the terminal is raw (no echo, no line editing).
      std::string seen;
      auto wait_raw = [&] {
        auto deadline = std::chrono::steady_clock::now() + 60s;
        termios during{};
        while (std::chrono::steady_clock::now() < deadline) {
          pollfd p{term.get(), POLLIN, 0};
          if (::poll(&p, 1, 200) > 0) {
            char buf[4096];
            ssize_t n = ::read(term.get(), buf, sizeof buf);
            if (n > 0) seen.append(buf, static_cast<size_t>(n));
          }
          REQUIRE(::tcgetattr(tty.get(), &during) == 0);
          if (seen.find("escape character is ^]") != std::string::npos && !(during.c_lflag & (ICANON | ECHO))) break;
        }
        CHECK_MESSAGE(!(during.c_lflag & (ICANON | ECHO)), seen);
      };
      wait_raw();
      if (signal == SIGTSTP) {
        // Stopped, it leaves the terminal as it found it; continued, it is raw again.
        ::kill(*pid, SIGTSTP);
        int stopped = 0;
        pid_t seen_pid = 0;
        auto stop_deadline = std::chrono::steady_clock::now() + 30s;
        while ((seen_pid = ::waitpid(*pid, &stopped, WUNTRACED | WNOHANG)) == 0 && std::chrono::steady_clock::now() < stop_deadline)
          std::this_thread::sleep_for(50ms);
        REQUIRE_MESSAGE(seen_pid == *pid, "vmctl did not stop on SIGTSTP");
        CHECK(WIFSTOPPED(stopped));
        termios meanwhile{};
        REQUIRE(::tcgetattr(tty.get(), &meanwhile) == 0);
        CHECK(meanwhile.c_lflag == before.c_lflag);
        ::kill(*pid, SIGCONT);
        wait_raw();
      }
      if (signal == SIGTERM || signal == SIGQUIT) ::kill(*pid, signal);
      else REQUIRE(vl::sys::write_all(term.get(), "\x1d").ok());
      int status = vl::wait_for(*pid).value();
      CHECK(WIFEXITED(status));
      termios after{};
      REQUIRE(::tcgetattr(tty.get(), &after) == 0);
      CHECK(after.c_lflag == before.c_lflag);
      CHECK(after.c_iflag == before.c_iflag);
      CHECK(after.c_oflag == before.c_oflag);
    }
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
    start_with_vnc(env, "vnc1", "52:54:00:00:31:04", " passwd='secret1'");
    LiveVmctl vnc(env, {"vnc", "vnc1", "--listen", "127.0.0.1:0"});
    uint16_t port = vnc_port(vnc);
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

  // A stopped emulator accepts no connection; its VNC listener (backlog 1) queues what its
  // backlog holds, then a blocking connect would wait until the emulator runs again.
  TEST_CASE("vnc: a VM whose emulator is stopped gets viewers a clear error in time, and the daemon keeps answering") {
    SystemEnv env;
    start_with_vnc(env, "vnc2", "52:54:00:00:31:07");
    auto state = vl::read_vm_state_file(env.root() + "/run/vms/vnc2/state.json");
    REQUIRE(state.ok());
    pid_t emulator = state->pid;
    REQUIRE(::kill(emulator, SIGSTOP) == 0);
    struct Resume {
      pid_t pid;
      ~Resume() { ::kill(pid, SIGCONT); }
    } resume{emulator};
    LiveVmctl vnc(env, {"vnc", "vnc2", "--listen", "127.0.0.1:0"});
    uint16_t port = vnc_port(vnc);
    std::vector<vl::UniqueFd> viewers;
    for (int i = 0; i < 4; ++i) viewers.push_back(connect_tcp(port));
    // While a viewer waits for its channel, the daemon answers every other call at once.
    auto deadline = std::chrono::steady_clock::now() + 120s;
    // On its Unix socket a full backlog refuses at once; a connect the kernel queued instead waits
    // for the deadline. Either way the viewer hears why, in time.
    const std::string refused = "connect to the VNC server of VM 'vnc2' at '" + env.root() + "/run/vnc/vnc2/vnc.sock': ";
    auto told = [&] {
      const std::string& out = vnc.output();
      return out.find(refused + "it accepts no connection now (its emulator is stopped or busy)") != std::string::npos ||
             out.find(refused + "no answer within") != std::string::npos;
    };
    while (!told() && std::chrono::steady_clock::now() < deadline) {
      auto status = env.vmctl({"status", "vnc2"});
      REQUIRE_MESSAGE(status.exit_code == 0, status.out);
      vnc.wait_for(refused, 1s);
    }
    CHECK_MESSAGE(told(), vnc.output());

    // Running again, the emulator serves a new viewer.
    REQUIRE(::kill(emulator, SIGCONT) == 0);
    viewers.clear();
    deadline = std::chrono::steady_clock::now() + 120s;
    std::string banner;
    while (banner != "RFB 003.008\n" && std::chrono::steady_clock::now() < deadline) {
      vl::UniqueFd viewer = connect_tcp(port);
      banner = read_exactly(viewer.get(), 12, 30s);
    }
    CHECK(banner == "RFB 003.008\n");
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
