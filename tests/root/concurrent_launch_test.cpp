// Launches, cleanups and broker requests of different VMs at once (helper/locks.h,
// helper/broker.h): what VMs share (MACs, disks, the nftables tables) is claimed by exactly one,
// one VM's operations never interleave, and nothing else waits. Races are forced, not hoped
// for: the test holds the shared-state lock until every contender waits for it.
#include <doctest/doctest.h>
#include <net/if.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/broker_protocol.h"
#include "common/spawn.h"
#include "common/sys.h"
#include "helper/nft_filter.h"
#include "tests/support/eventually.h"
#include "tests/support/lock_probe.h"
#include "tests/support/system_env.h"

using vl::test::DomainSpec;
using vl::test::HelperEnv;
using vl::test::eventually;
using vl::test::HelperLock;
using vl::test::SystemEnv;
using Json = nlohmann::json;
using namespace std::chrono_literals;

namespace {

// A `vmlaunch-helper` run in the background, with its own log. Its emulator, if it became one,
// is killed when this goes away.
class Helper final {
 public:
  Helper(HelperEnv& env, std::vector<std::string> args) : env_(env), log_path_(env.root() + "/" + args[0] + "-" + args[1] + "-helper.log") {
    vl::UniqueFd log(::open(log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    std::vector<std::string> argv = {"vmlaunch-helper", "--config", env.config_path()};
    argv.insert(argv.end(), args.begin(), args.end());
    auto pid = vl::spawn({vl::test::build_path("VMLAUNCH_HELPER"), argv, {}, {{log.get(), 1}, {log.get(), 2}}});
    REQUIRE_MESSAGE(pid.ok(), pid.error().message());
    pid_ = *pid;
    vm_ = args[1];
  }
  ~Helper() {
    if (emulator_) env_.kill_vm(pid_);
    else if (status_ < 0) ::kill(pid_, SIGKILL), (void)vl::wait_for(pid_);
  }
  Helper(const Helper&) = delete;
  Helper& operator=(const Helper&) = delete;

  pid_t pid() const { return pid_; }
  bool waits_for_lock() const { return vl::test::waiting_for_lock(pid_); }
  /// Waits until the helper has exited or has become an emulator with its state written.
  void settle() {
    REQUIRE_MESSAGE(eventually([&] {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) return status_ = status, true;
      std::error_code ec;
      return emulator_ = std::filesystem::exists(env_.root() + "/run/vms/" + vm_ + "/state.json") &&
                         std::filesystem::read_symlink("/proc/" + std::to_string(pid_) + "/exe", ec) == "/usr/bin/qemu-system-x86_64";
    }), "helper neither exited nor became qemu\n" << log());
  }
  bool running() const { return emulator_; }
  /// The exit status, once settled and exited.
  int exit_code() const { return status_ >= 0 && WIFEXITED(status_) ? WEXITSTATUS(status_) : -1; }
  std::string log() const {
    auto text = vl::sys::read_file(log_path_, 1 << 20);
    return text ? *text : "";
  }
  /// Kills the emulator it became.
  void kill_emulator() {
    if (emulator_) env_.kill_vm(pid_);
    emulator_ = false;
    status_ = 0;
  }

 private:
  HelperEnv& env_;
  std::string log_path_;
  std::string vm_;
  pid_t pid_ = -1;
  int status_ = -1;
  bool emulator_ = false;
};

// Whether the VM's chain is in the bridge table.
bool has_filter(const std::string& vm) {
  auto exists = vl::helper::vm_filter_exists(vm);
  return exists && *exists;
}

// Two launches, held at the shared-state lock until both wait there, then let go at once.
// Exactly one must run; the other must fail with `refusal` and leave nothing of its own.
void race_two_launches(HelperEnv& env, const std::string& refusal) {
  std::string plan1 = env.write_plan("web1", env.plan_json("web1"));
  std::string plan2 = env.write_plan("web2", env.plan_json("web2"));
  auto before = env.snapshot();
  std::optional<HelperLock> lock(std::in_place, env.config());
  Helper one(env, {"launch", "web1", "--plan", plan1});
  Helper two(env, {"launch", "web2", "--plan", plan2});
  REQUIRE(eventually([&] { return one.waits_for_lock() && two.waits_for_lock(); }));
  lock.reset();
  one.settle();
  two.settle();
  REQUIRE_MESSAGE(one.running() != two.running(), "web1: " << one.log() << "\nweb2: " << two.log());
  Helper& winner = one.running() ? one : two;
  Helper& loser = one.running() ? two : one;
  std::string lost = one.running() ? "web2" : "web1", won = one.running() ? "web1" : "web2";
  CHECK(loser.exit_code() == 1);
  CHECK_MESSAGE(loser.log().find(refusal) != std::string::npos, loser.log());
  // Nothing of the loser is left; the winner has everything.
  CHECK_FALSE(std::filesystem::exists(env.root() + "/run/vms/" + lost));
  CHECK(::if_nametoindex((lost + "-0").c_str()) == 0);
  CHECK_FALSE(has_filter(lost));
  CHECK_FALSE(std::filesystem::exists(env.root() + "/state/disks/" + lost + ".json"));
  CHECK(vl::test::link_details(won + "-0").find("master br-dmz") != std::string::npos);
  CHECK(has_filter(won));

  winner.kill_emulator();
  auto cleaned = env.helper({"cleanup", won});
  CHECK_MESSAGE(cleaned.status == 0, cleaned.log);
  CHECK_MESSAGE(vl::test::snapshot_diff(before, env.snapshot()).empty(), vl::test::snapshot_diff(before, env.snapshot()));
}

// A broker connection of the daemon's uid (the test's own, made as that uid: SO_PEERCRED
// records the effective ids of the connect).
vl::UniqueFd connect_as_daemon(const std::string& path) {
  REQUIRE(::setresgid(-1, 65534, -1) == 0);
  REQUIRE(::setresuid(-1, 65534, -1) == 0);
  vl::UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  path.copy(sa.sun_path, sizeof sa.sun_path - 1);
  int connected = fd ? ::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) : -1;
  REQUIRE(::setresuid(-1, 0, -1) == 0);
  REQUIRE(::setresgid(-1, 0, -1) == 0);
  REQUIRE(connected == 0);
  return fd;
}

void send_request(int fd, vl::BrokerOp op, const std::string& vm) {
  std::string req = vl::encode_broker_request({op, vl::VmName::parse(vm).value(), 0});
  REQUIRE(::send(fd, req.data(), req.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(req.size()));
}

// The reply on `fd` within `limit`, if one came.
std::optional<vl::BrokerReply> reply_within(int fd, std::chrono::milliseconds limit) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, static_cast<int>(limit.count())) != 1) return std::nullopt;
  char buf[vl::kMaxBrokerMessage];
  ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
  if (n <= 0) return std::nullopt;
  auto reply = vl::parse_broker_reply(std::string_view(buf, static_cast<size_t>(n)));
  if (!reply) return std::nullopt;
  return *reply;
}

}  // namespace

