// What a VM's own uid can do with the one host object it holds, its tap fd: a compromised
// emulator runs as that uid, under the seccomp baseline, and the tun driver answers some
// ioctls to whoever holds the fd, without asking for CAP_NET_ADMIN. Real helper, qemu, taps
// and bridge in the test's own network namespace; the attacker is a child of the test that
// takes the emulator's tap fd, becomes the VM's uid and installs the baseline, as the
// emulator has.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <grp.h>
#include <nlohmann/json.hpp>
#include <thread>
#include <utility>

#include "helper/exec.h"
#include "helper/nft_filter.h"
#include "helper/uid_map.h"
#include "tests/support/helper_env.h"

using vl::test::HelperEnv;
using namespace std::chrono_literals;

namespace {

uid_t vm_uid(const HelperEnv& env, const std::string& vm) {
  return vl::helper::read_uid_map(env.config()).value().at(vm);
}

// The fd number at which process pid holds a /dev/net/tun file (its tap).
int tap_fd_of(pid_t pid) {
  for (const auto& e : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd")) {
    std::error_code ec;
    if (std::filesystem::read_symlink(e.path(), ec) == "/dev/net/tun") return std::stoi(e.path().filename().string());
  }
  FAIL("process " << pid << " holds no tap");
  return -1;
}

// In a forked child: a copy of the emulator's tap fd, taken while still root.
int take_tap(pid_t emulator) {
  vl::UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, emulator, 0)));
  int fd = static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd.get(), tap_fd_of(emulator), 0));
  if (fd < 0) ::_exit(121);
  return fd;
}

// In a forked child: become uid (and the gid of the same number), then confine yourself as
// the emulator is confined.
void become_emulator(uid_t uid) {
  if (::setgroups(0, nullptr) != 0 || ::setresgid(uid, uid, uid) != 0 || ::setresuid(uid, uid, uid) != 0) ::_exit(120);
  if (!vl::helper::install_seccomp_baseline()) ::_exit(122);
}

// Runs `attack` in a child that holds VM `emulator`'s tap as `uid` under the baseline; returns
// the errno of the attack (0: it succeeded).
int attack_as_vm(pid_t emulator, uid_t uid, const std::function<int(int tap)>& attack) {
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    int tap = take_tap(emulator);
    become_emulator(uid);
    ::_exit(attack(tap) == 0 ? 0 : (errno & 0x7f) | 0x80);
  }
  int status = vl::wait_for(pid).value();
  REQUIRE_MESSAGE(WIFEXITED(status), "status " << status);
  int code = WEXITSTATUS(status);
  REQUIRE_MESSAGE((code == 0 || code >= 0x80), "attacker failed to set up: exit " << code);
  return code == 0 ? 0 : code & 0x7f;
}

// The master of interface `name` (as `ip -j link` says), "" if none or no such interface.
std::string master_of(const std::string& name) {
  auto j = nlohmann::json::parse(vl::test::command_output("ip -j link show dev " + name + " 2>/dev/null"), nullptr, false);
  if (!j.is_array() || j.size() != 1) return "";
  return j[0].value("master", "");
}

bool filter_exists(const std::string& vm) {
  auto exists = vl::helper::vm_filter_exists(vm);
  REQUIRE_MESSAGE(exists.ok(), exists.error().message());
  return *exists;
}

}  // namespace

