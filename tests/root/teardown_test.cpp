// What the broker may signal and what cleanup may tear down, against the real helper binary,
// real taps, nftables rules and qemu processes in a network namespace of the test's own.
//
// The rules under test: a VM counts as running while any thread of its emulator runs; cleanup
// releases nothing while any process of the VM's uid lives, and then tears down in reverse
// launch order (processes, taps, rules, disks, runtime directory); root works below
// RUNTIME/vms only when root alone can change it; a tap is removed only if it is the VM's.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <optional>
#include <thread>

#include "common/broker_protocol.h"
#include "common/vm_state.h"
#include "helper/exec.h"
#include "helper/nft_filter.h"
#include "helper/uid_map.h"
#include "tests/support/helper_env.h"

using vl::test::DomainSpec;
using vl::test::HelperEnv;
using namespace std::chrono_literals;

namespace {

constexpr const char* kQemu = "/usr/bin/qemu-system-x86_64";
constexpr int kCarrierOff = 0;
const ifreq kNeighbourMac = [] {
  ifreq ifr{};
  ifr.ifr_hwaddr.sa_family = 1;  // ARPHRD_ETHER
  const unsigned char mac[6] = {0x52, 0x54, 0x00, 0x00, 0x00, 0x02};
  std::memcpy(ifr.ifr_hwaddr.sa_data, mac, sizeof mac);
  return ifr;
}();
#ifdef VMLAUNCH_FAULT_INJECTION
constexpr bool kFaultInjection = true;
#else
constexpr bool kFaultInjection = false;  // a release build has no VMLAUNCH_FAIL_AT
#endif

uid_t vm_uid(const HelperEnv& env, const std::string& vm) {
  return vl::helper::read_uid_map(env.config()).value().at(vm);
}

vl::UniqueFd pidfd_of(pid_t pid) { return vl::UniqueFd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0))); }

// A pidfd turns readable once every thread of the process has exited, reaped or not.
bool has_exited(int pidfd, std::chrono::milliseconds wait = 0ms) {
  pollfd p{pidfd, POLLIN, 0};
  return ::poll(&p, 1, static_cast<int>(wait.count())) == 1;
}

// The state letter of /proc/PID/stat ('R', 'S', 'Z', ...), or 0 if there is no such process.
char proc_state_letter(pid_t pid) {
  auto stat = vl::sys::read_file("/proc/" + std::to_string(pid) + "/stat", 4096);
  if (!stat) return 0;
  size_t close = stat->rfind(')');
  return close + 2 < stat->size() ? (*stat)[close + 2] : 0;
}

std::string owner_of(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return "missing";
  return std::to_string(st.st_uid) + ":" + std::to_string(st.st_gid);
}

bool link_exists(const std::string& name) { return ::if_nametoindex(name.c_str()) != 0; }

bool filter_exists(const std::string& vm) {
  auto exists = vl::helper::vm_filter_exists(vm);
  REQUIRE_MESSAGE(exists.ok(), exists.error().message());
  return *exists;
}

// Kills and reaps a child of the test when the test ends, however it ends.
struct ChildGuard {
  pid_t pid = 0;
  ~ChildGuard() {
    if (pid <= 0) return;
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
  }
  /// Reaps the child if it exits within `wait`, else kills it first (waitpid on a live child,
  /// or on a zombie leader whose threads run, would block the test forever). Returns its wait
  /// status, or nullopt if it had to be killed.
  std::optional<int> reap(std::chrono::milliseconds wait = 5s) {
    vl::UniqueFd fd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
    pollfd p{fd.get(), POLLIN, 0};
    bool exited = ::poll(&p, 1, static_cast<int>(wait.count())) == 1;
    if (!exited) ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(std::exchange(pid, 0), &status, 0);
    return exited ? std::optional<int>(status) : std::nullopt;
  }
};

bool killed_by(const std::optional<int>& status, int signal) {
  return status && WIFSIGNALED(*status) && WTERMSIG(*status) == signal;
}