TEST_SUITE("root/concurrent_launch") {
  TEST_CASE("two launches at once claiming one MAC: one runs, the other is refused and leaves nothing") {
    HelperEnv env;
    env.define({.name = "web1", .mac = "52:54:00:00:40:01"});
    env.define({.name = "web2", .mac = "52:54:00:00:40:01"});
    race_two_launches(env, "is in use by running VM");
  }

  TEST_CASE("two launches at once claiming one disk: one runs, the other is refused and leaves nothing") {
    HelperEnv env;
    std::string disk = env.root() + "/images/shared.img";
    std::filesystem::copy_file(vl::test::build_path("VMLAUNCH_GUEST_IMG"), disk);
    env.define({.name = "web1", .mac = "52:54:00:00:40:02", .disk = disk});
    env.define({.name = "web2", .mac = "52:54:00:00:40:03", .disk = disk});
    race_two_launches(env, "is in use by VM");
  }

  TEST_CASE("a cleanup racing a launch of the same VM waits for it, then refuses the running VM") {
    HelperEnv env;
    env.define({.name = "web1", .mac = "52:54:00:00:40:04"});
    std::string plan = env.write_plan("web1", env.plan_json("web1"));
    std::optional<HelperLock> lock(std::in_place, env.config());
    Helper launch(env, {"launch", "web1", "--plan", plan});
    REQUIRE(eventually([&] { return launch.waits_for_lock(); }));  // the VM's own lock held, at its claims
    Helper cleanup(env, {"cleanup", "web1"});
    REQUIRE(eventually([&] { return cleanup.waits_for_lock(); }));
    lock.reset();
    launch.settle();
    cleanup.settle();
    REQUIRE_MESSAGE(launch.running(), launch.log());
    CHECK(cleanup.exit_code() == 1);
    CHECK_MESSAGE(cleanup.log().find("still running") != std::string::npos, cleanup.log());
    // Nothing was taken from under the running VM.
    CHECK(std::filesystem::exists(env.root() + "/run/vms/web1/state.json"));
    CHECK(vl::test::link_details("web1-0").find("master br-dmz") != std::string::npos);
    CHECK(has_filter("web1"));
  }

  TEST_CASE("a start whose launch waits for its plan does not hold up the broker's other requests") {
    SystemEnv env;
    env.define({.name = "web1", .mac = "52:54:00:00:40:05"});
    env.define({.name = "web2", .mac = "52:54:00:00:40:06"});
    env.kill_daemon();
    // Where the launch asks the daemon for its plan, a listener that never answers.
    const std::string control = env.config().control_socket();
    ::unlink(control.c_str());
    vl::UniqueFd silent(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    control.copy(sa.sun_path, sizeof sa.sun_path - 1);
    REQUIRE(::bind(silent.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
    REQUIRE(::listen(silent.get(), 8) == 0);

    vl::UniqueFd starting = connect_as_daemon(env.config().helper_socket());
    send_request(starting.get(), vl::BrokerOp::kStart, "web1");
    // The launch is under way: it has connected and waits for an answer.
    pollfd p{silent.get(), POLLIN, 0};
    REQUIRE(::poll(&p, 1, 30'000) == 1);
    vl::UniqueFd launch_conn(::accept4(silent.get(), nullptr, nullptr, SOCK_CLOEXEC));
    REQUIRE(launch_conn);

    vl::UniqueFd other = connect_as_daemon(env.config().helper_socket());
    send_request(other.get(), vl::BrokerOp::kCleanup, "web2");
    auto cleaned = reply_within(other.get(), 20s);
    CHECK_MESSAGE(cleaned.has_value(), "the broker served nothing while a launch waited\n" << env.log());
    if (cleaned) CHECK_MESSAGE(cleaned->ok, cleaned->error.message());

    // The launch's plan request fails: the start is answered with that failure.
    launch_conn.reset();
    silent.reset();
    auto started = reply_within(starting.get(), 60s);
    REQUIRE_MESSAGE(started.has_value(), env.log());
    CHECK_FALSE(started->ok);
    CHECK_FALSE(std::filesystem::exists(env.root() + "/run/vms/web1"));
    ::unlink(control.c_str());
  }

  TEST_CASE("VMs started at once all run, each on its bridge behind its filter; stopped at once, nothing is left") {
    SystemEnv env;
    constexpr int kVms = 8;
    std::vector<std::string> start = {"start", "--parallel", std::to_string(kVms)};
    for (int i = 1; i <= kVms; ++i) {
      char mac[18];
      std::snprintf(mac, sizeof mac, "52:54:00:00:41:%02x", i);
      start.push_back("par" + std::to_string(i));
      env.define({.name = start.back(), .mac = mac});
    }
    auto started = env.vmctl(start);
    REQUIRE_MESSAGE(started.exit_code == 0, started.out << env.log());
    for (int i = 1; i <= kVms; ++i) {
      std::string name = "par" + std::to_string(i);
      CHECK(vl::test::link_details(name + "-0").find("master br-dmz") != std::string::npos);
      CHECK(has_filter(name));
    }
    auto stopped = env.vmctl({"stop", "--all", "--force"});
    CHECK_MESSAGE(stopped.exit_code == 0, stopped.out << env.log());
    // The daemon has each VM cleaned up after its exit; the last cleanup drops the tables.
    CHECK_MESSAGE(eventually([&] {
      return std::filesystem::is_empty(env.root() + "/run/vms") &&
             vl::test::command_output("nft list tables").find("vmlaunch") == std::string::npos;
    }), vl::test::command_output("nft list tables") << env.log());
    for (int i = 1; i <= kVms; ++i) CHECK(::if_nametoindex(("par" + std::to_string(i) + "-0").c_str()) == 0);
  }
}