TEST_SUITE("root/vm_uid_attack") {
  TEST_CASE("a VM's uid cannot give its tap's MAC address to itself and take its neighbour's FDB entry") {
    HelperEnv env;
    env.define({.name = "web1", .mac = "52:54:00:00:00:01"});
    env.define({.name = "web2", .mac = "52:54:00:00:00:02"});
    auto web1 = env.launch("web1");
    REQUIRE_MESSAGE(web1.running(), web1.log);
    auto web2 = env.launch("web2");
    REQUIRE_MESSAGE(web2.running(), web2.log);
    const std::string neighbour = "52:54:00:00:00:02 dev web2-0 sticky master br-dmz static";
    REQUIRE(vl::test::bridge_fdb("br-dmz").find(neighbour) != std::string::npos);

    // SIOCSIFHWADDR on a tun fd sets the host side's address for the holder, capability or not.
    // The bridge then makes that address a local entry of web1's port, deleting any other
    // entry for it (br_fdb fdb_add_local): frames for web2 would go to the host instead.
    int err = attack_as_vm(web1.pid, vm_uid(env, "web1"), [](int tap) {
      ifreq ifr{};
      std::strcpy(ifr.ifr_name, "web1-0");
      ifr.ifr_hwaddr.sa_family = ARPHRD_ETHER;
      const unsigned char mac[6] = {0x52, 0x54, 0x00, 0x00, 0x00, 0x02};
      std::memcpy(ifr.ifr_hwaddr.sa_data, mac, sizeof mac);
      return ::ioctl(tap, SIOCSIFHWADDR, &ifr);
    });
    std::string fdb = vl::test::bridge_fdb("br-dmz");
    CHECK_MESSAGE(err == EPERM, "SIOCSIFHWADDR: " << (err ? std::string(std::strerror(err)) : std::string("succeeded")));
    CHECK_MESSAGE(fdb.find(neighbour) != std::string::npos, fdb);
    CHECK_MESSAGE(fdb.find("52:54:00:00:00:02 dev web1-0") == std::string::npos, fdb);
  }

  TEST_CASE("a VM's tap given to another uid (TUNSETOWNER) and kept open: cleanup keeps its filter while it is a port") {
    HelperEnv env;
    env.define({.name = "web1"});
    auto vm = env.launch("web1");
    REQUIRE_MESSAGE(vm.running(), vm.log);
    uid_t uid = vm_uid(env, "web1");
    constexpr uid_t kOther = 12345;  // another VM's uid, say, whose emulator is compromised too

    // The VM's uid hands its tap to kOther. If the baseline refuses, the attack ends here and the
    // tap stays the VM's: cleanup then removes it, which the checks below accept as well.
    int err = attack_as_vm(vm.pid, uid, [](int tap) { return ::ioctl(tap, TUNSETOWNER, static_cast<unsigned long>(kOther)); });
    INFO("TUNSETOWNER as the VM's uid: " << (err ? std::string(std::strerror(err)) : std::string("succeeded")));
    // A process of kOther holds the tap (passed to it over a Unix socket, in the real attack).
    int ready[2];
    REQUIRE(::pipe2(ready, O_CLOEXEC) == 0);
    vl::UniqueFd ready_read(ready[0]), ready_write(ready[1]);
    pid_t holder = ::fork();
    REQUIRE(holder >= 0);
    if (holder == 0) {
      (void)take_tap(vm.pid);
      become_emulator(kOther);
      if (::write(ready_write.get(), "x", 1) != 1) ::_exit(124);
      for (;;) ::pause();
    }
    struct Reap {
      pid_t pid;
      ~Reap() {
        if (pid <= 0) return;
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
      }
    } reap{holder};
    ready_write.reset();
    char c;
    REQUIRE(::read(ready_read.get(), &c, 1) == 1);

    env.kill_vm(vm.pid);
    auto cleaned = env.helper({"cleanup", "web1"});
    // The invariant: no port of a zone bridge called like a VM's tap is without the VM's filter.
    bool port = master_of("web1-0") == "br-dmz";
    CHECK_MESSAGE((!port || filter_exists("web1")), "web1-0 is a port of br-dmz without a filter\n" << cleaned.log);
    if (port) {
      CHECK(WEXITSTATUS(cleaned.status) == 1);
      CHECK_MESSAGE(cleaned.log.find("'web1-0' is still a port of bridge 'br-dmz'") != std::string::npos, cleaned.log);
    }
    // Once its holder is gone, the tap goes with it, and cleanup finishes.
    ::kill(holder, SIGKILL);
    ::waitpid(std::exchange(reap.pid, 0), nullptr, 0);
    for (auto deadline = std::chrono::steady_clock::now() + 10s;
         ::if_nametoindex("web1-0") != 0 && std::chrono::steady_clock::now() < deadline;)
      std::this_thread::sleep_for(10ms);
    auto again = env.helper({"cleanup", "web1"});
    CHECK_MESSAGE(WEXITSTATUS(again.status) == 0, again.log);
    CHECK(::if_nametoindex("web1-0") == 0);
    CHECK_FALSE(filter_exists("web1"));
  }
}
