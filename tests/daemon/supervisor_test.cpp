// The supervisor against a fake broker and a fake QMP monitor (the sockets are the seam; the
// emulator is a real child process, so its pidfd behaves as a real one does).
#include "daemon/supervisor.h"

#include <doctest/doctest.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <algorithm>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>

#include "common/broker_protocol.h"
#include "common/emulator_tail.h"
#include "common/sys.h"
#include "common/vm_state.h"
#include "tests/support/temp_dir.h"

namespace asio = boost::asio;
using Json = nlohmann::json;
using namespace std::chrono_literals;

namespace {

vl::UniqueFd listen_unix(const std::string& path, int type) {
  vl::UniqueFd fd(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
  REQUIRE(fd);
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  REQUIRE(path.size() < sizeof sa.sun_path);
  path.copy(sa.sun_path, sizeof sa.sun_path - 1);
  REQUIRE(::bind(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
  REQUIRE(::listen(fd.get(), 4) == 0);
  return fd;
}

// Waits up to 5 s for a connection on a listening socket; an invalid fd if none came.
vl::UniqueFd accept_within(int listener, const std::atomic<bool>& stop) {
  for (int i = 0; i < 500 && !stop; ++i) {
    pollfd p{listener, POLLIN, 0};
    if (::poll(&p, 1, 10) == 1) return vl::UniqueFd(::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC));
  }
  return vl::UniqueFd();
}

// Answers every broker request with success (start: the emulator's pid).
class FakeBroker final {
 public:
  FakeBroker(const std::string& path, pid_t emulator) : listener_(listen_unix(path, SOCK_SEQPACKET)) {
    thread_ = std::thread([this, emulator] {
      vl::UniqueFd conn = accept_within(listener_.get(), stop_);
      while (conn && !stop_) {
        pollfd p{conn.get(), POLLIN, 0};
        if (::poll(&p, 1, 10) != 1) continue;
        char buf[vl::kMaxBrokerMessage];
        ssize_t n = ::recv(conn.get(), buf, sizeof buf, 0);
        if (n <= 0) return;
        auto req = vl::parse_broker_request(std::string_view(buf, static_cast<size_t>(n)));
        vl::BrokerReply reply;
        reply.ok = req.ok();
        if (req && req->op == vl::BrokerOp::kStart) reply.pid = emulator;
        if (req) requests_.push_back(req->op);
        std::string out = vl::encode_broker_reply(reply);
        (void)::send(conn.get(), out.data(), out.size(), MSG_NOSIGNAL);
      }
    });
  }
  ~FakeBroker() {
    stop_ = true;
    thread_.join();
  }
  /// The ops received so far (read once the loop is idle).
  const std::vector<vl::BrokerOp>& requests() const { return requests_; }

 private:
  vl::UniqueFd listener_;
  std::atomic<bool> stop_{false};
  std::vector<vl::BrokerOp> requests_;
  std::thread thread_;
};

// An answer for FakeMonitor: close the connection instead of answering.
const Json kCloseConnection = Json{{"close-the-connection", true}};
// An answer for FakeMonitor: leave the command unanswered and send the SHUTDOWN event of a guest
// that powers off, as QEMU does when the power button works.
const Json kGuestShutdownEvent = Json{{"guest-shutdown-event", true}};
// An answer for FakeMonitor: send these events first, then reply with `then` (or, if `then` is
// kCloseConnection, close the connection).
Json events_then(std::vector<Json> events, Json then) { return Json{{"send-events", events}, {"then", then}}; }
// QEMU's SHUTDOWN events: the guest's own power-off, and the one `quit` brings after it.
const Json kShutdownByGuest = Json{{"event", "SHUTDOWN"}, {"data", {{"guest", true}, {"reason", "guest-shutdown"}}}};
const Json kShutdownByQuit = Json{{"event", "SHUTDOWN"}, {"data", {{"guest", false}, {"reason", "host-qmp-quit"}}}};

// A QMP monitor that greets and answers each command with what `answer` returns for its name:
// a "return" value, or nothing to leave the command unanswered (the connection stays open).
class FakeMonitor final {
 public:
  using Answer = std::function<std::optional<Json>(const std::string& command)>;
  FakeMonitor(const std::string& path, Answer answer) : listener_(listen_unix(path, SOCK_STREAM)) {
    // One client after another, as QEMU's monitor serves them (a later run is a new client).
    thread_ = std::thread([this, answer = std::move(answer)] {
      while (!stop_) {
        vl::UniqueFd conn = accept_within(listener_.get(), stop_);
        if (conn) serve(conn.get(), answer);
      }
    });
  }
  ~FakeMonitor() {
    stop_ = true;
    thread_.join();
  }
  /// Sends `event` to the client connected now, as QEMU does on its own (a guest's power-off).
  void push(const Json& event) {
    std::lock_guard<std::mutex> hold(write_);
    REQUIRE(conn_ >= 0);
    (void)vl::sys::write_all(conn_, event.dump() + "\n");
  }

 private:
  void serve(int conn, const Answer& answer) {
    struct Current {
      FakeMonitor* self;
      Current(FakeMonitor* s, int c) : self(s) { self->conn_ = c; }
      ~Current() {
        std::lock_guard<std::mutex> hold(self->write_);
        self->conn_ = -1;
      }
    } current(this, conn);
    std::string greeting = R"({"QMP": {"version": {}, "capabilities": []}})" "\n";
    (void)vl::sys::write_all(conn, greeting);
    std::string buffer;
    while (!stop_) {
      pollfd p{conn, POLLIN, 0};
      if (::poll(&p, 1, 10) != 1) continue;
      char chunk[4096];
      ssize_t n = ::read(conn, chunk, sizeof chunk);
      if (n <= 0) return;
      buffer.append(chunk, static_cast<size_t>(n));
      for (size_t nl; (nl = buffer.find('\n')) != std::string::npos;) {
        Json cmd = Json::parse(buffer.substr(0, nl), nullptr, false);
        buffer.erase(0, nl + 1);
        std::optional<Json> ret = answer(cmd.value("execute", ""));
        if (!ret) continue;
        if (ret->is_object() && ret->contains("send-events")) {
          for (const Json& e : (*ret)["send-events"]) (void)vl::sys::write_all(conn, e.dump() + "\n");
          ret = (*ret)["then"];
        }
        if (*ret == kCloseConnection) return;
        if (*ret == kGuestShutdownEvent) {
          (void)vl::sys::write_all(conn, R"({"event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}})" "\n");
          continue;
        }
        Json reply = {{"return", *ret}, {"id", cmd["id"]}};
        (void)vl::sys::write_all(conn, reply.dump() + "\n");
      }
    }
  }

  vl::UniqueFd listener_;
  std::atomic<bool> stop_{false};
  std::atomic<int> conn_{-1};
  std::mutex write_;
  std::thread thread_;
};

// A broker whose answers the test scripts: `answer` runs on the broker's thread for each
// request, and may block (to hold a reply back) or act (write a state file, kill a child).
class ScriptedBroker final {
 public:
  using Answer = std::function<vl::BrokerReply(const vl::BrokerRequest&)>;
  ScriptedBroker(const std::string& path, Answer answer) : listener_(listen_unix(path, SOCK_SEQPACKET)) {
    thread_ = std::thread([this, answer = std::move(answer)] {
      vl::UniqueFd conn = accept_within(listener_.get(), stop_);
      while (conn && !stop_) {
        pollfd p{conn.get(), POLLIN, 0};
        if (::poll(&p, 1, 10) != 1) continue;
        char buf[vl::kMaxBrokerMessage];
        ssize_t n = ::recv(conn.get(), buf, sizeof buf, 0);
        if (n <= 0) return;
        auto req = vl::parse_broker_request(std::string_view(buf, static_cast<size_t>(n)));
        if (!req) return;
        {
          std::lock_guard<std::mutex> hold(mutex_);
          requests_.push_back(req->op);
        }
        std::string out = vl::encode_broker_reply(answer(*req));
        (void)::send(conn.get(), out.data(), out.size(), MSG_NOSIGNAL);
      }
    });
  }
  ~ScriptedBroker() {
    stop_ = true;
    thread_.join();
  }
  std::vector<vl::BrokerOp> requests() const {
    std::lock_guard<std::mutex> hold(mutex_);
    return requests_;
  }
  bool received(vl::BrokerOp op) const {
    auto r = requests();
    return std::find(r.begin(), r.end(), op) != r.end();
  }
  /// True if `first` was received, and `then` after it.
  bool received_in_order(vl::BrokerOp first, vl::BrokerOp then) const {
    auto r = requests();
    auto it = std::find(r.begin(), r.end(), first);
    return it != r.end() && std::find(it, r.end(), then) != r.end();
  }

