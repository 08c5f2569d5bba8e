// The supervisor against a fake broker and a fake QMP monitor (the sockets are the seam; the
// emulator is a real child process, so its pidfd behaves as a real one does).
#include "daemon/supervisor.h"

#include <doctest/doctest.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

#include "common/broker_protocol.h"
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

// A QMP monitor that greets, answers every command with an empty success, and on
// `set_password` kills the emulator instead of answering, keeping the connection open: the
// daemon then sees the emulator's exit before the monitor's EOF.
class FakeMonitor final {
 public:
  FakeMonitor(const std::string& path, pid_t emulator) : listener_(listen_unix(path, SOCK_STREAM)) {
    thread_ = std::thread([this, emulator] {
      vl::UniqueFd conn = accept_within(listener_.get(), stop_);
      if (!conn) return;
      std::string greeting = R"({"QMP": {"version": {}, "capabilities": []}})" "\n";
      (void)vl::sys::write_all(conn.get(), greeting);
      std::string buffer;
      while (!stop_) {
        pollfd p{conn.get(), POLLIN, 0};
        if (::poll(&p, 1, 10) != 1) continue;
        char chunk[4096];
        ssize_t n = ::read(conn.get(), chunk, sizeof chunk);
        if (n <= 0) return;
        buffer.append(chunk, static_cast<size_t>(n));
        for (size_t nl; (nl = buffer.find('\n')) != std::string::npos;) {
          Json cmd = Json::parse(buffer.substr(0, nl), nullptr, false);
          buffer.erase(0, nl + 1);
          if (cmd.value("execute", "") == "set_password") {
            ::kill(emulator, SIGKILL);
            continue;
          }
          Json reply = {{"return", Json::object()}, {"id", cmd["id"]}};
          (void)vl::sys::write_all(conn.get(), reply.dump() + "\n");
        }
      }
    });
  }
  ~FakeMonitor() {
    stop_ = true;
    thread_.join();
  }

 private:
  vl::UniqueFd listener_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

pid_t fork_emulator() {
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    for (;;) ::pause();
  }
  return pid;
}

template <typename Pred>
bool run_until(asio::io_context& io, Pred done, std::chrono::milliseconds limit = 5000ms) {
  auto until = std::chrono::steady_clock::now() + limit;
  while (!done() && std::chrono::steady_clock::now() < until) {
    io.restart();
    io.run_for(10ms);
  }
  return done();
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
    std::filesystem::create_directories(config.vm_runtime_dir(vm));
    vl::VmState state;
    state.vm = "web1";
    state.pid = emulator;
    state.start_time = vl::process_start_time(emulator).value();
    REQUIRE(vl::sys::write_file_atomic(config.vm_runtime_dir(vm) + "/state.json", vl::vm_state_to_json(state), 0644));

    asio::io_context io;
    {
      FakeBroker broker(config.helper_socket(), emulator);
      FakeMonitor monitor(config.vm_runtime_dir(vm) + "/qmp.sock", emulator);
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
}