// In a forked child: become uid (and the gid of the same number), nothing else.
void become(uid_t uid) {
  if (::setgroups(0, nullptr) != 0 || ::setresgid(uid, uid, uid) != 0 || ::setresuid(uid, uid, uid) != 0) ::_exit(120);
}

// A HelperEnv plus the root broker, which answers the daemon's uid ('nobody' here) only.
class BrokerEnv : public HelperEnv {
 public:
  BrokerEnv() {
    users_ = "[users]\ndaemon_user = \"nobody\"\ndaemon_group = \"nogroup\"\n" + vl::test::test_uid_range();
    write_config("");
    const passwd* nobody = ::getpwnam("nobody");
    REQUIRE(nobody);
    daemon_uid_ = nobody->pw_uid;
    log_.reset(::open((root() + "/broker.log").c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
    start_broker();
    for (int i = 0; i < 2000 && !std::filesystem::exists(config().helper_socket()); ++i) std::this_thread::sleep_for(5ms);
    REQUIRE_MESSAGE(std::filesystem::exists(config().helper_socket()), broker_log());
  }
  ~BrokerEnv() { stop_broker(); }

  pid_t start_broker() {
    auto pid = vl::spawn({vl::test::build_path("VMLAUNCH_HELPER"), {"vmlaunch-helper", "--config", config_path(), "serve"},
                          {}, {{log_.get(), 1}, {log_.get(), 2}}});
    REQUIRE_MESSAGE(pid.ok(), pid.error().message());
    return broker_ = *pid;
  }
  void stop_broker() {
    if (broker_ <= 0) return;
    ::kill(broker_, SIGTERM);
    (void)vl::wait_for(broker_);
    broker_ = 0;
  }
  pid_t broker() const { return broker_; }

  std::string broker_log() const {
    auto text = vl::sys::read_file(root() + "/broker.log", 1 << 20);
    return text ? *text : "";
  }

  /// Sends one request from the daemon's uid, as vmlaunchd would, and returns the reply.
  vl::BrokerReply request(const vl::BrokerRequest& request) {
    int fds[2];
    REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
    vl::UniqueFd reply_read(fds[0]), reply_write(fds[1]);
    std::string message = vl::encode_broker_request(request);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    config().helper_socket().copy(sa.sun_path, sizeof sa.sun_path - 1);
    pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      become(daemon_uid_);
      int s = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
      if (::connect(s, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || ::send(s, message.data(), message.size(), 0) < 0)
        ::_exit(121);
      char buf[vl::kMaxBrokerMessage];
      ssize_t n = ::recv(s, buf, sizeof buf, 0);
      if (n > 0 && ::write(reply_write.get(), buf, static_cast<size_t>(n)) != n) ::_exit(122);
      ::_exit(0);
    }
    reply_write.reset();
    std::string text = vl::sys::read_all(reply_read.get(), 1 << 16).value();
    (void)vl::wait_for(child);
    auto reply = vl::parse_broker_reply(text);
    REQUIRE_MESSAGE(reply.ok(), "no reply from the broker: '" << text << "'\n" << broker_log());
    return *reply;
  }

 private:
  vl::UniqueFd log_;
  uid_t daemon_uid_ = 0;
  pid_t broker_ = 0;
};

// Installs the stand-in emulator (tests/support/zombie_emulator.cpp) where check_emulator
// accepts it: root-owned, 0755, reachable by VM uids.
std::string install_zombie_emulator(const HelperEnv& env) {
  std::string path = env.root() + "/zombie-emulator";
  std::filesystem::copy_file(vl::test::build_path("VMLAUNCH_ZOMBIE_EMULATOR"), path);
  REQUIRE(::chmod(path.c_str(), 0755) == 0);
  return path;
}

// Defines VM `spec` with `emulator` in place of qemu and writes a plan for it: qemu's own plan
// with the emulator's path, since libvirt probes the emulator it converts for. Returns the path.
std::string plan_with_emulator(HelperEnv& env, DomainSpec spec, const std::string& emulator) {
  env.define(spec);
  std::string plan = env.plan_json(spec.name);
  for (size_t at; (at = plan.find(kQemu)) != std::string::npos;) plan.replace(at, std::strlen(kQemu), emulator);
  spec.emulator = emulator;
  env.define(spec);
  return env.write_plan(spec.name, plan);
}

// Runs `vmlaunch-helper launch NAME --plan PLAN` and waits until the helper has become `emulator`.
pid_t launch_as(HelperEnv& env, const std::string& name, const std::string& plan, const std::string& emulator) {
  std::string log_path = env.root() + "/launch.log";
  vl::UniqueFd log(::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  auto pid = vl::spawn({vl::test::build_path("VMLAUNCH_HELPER"),
                        {"vmlaunch-helper", "--config", env.config_path(), "launch", name, "--plan", plan},
                        {}, {{log.get(), 1}, {log.get(), 2}}});
  REQUIRE(pid.ok());
  // Once the main thread has exited, /proc/PID/exe is unreadable: ask the threads.
  auto runs_emulator = [&] {
    std::error_code ec;
    for (const auto& task : std::filesystem::directory_iterator("/proc/" + std::to_string(*pid) + "/task", ec))
      if (std::filesystem::read_symlink(task.path() / "exe", ec) == emulator) return true;
    return false;
  };
  for (int i = 0; i < 6000; ++i) {
    if (std::filesystem::exists(env.root() + "/run/vms/" + name + "/state.json") && runs_emulator()) return *pid;
    if (int status = 0; ::waitpid(*pid, &status, WNOHANG) == *pid) break;
    std::this_thread::sleep_for(10ms);
  }
  FAIL("the helper did not become " << emulator << ":\n" << vl::sys::read_file(log_path, 1 << 16).value());
  return -1;
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

// Runs `body` in a forked child under the baseline filter; returns the child's wait status.
// The body returns a description of the first check that failed, or "" (exit 0).
int under_baseline(const std::function<std::string()>& body, std::string& failure) {
  int fds[2];
  REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
  vl::UniqueFd out_read(fds[0]), out_write(fds[1]);
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    rlimit no_core{0, 0};
    ::setrlimit(RLIMIT_CORE, &no_core);
    if (auto r = vl::helper::install_seccomp_baseline(); !r) {
      std::string m = "install: " + r.error().message();
      (void)!::write(out_write.get(), m.data(), m.size());
      ::_exit(1);
    }
    std::string m = body();
    (void)!::write(out_write.get(), m.data(), m.size());
    ::_exit(m.empty() ? 0 : 1);
  }
  out_write.reset();
  failure = vl::sys::read_all(out_read.get(), 4096).value();
  return vl::wait_for(pid).value();
}

// "" if the call failed with `expected`, else what happened.
std::string expect_errno(const char* what, long rc, int expected) {
  if (rc >= 0) return std::string(what) + " succeeded";
  if (errno != expected) return std::string(what) + ": " + std::strerror(errno);
  return "";
}

}  // namespace

TEST_SUITE("root/teardown") {
  TEST_CASE("an emulator whose main thread exited still runs: kill reaches it, cleanup releases nothing until it is gone") {
    BrokerEnv env;
    std::string emulator = install_zombie_emulator(env);
    env.write_config("[emulators]\nallowed = [\"" + std::string(kQemu) + "\", \"" + emulator + "\"]\n");
    std::string plan = plan_with_emulator(env, {.name = "web1"}, emulator);
    auto before = env.snapshot();
    ChildGuard vm{launch_as(env, "web1", plan, emulator)};
    vl::UniqueFd pidfd = pidfd_of(vm.pid);
    REQUIRE(pidfd.valid());
    // The leader is a zombie in /proc, but the process runs (its other thread does).
    for (int i = 0; i < 500 && proc_state_letter(vm.pid) != 'Z'; ++i) std::this_thread::sleep_for(10ms);
    REQUIRE(proc_state_letter(vm.pid) == 'Z');
    REQUIRE_FALSE(has_exited(pidfd.get()));
    std::string uid = std::to_string(vm_uid(env, "web1"));
    std::string disk = env.root() + "/images/web1.img";

    auto released = [&] {
      std::string what;
      if (!link_exists("web1-0")) what += " tap";
      if (!filter_exists("web1")) what += " filter";
      if (owner_of(disk) != uid + ":" + uid) what += " disk";
      if (!std::filesystem::exists(env.root() + "/run/vms/web1/state.json")) what += " state";
      return what;
    };
    REQUIRE(released().empty());
    CHECK(vl::process_matches(vm.pid, vl::process_start_time(vm.pid).value()));

    // Cleanup refuses: the recorded emulator is alive. Nothing is released.
    auto refused = env.helper({"cleanup", "web1"});
    CHECK(WEXITSTATUS(refused.status) == 1);
    CHECK_MESSAGE(refused.log.find("still running") != std::string::npos, refused.log);
    CHECK_FALSE(has_exited(pidfd.get()));
    CHECK_MESSAGE(released().empty(), "released while the emulator runs:" << released());

    // The broker's kill reaches it, and answers once it is gone.
    auto killed = env.request({vl::BrokerOp::kKill, vl::VmName::parse("web1").value(), SIGKILL});
    CHECK_MESSAGE(killed.ok, killed.error.message() << "\n" << env.broker_log());
    CHECK(has_exited(pidfd.get(), 5s));

    // Not reaped yet, so still a zombie in /proc: it counts as gone, and cleanup converges.
    CHECK(proc_state_letter(vm.pid) == 'Z');
    auto cleaned = env.helper({"cleanup", "web1"});
    CHECK_MESSAGE(WEXITSTATUS(cleaned.status) == 0, cleaned.log);
    CHECK_FALSE(link_exists("web1-0"));
    CHECK_FALSE(filter_exists("web1"));
    CHECK(owner_of(disk) == "0:0");
    CHECK(killed_by(vm.reap(), SIGKILL));
    auto after = env.snapshot();
    after.erase(env.root() + "/launch.log");
    CHECK_MESSAGE(vl::test::snapshot_diff(before, after).empty(), vl::test::snapshot_diff(before, after));
  }

  TEST_CASE("a tap kept open by another process of the VM's uid: cleanup kills it before releasing anything") {
    HelperEnv env;
    env.define({.name = "web1"});
    auto before = env.snapshot();
    // The emulator must not inherit the launcher's working directory.
    std::string cwd = std::filesystem::current_path().string();
    REQUIRE(::chdir(env.root().c_str()) == 0);
    auto vm = env.launch("web1");
    REQUIRE(::chdir(cwd.c_str()) == 0);
    REQUIRE_MESSAGE(vm.running(), vm.log);
    CHECK(std::filesystem::read_symlink("/proc/" + std::to_string(vm.pid) + "/cwd") == "/");
    uid_t uid = vm_uid(env, "web1");
    int tap_fd = tap_fd_of(vm.pid);

    // Orphans are reparented to the test (PID 1 here never reaps them): they stay zombies
    // until the end of the test, which cleanup must count as gone.
    struct Subreaper {
      Subreaper() { REQUIRE(::prctl(PR_SET_CHILD_SUBREAPER, 1) == 0); }
      ~Subreaper() { ::prctl(PR_SET_CHILD_SUBREAPER, 0); }
    } subreaper;
    int ready[2];
    REQUIRE(::pipe2(ready, O_CLOEXEC) == 0);
    vl::UniqueFd ready_read(ready[0]), ready_write(ready[1]);
    // A process of the VM's uid holding a copy of the tap fd, and a child of it doing the same.
    ChildGuard holder{::fork()};
    REQUIRE(holder.pid >= 0);
    if (holder.pid == 0) {
      vl::UniqueFd qemu(static_cast<int>(::syscall(SYS_pidfd_open, vm.pid, 0)));
      int tap = static_cast<int>(::syscall(SYS_pidfd_getfd, qemu.get(), tap_fd, 0));
      // Persistent, so that the tap goes only when cleanup removes it (a plain one vanishes
      // as its last holder exits): what an emulator could do before the seccomp baseline
      // denied TUNSETPERSIST.
      if (tap < 0 || ::ioctl(tap, TUNSETPERSIST, 1) != 0) ::_exit(123);
      become(uid);
      pid_t grandchild = ::fork();
      if (grandchild == 0) {
        for (;;) ::pause();
      }
      if (::write(ready_write.get(), &grandchild, sizeof grandchild) != sizeof grandchild) ::_exit(124);
      for (;;) ::pause();
    }
    ready_write.reset();
    pid_t grandchild = 0;
    REQUIRE(::read(ready_read.get(), &grandchild, sizeof grandchild) == sizeof grandchild);
    ChildGuard grandchild_guard{grandchild};
    vl::UniqueFd holder_fd = pidfd_of(holder.pid), grandchild_fd = pidfd_of(grandchild);
    CHECK(vl::test::proc_status(grandchild)["Uid"] == std::to_string(uid) + "\t" + std::to_string(uid) + "\t" +
                                                       std::to_string(uid) + "\t" + std::to_string(uid));

    env.kill_vm(vm.pid);
    REQUIRE(link_exists("web1-0"));  // the holders keep it

    // Watch cleanup: a tap or filter gone while a holder still runs is the bug. (Read the
    // tap and filter first, then liveness: the opposite order would see a holder alive just
    // before it died and the tap gone just after, which is the correct order of events.)
    std::atomic<bool> stop{false};
    std::string violation;
    std::thread watcher([&] {
      while (!stop) {
        bool tap = link_exists("web1-0");
        auto filter = vl::helper::vm_filter_exists("web1");
        bool alive = !has_exited(holder_fd.get()) || !has_exited(grandchild_fd.get());
        if (alive && (!tap || (filter.ok() && !*filter)) && violation.empty())
          violation = std::string(tap ? "" : "tap ") + (filter.ok() && !*filter ? "filter " : "") + "released while a holder runs";
        std::this_thread::sleep_for(1ms);
      }
    });
    auto cleaned = env.helper({"cleanup", "web1"});
    stop = true;
    watcher.join();
    CHECK_MESSAGE(WEXITSTATUS(cleaned.status) == 0, cleaned.log);
    CHECK_MESSAGE(violation.empty(), violation);
    CHECK(has_exited(holder_fd.get()));
    CHECK(has_exited(grandchild_fd.get()));
    CHECK_FALSE(link_exists("web1-0"));
    CHECK_FALSE(filter_exists("web1"));
    CHECK(killed_by(holder.reap(0ms), SIGKILL));
    CHECK(killed_by(grandchild_guard.reap(0ms), SIGKILL));
    CHECK_MESSAGE(vl::test::snapshot_diff(before, env.snapshot()).empty(), vl::test::snapshot_diff(before, env.snapshot()));
  }

  TEST_CASE("cleanup releases nothing if it cannot end the VM's processes, and no filter while a tap may remain" *
            doctest::skip(!kFaultInjection)) {
    HelperEnv env;
    env.define({.name = "web1"});
    auto before = env.snapshot();
    auto vm = env.launch("web1");
    REQUIRE_MESSAGE(vm.running(), vm.log);
    std::string uid = std::to_string(vm_uid(env, "web1"));
    std::string disk = env.root() + "/images/web1.img";
    env.kill_vm(vm.pid);
    // Processes, taps, filter: in this order, each failure stops everything after it.
    for (const char* step : {"kill-processes", "remove-taps", "remove-filter"}) {
      INFO(std::string(step));
      auto r = env.helper({"cleanup", "web1"}, {std::string("VMLAUNCH_FAIL_AT=") + step});
      CHECK(WEXITSTATUS(r.status) == 1);
      CHECK_MESSAGE(r.log.find(std::string("cleanup stopped at step '") + step + "'") != std::string::npos, r.log);
      CHECK(filter_exists("web1"));
      CHECK(owner_of(disk) == uid + ":" + uid);
      CHECK(std::filesystem::exists(env.root() + "/run/vms/web1/state.json"));
    }
    // The rest needs only the processes gone: a failure there is reported, the others done.
    auto r = env.helper({"cleanup", "web1"}, {"VMLAUNCH_FAIL_AT=restore-disks"});
    CHECK(WEXITSTATUS(r.status) == 1);
    CHECK_MESSAGE(r.log.find("injected fault at step 'restore-disks'") != std::string::npos, r.log);
    CHECK_FALSE(filter_exists("web1"));
    CHECK(owner_of(disk) == uid + ":" + uid);
    CHECK_FALSE(std::filesystem::exists(env.root() + "/run/vms/web1"));
    // The journal keeps the VM known: running cleanup again finishes the job.
    auto cleaned = env.helper({"cleanup", "web1"});
    CHECK_MESSAGE(WEXITSTATUS(cleaned.status) == 0, cleaned.log);
    CHECK_MESSAGE(vl::test::snapshot_diff(before, env.snapshot()).empty(), vl::test::snapshot_diff(before, env.snapshot()));
  }

  TEST_CASE("a vms/ directory the daemon could change, or a symlinked vms/NAME, is refused; nothing outside is touched") {
    BrokerEnv env;
    env.define({.name = "web1"});
    const vl::VmName web1 = vl::VmName::parse("web1").value();
    // A root process a forged state file points at, and files a forged directory holds.
    auto victim = vl::spawn({"/bin/sleep", {"sleep", "1000"}, {}, {}});
    REQUIRE(victim.ok());
    ChildGuard victim_guard{*victim};
    vl::UniqueFd victim_fd = pidfd_of(*victim);
    vl::VmState forged;
    forged.vm = "web1";
    forged.pid = *victim;
    forged.start_time = vl::process_start_time(*victim).value();
    forged.uid = 0;
    forged.emulator = kQemu;
    forged.taps = {"web1-0"};
    forged.macs = {"52:54:00:00:00:01"};
    std::string outside = env.root() + "/outside";
    std::string vms = env.root() + "/run/vms";
    auto forge = [&](const std::string& dir, pid_t pid) {
      std::filesystem::create_directories(dir);
      forged.pid = pid;
      std::ofstream(dir + "/state.json") << vl::vm_state_to_json(forged);
      std::ofstream(dir + "/qmp.sock") << "precious\n";
    };
    pid_t dead = 0;  // a pid that is certainly not running: a reaped child of the test
    {
      auto p = vl::spawn({"/bin/true", {"true"}, {}, {}});
      REQUIRE(p.ok());
      (void)vl::wait_for(*p);
      dead = *p;
    }

    auto check_refused = [&](const std::string& forged_dir, const char* expected) {
      forge(forged_dir, *victim);
      auto reply = env.request({vl::BrokerOp::kKill, web1, SIGKILL});
      CHECK_FALSE(reply.ok);
      CHECK_MESSAGE(reply.error.message().find(expected) != std::string::npos, reply.error.message());
      CHECK_FALSE(has_exited(victim_fd.get(), 100ms));
      // Forged with a dead pid, so that nothing seems to run: cleanup still touches nothing.
      forge(forged_dir, dead);
      auto cleaned = env.helper({"cleanup", "web1"});
      CHECK(WEXITSTATUS(cleaned.status) == 1);
      CHECK_MESSAGE(cleaned.log.find(expected) != std::string::npos, cleaned.log);
      CHECK(std::filesystem::exists(forged_dir + "/state.json"));
      CHECK(std::filesystem::exists(forged_dir + "/qmp.sock"));
      auto launched = env.launch("web1");
      CHECK_FALSE(launched.running());
      CHECK(WEXITSTATUS(launched.status) == 1);
    };

    SUBCASE("vms/NAME is a symlink to a directory elsewhere") {
      std::filesystem::create_directory_symlink(outside, vms + "/web1");
      check_refused(outside, "vms/web1");
    }
    SUBCASE("vms/ belongs to the daemon's uid") {
      REQUIRE(::chown(vms.c_str(), 65534, 65534) == 0);
      std::filesystem::create_directory(vms + "/web1");
      REQUIRE(::chown((vms + "/web1").c_str(), 65534, 65534) == 0);
      check_refused(vms + "/web1", "vms");
    }
    SUBCASE("vms/ is writable by the daemon's group") {
      REQUIRE(::chmod(vms.c_str(), 0775) == 0);
      check_refused(vms + "/web1", "vms");
      // And the broker refuses to start at all.
      env.stop_broker();
      pid_t broker = env.start_broker();
      vl::UniqueFd broker_fd = pidfd_of(broker);
      CHECK_MESSAGE(has_exited(broker_fd.get(), 10s), env.broker_log());
      CHECK(env.broker_log().find("vms") != std::string::npos);
    }
    CHECK_FALSE(has_exited(victim_fd.get()));
  }

  TEST_CASE("cleanup leaves alone interfaces named like a VM's taps that it cannot prove are the VM's") {
    HelperEnv env;
    // No domain, runtime directory or disk journal: cleanup has nothing to do with these names.
    vl::test::run_ok("ip tuntap add dev vpn-0 mode tap user 12345");
    vl::test::run_ok("ip tuntap add dev web1-0 mode tap");
    for (const char* name : {"vpn", "web1"}) {
      auto r = env.helper({"cleanup", name});
      CHECK_MESSAGE(WEXITSTATUS(r.status) == 0, r.log);
    }
    CHECK(link_exists("vpn-0"));
    CHECK(link_exists("web1-0"));
    vl::test::run_ok("ip link del web1-0");

    // A VM that ran: after it is gone, another uid's tap took its name, and a tap of nobody's,
    // one of its own uid and something that is no tap sit beside it. Only the VM's own goes.
    env.define({.name = "web1"});
    auto vm = env.launch("web1");
    REQUIRE_MESSAGE(vm.running(), vm.log);
    std::string uid = std::to_string(vm_uid(env, "web1"));
    env.kill_vm(vm.pid);
    vl::test::run_ok("ip tuntap add dev web1-0 mode tap user 12345");
    vl::test::run_ok("ip tuntap add dev web1-1 mode tap");
    vl::test::run_ok("ip tuntap add dev web1-2 mode tap user " + uid);
    vl::test::run_ok("ip link add web1-3 type veth peer name web1-3p");
    auto r = env.helper({"cleanup", "web1"});
    CHECK_MESSAGE(WEXITSTATUS(r.status) == 0, r.log);
    CHECK(link_exists("web1-0"));
    CHECK(link_exists("web1-1"));
    CHECK_FALSE(link_exists("web1-2"));
    CHECK(link_exists("web1-3"));
    CHECK(link_exists("vpn-0"));
    CHECK_MESSAGE(r.log.find("'web1-0'") != std::string::npos, r.log);  // warned about, by name
    CHECK_FALSE(filter_exists("web1"));
    CHECK_FALSE(std::filesystem::exists(env.root() + "/run/vms/web1"));
  }
}

TEST_SUITE("root/seccomp") {
  TEST_CASE("the baseline refuses the tap's owner, MAC, link and persistence, io_uring and socket families other than unix and IP") {
    vl::test::ScopedNetns ns;
    std::string failure;
    int status = under_baseline([] {
      vl::UniqueFd tun(::open("/dev/net/tun", O_RDWR | O_CLOEXEC));
      ifreq ifr{};
      ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
      std::strcpy(ifr.ifr_name, "sc0");
      if (::ioctl(tun.get(), TUNSETIFF, &ifr) != 0) return std::string("TUNSETIFF failed");  // root may still create
      for (std::string r : {
               expect_errno("TUNSETPERSIST", ::ioctl(tun.get(), TUNSETPERSIST, 1), EPERM),
               // The kernel truncates the request to 32 bits: the filter must compare those.
               expect_errno("TUNSETPERSIST with high bits", ::syscall(SYS_ioctl, tun.get(), (1UL << 32) | TUNSETPERSIST, 1), EPERM),
               expect_errno("TUNSETOWNER", ::ioctl(tun.get(), TUNSETOWNER, 65534), EPERM),
               expect_errno("TUNSETGROUP", ::ioctl(tun.get(), TUNSETGROUP, 65534), EPERM),
               expect_errno("TUNSETLINK", ::ioctl(tun.get(), TUNSETLINK, 1), EPERM),
               expect_errno("TUNSETCARRIER", ::ioctl(tun.get(), TUNSETCARRIER, &kCarrierOff), EPERM),
               expect_errno("SIOCSIFHWADDR on the tap", ::ioctl(tun.get(), SIOCSIFHWADDR, &kNeighbourMac), EPERM),
               expect_errno("io_uring_setup", ::syscall(SYS_io_uring_setup, 8, nullptr), ENOSYS),
               expect_errno("io_uring_enter", ::syscall(SYS_io_uring_enter, 0, 0, 0, 0, nullptr, 0), ENOSYS),
               expect_errno("io_uring_register", ::syscall(SYS_io_uring_register, 0, 0, nullptr, 0), ENOSYS),
               expect_errno("socket(AF_PACKET)", ::socket(AF_PACKET, SOCK_RAW, 0), EAFNOSUPPORT),
               expect_errno("socket(AF_NETLINK)", ::socket(AF_NETLINK, SOCK_RAW, 0), EAFNOSUPPORT),
               expect_errno("socket(AF_VSOCK)", ::socket(AF_VSOCK, SOCK_STREAM, 0), EAFNOSUPPORT),
               expect_errno("socket(AF_UNSPEC)", ::socket(AF_UNSPEC, SOCK_STREAM, 0), EAFNOSUPPORT),
               expect_errno("socket(AF_UNIX | 1 << 32)", ::syscall(SYS_socket, (1UL << 32) | AF_UNIX, SOCK_STREAM, 0), EAFNOSUPPORT),
           })
        if (!r.empty()) return r;
      for (int family : {AF_UNIX, AF_INET, AF_INET6})
        if (vl::UniqueFd s(::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0)); !s) return "socket(" + std::to_string(family) + ") refused";
      if (::ioctl(tun.get(), TUNGETIFF, &ifr) != 0) return std::string("TUNGETIFF refused");
      return std::string();
    }, failure);
    CHECK_MESSAGE((WIFEXITED(status) && WEXITSTATUS(status) == 0), failure);
    CHECK_FALSE(link_exists("sc0"));  // not persistent: gone with the child
  }

  TEST_CASE("a syscall of another ABI kills the whole process, not just the calling thread") {
    std::string failure;
    int status = under_baseline([] {
      pthread_t thread;
      ::pthread_create(&thread, nullptr, [](void*) -> void* {
        ::syscall(0x40000000 | SYS_getpid);  // the x32 ABI
        return nullptr;
      }, nullptr);
      ::pthread_join(thread, nullptr);
      return std::string("the process survived an x32 system call");
    }, failure);
    CHECK_MESSAGE((WIFSIGNALED(status) && WTERMSIG(status) == SIGSYS), failure);
  }
}