 private:
  vl::UniqueFd listener_;
  std::atomic<bool> stop_{false};
  mutable std::mutex mutex_;
  std::vector<vl::BrokerOp> requests_;
  std::thread thread_;
};

vl::BrokerReply ok_reply(int pid = 0) {
  vl::BrokerReply reply;
  reply.ok = true;
  reply.pid = pid;
  return reply;
}

// State files as the helper writes them, for a real child standing in for the emulator.
vl::VmState write_state(const vl::HostConfig& config, const vl::VmName& vm, pid_t emulator) {
  std::filesystem::create_directories(config.vm_runtime_dir(vm));
  vl::VmState state;
  state.vm = vm.str();
  state.pid = emulator;
  state.start_time = vl::process_start_time(emulator).value();
  REQUIRE(vl::sys::write_file_atomic(config.vm_runtime_dir(vm) + "/state.json", vl::vm_state_to_json(state), 0644));
  return state;
}

// The state file's text for a child standing in for the emulator (computed before threads run).
std::string state_text(const vl::VmName& vm, pid_t emulator) {
  vl::VmState state;
  state.vm = vm.str();
  state.pid = emulator;
  state.start_time = vl::process_start_time(emulator).value();
  return vl::vm_state_to_json(state);
}

pid_t fork_emulator() {
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    for (;;) ::pause();
  }
  return pid;
}

// A VM found at daemon start: its state file, and a real child standing in for its emulator
// (killed and reaped at the end).
struct AdoptableVm {
  pid_t emulator = fork_emulator();  // before any thread starts
  vl::test::TempDir dir;
  vl::HostConfig config = config_in(dir);
  vl::VmName vm = vl::VmName::parse("web1").value();
  vl::VmState state = write_state(config, vm, emulator);

  static vl::HostConfig config_in(const vl::test::TempDir& d) {
    vl::HostConfig c;
    c.runtime_dir = d.path() + "/run";
    return c;
  }
  ~AdoptableVm() {
    ::kill(emulator, SIGKILL);
    ::waitpid(emulator, nullptr, 0);
  }
};

template <typename Pred>
bool run_until(asio::io_context& io, Pred done, std::chrono::milliseconds limit = 5000ms) {
  auto until = std::chrono::steady_clock::now() + limit;
  while (!done() && std::chrono::steady_clock::now() < until) {
    io.restart();
    io.run_for(10ms);
  }
  return done();
}

// A VM adopted running, under a broker that grants everything and a monitor that says it runs.
struct RunningVm : AdoptableVm {
  asio::io_context io;
  ScriptedBroker broker{config.helper_socket(), [](const vl::BrokerRequest&) { return ok_reply(); }};
  FakeMonitor monitor{config.vm_runtime_dir(vm) + "/qmp.sock", [](const std::string& command) {
                        if (command == "query-status") return std::optional<Json>(Json{{"status", "running"}, {"running", true}});
                        return std::optional<Json>(Json::object());
                      }};
  vl::BrokerClient client{io, config.helper_socket()};
  vl::SupervisorContext ctx{io, config, client, [](const vl::VmName&) { return std::string(); }, nullptr};
  vl::Supervisor supervisor{ctx, vm};

  RunningVm() {
    supervisor.adopt(state);
    REQUIRE(run_until(io, [&] { return supervisor.info().status == vl::VmStatus::kRunning; }));
  }
};

// A broker's answers: a start is held back until `answer` is set (10 s at most), then answered
// "the unit is queued" (pid 0); anything else is granted at once.
ScriptedBroker::Answer unit_queued_once(const std::atomic<bool>& answer) {
  return [&answer](const vl::BrokerRequest& req) {
    for (int i = 0; req.op == vl::BrokerOp::kStart && !answer && i < 1000; ++i) std::this_thread::sleep_for(10ms);
    return ok_reply(0);
  };
}

}  // namespace

TEST_SUITE("daemon/supervisor") {
  TEST_CASE("an emulator that exits while set_password is pending fails the start; the late reply is dropped") {
    // Forked before any thread starts.
    pid_t emulator = fork_emulator();
    vl::test::TempDir dir;
    vl::HostConfig config;
    config.runtime_dir = dir.path() + "/run";
    auto vm = vl::VmName::parse("web1").value();
    write_state(config, vm, emulator);

    asio::io_context io;
    {
      FakeBroker broker(config.helper_socket(), emulator);
      // On set_password the emulator dies instead of answering, the connection staying open:
      // the daemon then sees the emulator's exit before the monitor's EOF.
      FakeMonitor monitor(config.vm_runtime_dir(vm) + "/qmp.sock", [emulator](const std::string& command) {
        if (command == "set_password") ::kill(emulator, SIGKILL);
        return command == "set_password" ? std::nullopt : std::optional<Json>(Json::object());
      });
      vl::BrokerClient client(io, config.helper_socket());
      vl::SupervisorContext ctx{io, config, client, [](const vl::VmName&) { return std::string("secret"); }, nullptr};
      vl::Supervisor supervisor(ctx, vm);

      std::optional<vl::Result<void>> started;
      supervisor.start([&](vl::Result<void> r) { started = std::move(r); });
      REQUIRE(run_until(io, [&] { return started.has_value(); }));
      CHECK_FALSE(started->ok());
      CHECK(supervisor.info().status == vl::VmStatus::kFailed);
      run_until(io, [] { return false; }, 200ms);  // late completions, if any, arrive now

      // The VM's operations are not wedged behind the failed start.
      std::optional<vl::Result<void>> stopped;
      supervisor.stop(std::chrono::seconds(1), false, [&](vl::Result<void> r) { stopped = std::move(r); });
      REQUIRE(run_until(io, [&] { return stopped.has_value(); }));
      CHECK(stopped->ok());
      CHECK(supervisor.info().status == vl::VmStatus::kFailed);
      CHECK(supervisor.info().pid == 0);
    }
    int status = 0;
    CHECK(::waitpid(emulator, &status, 0) == emulator);
  }

  TEST_CASE("an adopted guest that powered off while the daemon was down is quit and ends stopped") {
    AdoptableVm fixture;
    auto& [emulator, dir, config, vm, state] = fixture;

    asio::io_context io;
    {
      FakeBroker broker(config.helper_socket(), emulator);
      // A guest that powered off under -no-shutdown while nobody watched: status `shutdown`;
      // on `quit` the emulator ends, as qemu does.
      std::atomic<bool> quit{false};
      FakeMonitor monitor(config.vm_runtime_dir(vm) + "/qmp.sock", [&quit, emulator](const std::string& command) {
        if (command == "quit") {
          quit = true;
          ::kill(emulator, SIGKILL);
        }
        return command == "query-status" ? Json{{"status", "shutdown"}, {"running", false}} : Json::object();
      });
      vl::BrokerClient client(io, config.helper_socket());
      std::vector<vl::VmStatus> seen;
      vl::SupervisorContext ctx{io, config, client, [](const vl::VmName&) { return std::string(); },
                                [&](const vl::VmInfo& i) { seen.push_back(i.status); }};
      vl::Supervisor supervisor(ctx, vm);
      supervisor.adopt(state);
      run_until(io, [&] { return supervisor.info().status == vl::VmStatus::kStopped; });
      CHECK(quit);
      CHECK(supervisor.info().status == vl::VmStatus::kStopped);
      CHECK(supervisor.info().reason == "guest powered off");
      REQUIRE_FALSE(seen.empty());
      CHECK(seen.back() == vl::VmStatus::kStopped);
      run_until(io, [] { return false; }, 100ms);
      CHECK(std::find(broker.requests().begin(), broker.requests().end(), vl::BrokerOp::kCleanup) !=
            broker.requests().end());
    }
  }

  TEST_CASE("an adoption that cannot open a pidfd (EMFILE) reports the error and does not declare the VM dead") {
    AdoptableVm fixture;
    auto& [emulator, dir, config, vm, state] = fixture;

    asio::io_context io;
    {
      vl::BrokerClient client(io, config.helper_socket());
      vl::SupervisorContext ctx{io, config, client, [](const vl::VmName&) { return std::string(); }, nullptr};
      vl::Supervisor supervisor(ctx, vm);

      // Fill the fd table: pidfd_open now fails with EMFILE.
      rlimit saved{};
      REQUIRE(::getrlimit(RLIMIT_NOFILE, &saved) == 0);
      rlimit low = saved;
      low.rlim_cur = 512;
      REQUIRE(::setrlimit(RLIMIT_NOFILE, &low) == 0);
      std::vector<vl::UniqueFd> filler;
      for (;;) {
        vl::UniqueFd fd(::fcntl(0, F_DUPFD_CLOEXEC, 0));
        if (!fd) break;
        filler.push_back(std::move(fd));
      }
      supervisor.adopt(state);
      run_until(io, [] { return false; }, 100ms);
      vl::VmInfo info = supervisor.info();
      filler.clear();
      REQUIRE(::setrlimit(RLIMIT_NOFILE, &saved) == 0);

      CHECK(info.status == vl::VmStatus::kRunning);
      CHECK_MESSAGE(info.reason.find("Too many open files") != std::string::npos, info.reason);
      CHECK(::kill(emulator, 0) == 0);
    }
  }

  // Issue "supervision", item 8: the cleanup of a run that ended must not touch the next run.
  TEST_CASE("a start issued while an unexpected exit is being cleaned up waits for it, and the next run stays running") {
    pid_t first = fork_emulator();  // both before any thread starts
    pid_t second = fork_emulator();
    vl::test::TempDir dir;
    vl::HostConfig config;
    config.runtime_dir = dir.path() + "/run";
    auto vm = vl::VmName::parse("web1").value();
    std::filesystem::create_directories(config.vm_runtime_dir(vm));
    const std::string state_path = config.vm_runtime_dir(vm) + "/state.json";
    const std::string first_state = state_text(vm, first), second_state = state_text(vm, second);

    asio::io_context io;
    {
      std::atomic<int> starts{0};
      std::atomic<bool> release_cleanup{false};
      ScriptedBroker broker(config.helper_socket(), [&](const vl::BrokerRequest& req) {
        if (req.op == vl::BrokerOp::kStart) {
          // Each start "launches" the next stand-in emulator, as the helper would.
          pid_t pid = starts++ == 0 ? first : second;
          (void)vl::sys::write_file_atomic(state_path, pid == first ? first_state : second_state, 0644);
          return ok_reply(pid);
        }
        if (req.op == vl::BrokerOp::kCleanup) {  // the first run's cleanup answers late
          for (int i = 0; i < 500 && !release_cleanup; ++i) std::this_thread::sleep_for(10ms);
        }
        return ok_reply();
      });
      FakeMonitor monitor(config.vm_runtime_dir(vm) + "/qmp.sock",
                          [](const std::string&) { return std::optional<Json>(Json::object()); });
      vl::BrokerClient client(io, config.helper_socket());
      vl::SupervisorContext ctx{io, config, client, [](const vl::VmName&) { return std::string(); }, nullptr};
      vl::Supervisor supervisor(ctx, vm);

      std::optional<vl::Result<void>> started;
      supervisor.start([&](vl::Result<void> r) { started = std::move(r); });
      REQUIRE(run_until(io, [&] { return started.has_value(); }));
      REQUIRE_MESSAGE(started->ok(), started->error().message());
      REQUIRE(supervisor.info().pid == first);

      // The first emulator dies on its own; its cleanup is on its way to the broker.
      ::kill(first, SIGKILL);
      ::waitpid(first, nullptr, 0);
      REQUIRE(run_until(io, [&] { return broker.received(vl::BrokerOp::kCleanup); }));

      std::optional<vl::Result<void>> restarted;
      supervisor.start([&](vl::Result<void> r) { restarted = std::move(r); });
      run_until(io, [] { return false; }, 100ms);
      release_cleanup = true;
      REQUIRE(run_until(io, [&] { return restarted.has_value(); }));
      CHECK_MESSAGE(restarted->ok(), restarted->error().message());
      run_until(io, [] { return false; }, 200ms);  // late completions, if any, arrive now
      CHECK(supervisor.info().status == vl::VmStatus::kRunning);
      CHECK(supervisor.info().pid == second);
    }
    ::kill(second, SIGKILL);
    ::waitpid(second, nullptr, 0);
  }

  // The QMP contract: whatever fails on the monitor during a start (an error, a closed
  // connection, a command that is never answered), the start ends: the emulator is killed
  // through the broker, cleaned up, and the error names what failed.
  TEST_CASE("under systemd a start waits for its unit's Launched, and both are answered once the guest runs") {
    AdoptableVm fixture;
    auto& [emulator, dir, config, vm, state] = fixture;
    asio::io_context io;
    {
      // pid 0: the broker only queued kvm-vm@web1.service.
      ScriptedBroker broker(config.helper_socket(), [](const vl::BrokerRequest&) { return ok_reply(0); });
      std::atomic<bool> resumed{false};
      FakeMonitor monitor(config.vm_runtime_dir(vm) + "/qmp.sock", [&](const std::string& command) {
        if (command == "cont") resumed = true;
        return std::optional<Json>(command == "query-status" ? Json{{"status", "prelaunch"}} : Json::object());
      });
      vl::BrokerClient client(io, config.helper_socket());
      vl::SupervisorContext ctx{io, config, client, [](const vl::VmName&) { return std::string(); }, nullptr};
      vl::Supervisor supervisor(ctx, vm);

      std::optional<vl::Result<void>> started, launched;
      supervisor.start([&](vl::Result<void> r) { started = std::move(r); });
      // The broker's answer is no launch: nothing is read or resumed until the unit speaks.
      CHECK_FALSE(run_until(io, [&] { return started.has_value(); }, 300ms));
      CHECK(supervisor.info().status == vl::VmStatus::kStarting);
      CHECK_FALSE(resumed);
      supervisor.launched([&](vl::Result<void> r) { launched = std::move(r); });
      REQUIRE(run_until(io, [&] { return started.has_value() && launched.has_value(); }));
      CHECK_MESSAGE(started->ok(), started->error().message());
      CHECK_MESSAGE(launched->ok(), launched->error().message());
      CHECK(resumed);
      CHECK(supervisor.info().status == vl::VmStatus::kRunning);
      CHECK(supervisor.info().pid == emulator);
    }
  }

  TEST_CASE("a fresh start resumes the paused emulator with no status query before cont") {
    // Plans always start QEMU paused (the helper refuses one without exactly one -S): asking
    // for its status first would only add a monitor round trip to every start.
    AdoptableVm fixture;
    auto& [emulator, dir, config, vm, state] = fixture;
    asio::io_context io;
    {
      ScriptedBroker broker(config.helper_socket(), [](const vl::BrokerRequest&) { return ok_reply(0); });
      std::mutex lock;
      std::vector<std::string> commands;
      FakeMonitor monitor(config.vm_runtime_dir(vm) + "/qmp.sock", [&](const std::string& command) {
        std::lock_guard<std::mutex> hold(lock);
        commands.push_back(command);
        return std::optional<Json>(command == "query-status" ? Json{{"status", "prelaunch"}} : Json::object());
      });
      vl::BrokerClient client(io, config.helper_socket());
      vl::SupervisorContext ctx{io, config, client, [](const vl::VmName&) { return std::string("secret12"); }, nullptr};
      vl::Supervisor supervisor(ctx, vm);
      std::optional<vl::Result<void>> started, launched;
      supervisor.start([&](vl::Result<void> r) { started = std::move(r); });
      REQUIRE(run_until(io, [&] { return broker.received(vl::BrokerOp::kStart); }));
      // The unit's Launched, whether the loop has read the broker's answer (pid 0: the unit is
      // queued) yet or not.
      supervisor.launched([&](vl::Result<void> r) { launched = std::move(r); });
      REQUIRE(run_until(io, [&] { return started.has_value() && launched.has_value(); }));
      CHECK_MESSAGE(started->ok(), started->error().message());
      CHECK(supervisor.info().status == vl::VmStatus::kRunning);
      std::lock_guard<std::mutex> hold(lock);
      auto cont = std::find(commands.begin(), commands.end(), "cont");
      REQUIRE(cont != commands.end());
      // Before it: the capabilities handshake, the VNC query (informational, sent without
      // waiting) and the password, which must be set before the guest runs.
      std::vector<std::string> before(commands.begin(), cont);
      CHECK(std::find(before.begin(), before.end(), "query-status") == before.end());
      CHECK(std::find(before.begin(), before.end(), "set_password") != before.end());
    }
  }

  TEST_CASE("under systemd the unit's LaunchFailed fails the waiting start with the launch's own error") {
    AdoptableVm fixture;
    auto& [emulator, dir, config, vm, state] = fixture;
    asio::io_context io;
    {
      ScriptedBroker broker(config.helper_socket(), [](const vl::BrokerRequest&) { return ok_reply(0); });
      vl::BrokerClient client(io, config.helper_socket());
      vl::SupervisorContext ctx{io, config, client, [](const vl::VmName&) { return std::string(); }, nullptr};
      vl::Supervisor supervisor(ctx, vm);

      std::optional<vl::Result<void>> started;
      supervisor.start([&](vl::Result<void> r) { started = std::move(r); });
      REQUIRE(run_until(io, [&] { return broker.received(vl::BrokerOp::kStart); }));
      supervisor.launch_failed(vl::Error::make(vl::ErrorCode::kNotFound, "zone bridge 'br-lan' does not exist"));
      REQUIRE(run_until(io, [&] { return started.has_value(); }));
      REQUIRE_FALSE(started->ok());
      CHECK_MESSAGE(started->error().message().find("br-lan") != std::string::npos, started->error().message());
      CHECK(supervisor.info().status == vl::VmStatus::kFailed);
      CHECK(supervisor.info().reason.find("br-lan") != std::string::npos);
    }
  }

  TEST_CASE("under systemd a Launched read before the broker's answer is kept until that answer, and the start goes on") {
    // A loaded host can order them so: the unit's ExecStartPost speaks before the loop reads
    // the broker's answer to the StartUnit that queued it (reliability finding 9).
    AdoptableVm fixture;
    auto& [emulator, dir, config, vm, state] = fixture;
    asio::io_context io;
    {
      std::atomic<bool> answer{false};
      ScriptedBroker broker(config.helper_socket(), unit_queued_once(answer));
      std::atomic<bool> resumed{false};
      FakeMonitor monitor(config.vm_runtime_dir(vm) + "/qmp.sock", [&](const std::string& command) {
        if (command == "cont") resumed = true;
        return std::optional<Json>(Json::object());
      });
      vl::BrokerClient client(io, config.helper_socket());
      vl::SupervisorContext ctx{io, config, client, [](const vl::VmName&) { return std::string(); }, nullptr};
      ctx.start_deadline = 3s;
      vl::Supervisor supervisor(ctx, vm);

      std::optional<vl::Result<void>> started, launched;
      supervisor.start([&](vl::Result<void> r) { started = std::move(r); });
      REQUIRE(run_until(io, [&] { return broker.received(vl::BrokerOp::kStart); }));
      supervisor.launched([&](vl::Result<void> r) { launched = std::move(r); });
      // Nothing is resumed before the broker has answered: its answer may still be a failure.
      CHECK_FALSE(run_until(io, [&] { return started.has_value() || launched.has_value(); }, 200ms));
      CHECK_FALSE(resumed);
      answer = true;
      REQUIRE(run_until(io, [&] { return started.has_value() && launched.has_value(); }, 10000ms));
      CHECK_MESSAGE(started->ok(), started->error().message());
      CHECK_MESSAGE(launched->ok(), launched->error().message());
      CHECK(resumed);
      CHECK(supervisor.info().status == vl::VmStatus::kRunning);
      CHECK(supervisor.info().pid == emulator);
    }
  }

  TEST_CASE("under systemd a LaunchFailed read before the broker's answer fails the start with the launch's error at that answer") {
    AdoptableVm fixture;
    auto& [emulator, dir, config, vm, state] = fixture;
    asio::io_context io;
    {
      std::atomic<bool> answer{false};
      ScriptedBroker broker(config.helper_socket(), unit_queued_once(answer));
      vl::BrokerClient client(io, config.helper_socket());
      vl::SupervisorContext ctx{io, config, client, [](const vl::VmName&) { return std::string(); }, nullptr};
      ctx.start_deadline = 3s;
      vl::Supervisor supervisor(ctx, vm);

      std::optional<vl::Result<void>> started;
      supervisor.start([&](vl::Result<void> r) { started = std::move(r); });
      REQUIRE(run_until(io, [&] { return broker.received(vl::BrokerOp::kStart); }));
      supervisor.launch_failed(vl::Error::make(vl::ErrorCode::kNotFound, "zone bridge 'br-lan' does not exist"));
      CHECK_FALSE(run_until(io, [&] { return started.has_value(); }, 200ms));
      answer = true;
      REQUIRE(run_until(io, [&] { return started.has_value(); }, 10000ms));
      REQUIRE_FALSE(started->ok());
      CHECK_MESSAGE(started->error().message().find("br-lan") != std::string::npos, started->error().message());
      CHECK(supervisor.info().status == vl::VmStatus::kFailed);
      CHECK(supervisor.info().reason.find("br-lan") != std::string::npos);
    }
  }

  TEST_CASE("under systemd a unit that says nothing fails the waiting start at the deadline, naming the unit") {
    AdoptableVm fixture;
    auto& [emulator, dir, config, vm, state] = fixture;
    asio::io_context io;
    {
      ScriptedBroker broker(config.helper_socket(), [](const vl::BrokerRequest&) { return ok_reply(0); });
      vl::BrokerClient client(io, config.helper_socket());
      vl::SupervisorContext ctx{io, config, client, [](const vl::VmName&) { return std::string(); }, nullptr};
      ctx.start_deadline = std::chrono::milliseconds(300);
      vl::Supervisor supervisor(ctx, vm);

      std::optional<vl::Result<void>> started;
      supervisor.start([&](vl::Result<void> r) { started = std::move(r); });
      REQUIRE(run_until(io, [&] { return started.has_value(); }));
      REQUIRE_FALSE(started->ok());
      CHECK_MESSAGE(started->error().message().find("kvm-vm@web1.service") != std::string::npos, started->error().message());
    }
  }

  TEST_CASE("a Launched that no start waits for (systemctl start) begins a start: resumed, supervised, answered") {
    AdoptableVm fixture;
    auto& [emulator, dir, config, vm, state] = fixture;
    asio::io_context io;
    {
      ScriptedBroker broker(config.helper_socket(), [](const vl::BrokerRequest&) { return ok_reply(0); });
      std::atomic<bool> resumed{false};
      FakeMonitor monitor(config.vm_runtime_dir(vm) + "/qmp.sock", [&](const std::string& command) {
        if (command == "cont") resumed = true;
        return std::optional<Json>(command == "query-status" ? Json{{"status", "prelaunch"}} : Json::object());
      });
      vl::BrokerClient client(io, config.helper_socket());
      vl::SupervisorContext ctx{io, config, client, [](const vl::VmName&) { return std::string(); }, nullptr};
      vl::Supervisor supervisor(ctx, vm);

      std::optional<vl::Result<void>> launched;
      supervisor.launched([&](vl::Result<void> r) { launched = std::move(r); });
      REQUIRE(run_until(io, [&] { return launched.has_value(); }));
      CHECK_MESSAGE(launched->ok(), launched->error().message());
      CHECK(resumed);
      CHECK(supervisor.info().status == vl::VmStatus::kRunning);
      CHECK_FALSE(broker.received(vl::BrokerOp::kStart));  // systemd launched it, not the broker
      // A second word for a VM that runs is refused, and changes nothing.
      std::optional<vl::Result<void>> again;
      supervisor.launched([&](vl::Result<void> r) { again = std::move(r); });
      REQUIRE(run_until(io, [&] { return again.has_value(); }));
      CHECK_FALSE(again->ok());
      CHECK(supervisor.info().status == vl::VmStatus::kRunning);
    }
  }

  TEST_CASE("a monitor that never answers `cont` fails the start at its deadline: killed, cleaned up, named") {
    AdoptableVm fixture;
    auto& [emulator, dir, config, vm, state] = fixture;
    asio::io_context io;
    {
      ScriptedBroker broker(config.helper_socket(), [emulator = emulator](const vl::BrokerRequest& req) {
        return ok_reply(req.op == vl::BrokerOp::kStart ? emulator : 0);
      });
      FakeMonitor monitor(config.vm_runtime_dir(vm) + "/qmp.sock", [](const std::string& command) {
        return command == "cont" ? std::nullopt : std::optional<Json>(Json::object());
      });
      vl::BrokerClient client(io, config.helper_socket());
      vl::SupervisorContext ctx{io, config, client, [](const vl::VmName&) { return std::string(); }, nullptr};
      ctx.start_deadline = std::chrono::milliseconds(500);
      vl::Supervisor supervisor(ctx, vm);

      std::optional<vl::Result<void>> started;
      supervisor.start([&](vl::Result<void> r) { started = std::move(r); });
      REQUIRE_MESSAGE(run_until(io, [&] { return started.has_value(); }), "the start hangs in 'starting'");
      REQUIRE_FALSE(started->ok());
      CHECK_MESSAGE(started->error().message().find("'cont'") != std::string::npos, started->error().message());
      CHECK(supervisor.info().status == vl::VmStatus::kFailed);
      CHECK(broker.received_in_order(vl::BrokerOp::kKill, vl::BrokerOp::kCleanup));
    }
  }

  TEST_CASE("a monitor that closes the connection during a stop: the emulator is killed at once and the stop says why") {
    AdoptableVm fixture;
    auto& [emulator, dir, config, vm, state] = fixture;
    asio::io_context io;
    {
      // The broker's kill does what the real one does: the emulator ends.
      ScriptedBroker broker(config.helper_socket(), [emulator = emulator](const vl::BrokerRequest& req) {
        if (req.op == vl::BrokerOp::kKill) ::kill(emulator, SIGKILL);
        return ok_reply();
      });
      std::atomic<bool> powerdown{false};
      FakeMonitor monitor(config.vm_runtime_dir(vm) + "/qmp.sock", [&powerdown](const std::string& command) {
        if (command == "query-status") return std::optional<Json>(Json{{"status", "running"}, {"running", true}});
        if (command == "system_powerdown") {
          powerdown = true;
          return std::optional<Json>(kCloseConnection);
        }
        return std::optional<Json>(Json::object());
      });
      vl::BrokerClient client(io, config.helper_socket());
      vl::SupervisorContext ctx{io, config, client, [](const vl::VmName&) { return std::string(); }, nullptr};
      vl::Supervisor supervisor(ctx, vm);
      supervisor.adopt(state);
      REQUIRE(run_until(io, [&] { return supervisor.info().status == vl::VmStatus::kRunning; }));

      std::optional<vl::Result<void>> stopped;
      supervisor.stop(std::chrono::seconds(60), false, [&](vl::Result<void> r) { stopped = std::move(r); });
      REQUIRE_MESSAGE(run_until(io, [&] { return stopped.has_value(); }), "the stop waits for its 60 s deadline");
      CHECK(powerdown);
      REQUIRE_FALSE(stopped->ok());
      CHECK_MESSAGE(stopped->error().message().find("'system_powerdown'") != std::string::npos, stopped->error().message());
      CHECK(supervisor.info().status == vl::VmStatus::kStopped);
      CHECK(broker.received_in_order(vl::BrokerOp::kKill, vl::BrokerOp::kCleanup));
    }
  }

  TEST_CASE("a guest that powers off during a stop: the monitor closing with the press unanswered is no failure") {
    AdoptableVm fixture;
    auto& [emulator, dir, config, vm, state] = fixture;
    asio::io_context io;
    {
      ScriptedBroker broker(config.helper_socket(), [](const vl::BrokerRequest&) { return ok_reply(); });
      // QEMU quits on `quit` and closes the monitor before it answers the press.
      FakeMonitor monitor(config.vm_runtime_dir(vm) + "/qmp.sock", [emulator = emulator](const std::string& command) {
        if (command == "query-status") return std::optional<Json>(Json{{"status", "running"}, {"running", true}});
        if (command == "system_powerdown") return std::optional<Json>(kGuestShutdownEvent);
        if (command == "quit") {
          ::kill(emulator, SIGKILL);
          return std::optional<Json>(kCloseConnection);
        }
        return std::optional<Json>(Json::object());
      });
      vl::BrokerClient client(io, config.helper_socket());
      vl::SupervisorContext ctx{io, config, client, [](const vl::VmName&) { return std::string(); }, nullptr};
      vl::Supervisor supervisor(ctx, vm);
      supervisor.adopt(state);
      REQUIRE(run_until(io, [&] { return supervisor.info().status == vl::VmStatus::kRunning; }));

      std::optional<vl::Result<void>> stopped;
      supervisor.stop(std::chrono::seconds(60), false, [&](vl::Result<void> r) { stopped = std::move(r); });
      REQUIRE(run_until(io, [&] { return stopped.has_value(); }));
      CHECK_MESSAGE(stopped->ok(), stopped->error().message());
      CHECK(supervisor.info().status == vl::VmStatus::kStopped);
      CHECK_FALSE(broker.received(vl::BrokerOp::kKill));
    }
  }

  TEST_CASE("an emulator killed during a graceful stop: its monitor closing first is no failure") {
    AdoptableVm fixture;
    auto& [emulator, dir, config, vm, state] = fixture;
    asio::io_context io;
    {
      ScriptedBroker broker(config.helper_socket(), [](const vl::BrokerRequest&) { return ok_reply(); });
      // `vmctl kill` lands while the power button is pressed: the monitor closes unanswered.
      FakeMonitor monitor(config.vm_runtime_dir(vm) + "/qmp.sock", [emulator = emulator](const std::string& command) {
        if (command == "query-status") return std::optional<Json>(Json{{"status", "running"}, {"running", true}});
        if (command == "system_powerdown") {
          ::kill(emulator, SIGKILL);
          return std::optional<Json>(kCloseConnection);
        }
        return std::optional<Json>(Json::object());
      });
      vl::BrokerClient client(io, config.helper_socket());
      vl::SupervisorContext ctx{io, config, client, [](const vl::VmName&) { return std::string(); }, nullptr};
      vl::Supervisor supervisor(ctx, vm);
      supervisor.adopt(state);
      REQUIRE(run_until(io, [&] { return supervisor.info().status == vl::VmStatus::kRunning; }));

      std::optional<vl::Result<void>> stopped;
      supervisor.stop(std::chrono::seconds(60), false, [&](vl::Result<void> r) { stopped = std::move(r); });
      REQUIRE(run_until(io, [&] { return stopped.has_value(); }));
      CHECK_MESSAGE(stopped->ok(), stopped->error().message());
      CHECK(supervisor.info().status == vl::VmStatus::kStopped);
      CHECK_FALSE(broker.received(vl::BrokerOp::kKill));
    }
  }

  TEST_CASE("a stop whose cleanup finds the broker away is retried and ends stopped, not failed") {
    AdoptableVm fixture;
    auto& [emulator, dir, config, vm, state] = fixture;
    asio::io_context io;
    {
      std::atomic<int> cleanups{0};
      ScriptedBroker broker(config.helper_socket(), [&cleanups](const vl::BrokerRequest& req) {
        if (req.op == vl::BrokerOp::kCleanup && cleanups++ == 0) {
          vl::BrokerReply away;
          away.error = vl::Error::make(vl::ErrorCode::kSystem, "the broker is away");
          return away;
        }
        return ok_reply();
      });
      FakeMonitor monitor(config.vm_runtime_dir(vm) + "/qmp.sock", [emulator = emulator](const std::string& command) {
        if (command == "query-status") return std::optional<Json>(Json{{"status", "running"}, {"running", true}});
        if (command == "quit") {
          ::kill(emulator, SIGKILL);
          return std::optional<Json>(kCloseConnection);
        }
        return std::optional<Json>(Json::object());
      });
      vl::BrokerClient client(io, config.helper_socket());
      vl::SupervisorContext ctx{io, config, client, [](const vl::VmName&) { return std::string(); }, nullptr};
      ctx.converge_retry = std::chrono::milliseconds(50);
      vl::Supervisor supervisor(ctx, vm);
      supervisor.adopt(state);
      REQUIRE(run_until(io, [&] { return supervisor.info().status == vl::VmStatus::kRunning; }));

      std::optional<vl::Result<void>> stopped;
      supervisor.stop(std::chrono::seconds(60), true, [&](vl::Result<void> r) { stopped = std::move(r); });
      REQUIRE(run_until(io, [&] { return cleanups >= 2 && supervisor.info().status == vl::VmStatus::kStopped; }));
      CHECK_MESSAGE(supervisor.info().reason.empty(), supervisor.info().reason);
    }
  }

  TEST_CASE("a guest that powers off during its adoption reads stopped, reason 'guest powered off', through both SHUTDOWN events") {
    AdoptableVm fixture;
    auto& [emulator, dir, config, vm, state] = fixture;
    asio::io_context io;
    {
      ScriptedBroker broker(config.helper_socket(), [](const vl::BrokerRequest&) { return ok_reply(); });
      // The guest powers off right after the adoption's query-status; on the supervisor's
      // `quit` QEMU sends its second SHUTDOWN (guest: false) and ends.
      FakeMonitor monitor(config.vm_runtime_dir(vm) + "/qmp.sock", [emulator = emulator](const std::string& command) {
        if (command == "query-status")
          return std::optional<Json>(events_then({kShutdownByGuest}, Json{{"status", "running"}, {"running", true}}));
        if (command == "quit") {
          ::kill(emulator, SIGKILL);
          return std::optional<Json>(events_then({kShutdownByQuit}, kCloseConnection));
        }
        return std::optional<Json>(Json::object());
      });
      vl::BrokerClient client(io, config.helper_socket());
      std::vector<vl::VmInfo> seen;
      vl::SupervisorContext ctx{io, config, client, [](const vl::VmName&) { return std::string(); },
                                [&](const vl::VmInfo& i) { seen.push_back(i); }};
      vl::Supervisor supervisor(ctx, vm);
      supervisor.adopt(state);
      REQUIRE(run_until(io, [&] {
        return supervisor.info().status == vl::VmStatus::kStopped || supervisor.info().status == vl::VmStatus::kFailed;
      }));
      CHECK(supervisor.info().status == vl::VmStatus::kStopped);
      CHECK(supervisor.info().reason == "guest powered off");
      CHECK_FALSE(broker.received(vl::BrokerOp::kKill));
      // On its way out it said so: stopping, because the guest powered off.
      CHECK(std::any_of(seen.begin(), seen.end(), [](const vl::VmInfo& i) {
        return i.status == vl::VmStatus::kStopping && i.reason == "guest powered off";
      }));
    }
  }

  TEST_CASE("a stop the guest agent took, resumed after a daemon restart, waits for the power-off without pressing the button") {
    AdoptableVm fixture;
    auto& [emulator, dir, config, vm, state] = fixture;
    // What the daemon that asked the agent left behind: the stop's kind and its deadline.
    auto deadline = std::chrono::system_clock::now() + std::chrono::seconds(60);
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(deadline.time_since_epoch()).count();
    std::filesystem::create_directories(config.runtime_dir + "/vmlaunchd");
    REQUIRE(vl::sys::write_file_atomic(config.runtime_dir + "/vmlaunchd/web1.stop", "agent " + std::to_string(ms) + "\n", 0600));
    asio::io_context io;
    {
      ScriptedBroker broker(config.helper_socket(), [](const vl::BrokerRequest&) { return ok_reply(); });
      std::atomic<int> presses{0};
      FakeMonitor monitor(config.vm_runtime_dir(vm) + "/qmp.sock", [&presses](const std::string& command) {
        if (command == "query-status") return std::optional<Json>(Json{{"status", "running"}, {"running", true}});
        if (command == "system_powerdown") ++presses;
        return std::optional<Json>(Json::object());
      });
      vl::BrokerClient client(io, config.helper_socket());
      vl::SupervisorContext ctx{io, config, client, [](const vl::VmName&) { return std::string(); }, nullptr};
      vl::Supervisor supervisor(ctx, vm);
      supervisor.adopt(state);
      REQUIRE(run_until(io, [&] { return supervisor.info().reason.find("waiting for the guest") != std::string::npos; }));
      CHECK(supervisor.info().status == vl::VmStatus::kStopping);
      // Long enough for the button's first press and its repetition 2 s later.
      run_until(io, [] { return false; }, 2500ms);
      CHECK(presses.load() == 0);
      // The guest powers off as the agent asked: the exit is the stop's.
      ::kill(emulator, SIGKILL);
      REQUIRE(run_until(io, [&] {
        return supervisor.info().status == vl::VmStatus::kStopped || supervisor.info().status == vl::VmStatus::kFailed;
      }));
      CHECK(supervisor.info().status == vl::VmStatus::kStopped);
    }
  }

  TEST_CASE("a graceful stop of a guest that ignores the button shows the time left, then reads 'forced after N s'") {
    AdoptableVm fixture;
    auto& [emulator, dir, config, vm, state] = fixture;
    asio::io_context io;
    {
      ScriptedBroker broker(config.helper_socket(), [](const vl::BrokerRequest&) { return ok_reply(); });
      FakeMonitor monitor(config.vm_runtime_dir(vm) + "/qmp.sock", [emulator = emulator](const std::string& command) {
        if (command == "query-status") return std::optional<Json>(Json{{"status", "running"}, {"running", true}});
        if (command == "quit") {
          ::kill(emulator, SIGKILL);
          return std::optional<Json>(events_then({kShutdownByQuit}, kCloseConnection));
        }
        return std::optional<Json>(Json::object());  // the press is answered, and ignored
      });
      vl::BrokerClient client(io, config.helper_socket());
      std::vector<vl::VmInfo> seen;
      vl::SupervisorContext ctx{io, config, client, [](const vl::VmName&) { return std::string(); },
                                [&](const vl::VmInfo& i) { seen.push_back(i); }};
      vl::Supervisor supervisor(ctx, vm);
      supervisor.adopt(state);
      REQUIRE(run_until(io, [&] { return supervisor.info().status == vl::VmStatus::kRunning; }));

      std::optional<vl::Result<void>> stopped;
      supervisor.stop(std::chrono::seconds(3), false, [&](vl::Result<void> r) { stopped = std::move(r); });
      REQUIRE(run_until(io, [&] { return stopped.has_value(); }, 20000ms));
      CHECK_MESSAGE(stopped->ok(), stopped->error().message());
      CHECK(supervisor.info().status == vl::VmStatus::kStopped);
      CHECK(supervisor.info().reason == "forced after 3 s: the guest did not power off");
      // While it waited, it said how long is left, counting down.
      std::vector<std::string> progress;
      for (const auto& i : seen)
        if (i.status == vl::VmStatus::kStopping) progress.push_back(i.reason);
      REQUIRE_FALSE(progress.empty());
      CHECK(progress.front() == "waiting for the guest, 3 s left");
      CHECK(std::find(progress.begin(), progress.end(), "waiting for the guest, 1 s left") != progress.end());
    }
  }

  TEST_CASE("kill answers only once the emulator is gone") {
    AdoptableVm fixture;
    auto& [emulator, dir, config, vm, state] = fixture;
    asio::io_context io;
    {
      // The broker signals, and the emulator takes a moment to go, as a real one does.
      ScriptedBroker broker(config.helper_socket(), [emulator = emulator](const vl::BrokerRequest& req) {
        if (req.op == vl::BrokerOp::kKill) {
          std::thread([emulator] {
            std::this_thread::sleep_for(300ms);
            ::kill(emulator, SIGKILL);
          }).detach();
        }
        return ok_reply();
      });
      FakeMonitor monitor(config.vm_runtime_dir(vm) + "/qmp.sock", [](const std::string& command) {
        if (command == "query-status") return std::optional<Json>(Json{{"status", "running"}, {"running", true}});
        return std::optional<Json>(Json::object());
      });
      vl::BrokerClient client(io, config.helper_socket());
      vl::SupervisorContext ctx{io, config, client, [](const vl::VmName&) { return std::string(); }, nullptr};
      vl::Supervisor supervisor(ctx, vm);
      supervisor.adopt(state);
      REQUIRE(run_until(io, [&] { return supervisor.info().status == vl::VmStatus::kRunning; }));

      std::optional<vl::Result<void>> killed;
      supervisor.kill(SIGTERM, [&](vl::Result<void> r) { killed = std::move(r); });
      REQUIRE(run_until(io, [&] { return killed.has_value(); }));
      CHECK_MESSAGE(killed->ok(), killed->error().message());
      // Answered after the exit and its cleanup, not before.
      CHECK(supervisor.info().status == vl::VmStatus::kStopped);
      CHECK(supervisor.info().pid == 0);
    }
  }

  TEST_CASE("kill of an emulator that does not go answers with an error at its bound") {
    AdoptableVm fixture;
    auto& [emulator, dir, config, vm, state] = fixture;
    asio::io_context io;
    {
      ScriptedBroker broker(config.helper_socket(), [](const vl::BrokerRequest&) { return ok_reply(); });
      FakeMonitor monitor(config.vm_runtime_dir(vm) + "/qmp.sock", [](const std::string& command) {
        if (command == "query-status") return std::optional<Json>(Json{{"status", "running"}, {"running", true}});
        return std::optional<Json>(Json::object());
      });
      vl::BrokerClient client(io, config.helper_socket());
      vl::SupervisorContext ctx{io, config, client, [](const vl::VmName&) { return std::string(); }, nullptr};
      ctx.kill_wait = std::chrono::milliseconds(300);
      vl::Supervisor supervisor(ctx, vm);
      supervisor.adopt(state);
      REQUIRE(run_until(io, [&] { return supervisor.info().status == vl::VmStatus::kRunning; }));

      std::optional<vl::Result<void>> killed;
      supervisor.kill(SIGINT, [&](vl::Result<void> r) { killed = std::move(r); });
      REQUIRE(run_until(io, [&] { return killed.has_value(); }));
      REQUIRE_FALSE(killed->ok());
      CHECK_MESSAGE(killed->error().message().find("still running") != std::string::npos, killed->error().message());
      CHECK(supervisor.info().status == vl::VmStatus::kRunning);
    }
  }

  TEST_CASE("a running guest that powers itself off reads stopping, then stopped, reason 'guest powered off'") {
    AdoptableVm fixture;
    auto& [emulator, dir, config, vm, state] = fixture;
    asio::io_context io;
    {
      ScriptedBroker broker(config.helper_socket(), [](const vl::BrokerRequest&) { return ok_reply(); });
      // On the supervisor's `quit` QEMU sends its second SHUTDOWN (guest: false) and ends.
      FakeMonitor monitor(config.vm_runtime_dir(vm) + "/qmp.sock", [emulator = emulator](const std::string& command) {
        if (command == "query-status") return std::optional<Json>(Json{{"status", "running"}, {"running", true}});
        if (command == "quit") {
          ::kill(emulator, SIGKILL);
          return std::optional<Json>(events_then({kShutdownByQuit}, kCloseConnection));
        }
        return std::optional<Json>(Json::object());
      });
      vl::BrokerClient client(io, config.helper_socket());
      std::vector<vl::VmInfo> seen;
      vl::SupervisorContext ctx{io, config, client, [](const vl::VmName&) { return std::string(); },
                                [&](const vl::VmInfo& i) { seen.push_back(i); }};
      vl::Supervisor supervisor(ctx, vm);
      supervisor.adopt(state);
      REQUIRE(run_until(io, [&] { return supervisor.info().status == vl::VmStatus::kRunning; }));

      monitor.push(kShutdownByGuest);  // the guest's own `poweroff`
      REQUIRE(run_until(io, [&] {
        return supervisor.info().status == vl::VmStatus::kStopped || supervisor.info().status == vl::VmStatus::kFailed;
      }));
      CHECK(supervisor.info().status == vl::VmStatus::kStopped);
      CHECK(supervisor.info().reason == "guest powered off");
      CHECK_FALSE(broker.received(vl::BrokerOp::kKill));
      CHECK(std::any_of(seen.begin(), seen.end(), [](const vl::VmInfo& i) {
        return i.status == vl::VmStatus::kStopping && i.reason == "guest powered off";
      }));
    }
  }

  TEST_CASE("a crash quotes the lines the relay copies after the exit: the reason waits for the relay's end") {
    // The relay reads the emulator's pipe on its own schedule: on a loaded host the emulator's
    // last lines (the ones that say why) can reach the copy after its exit is seen.
    RunningVm f;
    std::string copy = f.config.vm_runtime_dir(f.vm) + "/emulator.log";
    REQUIRE(vl::sys::write_file_atomic(copy, "qemu: early notice\n", 0640));
    ::kill(f.emulator, SIGKILL);
    // The exit is seen; the relay has not caught up yet.
    CHECK_FALSE(run_until(f.io, [&] { return f.supervisor.info().status == vl::VmStatus::kFailed; }, 300ms));
    vl::UniqueFd out(::open(copy.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC));
    REQUIRE(out);
    REQUIRE(vl::sys::write_all(out.get(), "qemu: last words\n"));
    REQUIRE(vl::sys::write_all(out.get(), vl::kEmulatorTailEnd));
    REQUIRE(run_until(f.io, [&] { return f.supervisor.info().status == vl::VmStatus::kFailed; }));
    CHECK(f.supervisor.info().reason == "emulator exited unexpectedly; qemu said: early notice | last words");
  }

  TEST_CASE("a crash quotes qemu's last two lines of output, bounded") {
    RunningVm f;
    // The relay's copy of the emulator's output, as the helper leaves it (a long first part).
    std::string early(8000, 'x');
    REQUIRE(vl::sys::write_file_atomic(f.config.vm_runtime_dir(f.vm) + "/emulator.log",
                                       "qemu: " + early + "\nqemu: one\nqemu: qemu-system-x86_64: " + std::string(500, 'y') +
                                           "\nqemu: char device redirected to /dev/pts/3 (label charserial0)\nqemu: last words\n" +
                                           std::string(vl::kEmulatorTailEnd),
                                       0640));
    ::kill(f.emulator, SIGKILL);
    REQUIRE(run_until(f.io, [&] { return f.supervisor.info().status == vl::VmStatus::kFailed; }));
    CHECK(f.supervisor.info().reason ==
          "emulator exited unexpectedly; qemu said: qemu-system-x86_64: " + std::string(300 - 20, 'y') + " | last words");
  }
}

