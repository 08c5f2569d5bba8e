// The QMP client against a hostile or hung emulator: every read is bounded and every exchange
// has a deadline, so a monitor can neither grow the daemon's memory nor hang an operation.
#include "daemon/qmp_client.h"

#include <doctest/doctest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <fstream>
#include <functional>
#include <optional>
#include <string>
#include <thread>

#include "common/unique_fd.h"
#include "tests/support/temp_dir.h"

namespace asio = boost::asio;
using namespace std::chrono_literals;
using Json = nlohmann::json;

namespace {

// A fake monitor: a listening socket whose one connection a thread serves with `script`.
class FakeMonitor final {
 public:
  explicit FakeMonitor(const std::string& path, std::function<void(int fd)> script) : path_(path) {
    listener_.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    path.copy(sa.sun_path, sizeof sa.sun_path - 1);
    REQUIRE(::bind(listener_.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
    REQUIRE(::listen(listener_.get(), 1) == 0);
    thread_ = std::thread([this, script = std::move(script)] {
      vl::UniqueFd conn(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (conn) script(conn.get());
    });
  }
  ~FakeMonitor() {
    ::shutdown(listener_.get(), SHUT_RDWR);  // wakes an accept that never got a client
    thread_.join();
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  vl::UniqueFd listener_;
  std::thread thread_;
};

bool send_all(int fd, const std::string& s) {
  size_t done = 0;
  while (done < s.size()) {
    ssize_t n = ::send(fd, s.data() + done, s.size() - done, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

// Reads one line (a command) from the client; nullopt at EOF.
std::optional<Json> read_command(int fd) {
  std::string line;
  char c;
  for (;;) {
    ssize_t n = ::read(fd, &c, 1);
    if (n <= 0) return std::nullopt;
    if (c == '\n') return Json::parse(line, nullptr, false);
    line += c;
  }
}

// Greets and accepts qmp_capabilities, like QEMU.
bool handshake(int fd) {
  if (!send_all(fd, R"({"QMP": {"version": {}, "capabilities": []}})" "\n")) return false;
  auto caps = read_command(fd);
  return caps && send_all(fd, Json{{"return", Json::object()}, {"id", (*caps)["id"]}}.dump() + "\n");
}

// Waits until the client closes the connection (or 60 s pass).
void wait_for_eof(int fd) {
  timeval tv{60, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char buf[256];
  while (::read(fd, buf, sizeof buf) > 0) {
  }
}

long rss_kib() {
  std::ifstream in("/proc/self/status");
  std::string key;
  while (in >> key) {
    if (key == "VmRSS:") {
      long kib = 0;
      in >> kib;
      return kib;
    }
    in.ignore(4096, '\n');
  }
  return -1;
}

// Runs the loop until `done` or a generous deadline (CI runs under load).
template <class Pred>
void run_until(asio::io_context& io, Pred done, std::chrono::seconds deadline = 30s) {
  auto end = std::chrono::steady_clock::now() + deadline;
  while (!done() && std::chrono::steady_clock::now() < end) {
    io.restart();
    io.run_for(50ms);
  }
}

}  // namespace

TEST_SUITE("daemon/qmp_client") {
  TEST_CASE("a monitor line with no end is an error and closes the connection; memory stays bounded") {
    vl::test::TempDir dir;
    constexpr size_t kFlood = 256u << 20;  // far past the line limit; the old client kept it all
    FakeMonitor monitor(dir.path() + "/qmp.sock", [](int fd) {
      std::string chunk(1 << 20, 'x');
      for (size_t sent = 0; sent < kFlood; sent += chunk.size())
        if (!send_all(fd, chunk)) return;  // the client hung up: what it should do
      wait_for_eof(fd);
    });
    asio::io_context io;
    long before = rss_kib();
    auto qmp = std::make_shared<vl::QmpClient>(io);
    bool closed = false;
    qmp->on_closed = [&] { closed = true; };
    std::optional<vl::Result<void>> ready;
    qmp->connect(monitor.path(), [&](vl::Result<void> r) { ready = std::move(r); });
    run_until(io, [&] { return ready.has_value() && closed; });
    long grown_mib = (rss_kib() - before) / 1024;
    MESSAGE("RSS grew by " << grown_mib << " MiB while the monitor sent up to " << (kFlood >> 20) << " MiB");
    REQUIRE(ready.has_value());
    REQUIRE_FALSE(ready->ok());
    CHECK(ready->error().message().find("longer than") != std::string::npos);
    CHECK(closed);
    CHECK(grown_mib < 64);
    qmp->close();
  }

  TEST_CASE("a monitor that never greets fails the connect, saying how long it waited, with no errno tail") {
    vl::test::TempDir dir;
    FakeMonitor monitor(dir.path() + "/qmp.sock", [](int fd) { wait_for_eof(fd); });
    asio::io_context io;
    auto qmp = std::make_shared<vl::QmpClient>(io);
    qmp->set_timeout(500ms);
    bool closed = false;
    qmp->on_closed = [&] { closed = true; };
    std::optional<vl::Result<void>> ready;
    qmp->connect(monitor.path(), [&](vl::Result<void> r) { ready = std::move(r); });
    run_until(io, [&] { return ready.has_value() && closed; });
    REQUIRE(ready.has_value());
    REQUIRE_FALSE(ready->ok());
    CHECK(ready->error().sys_errno == 0);  // no ": Connection timed out" tail
    CHECK(ready->error().message().find("within") != std::string::npos);
    CHECK(ready->error().message().find("greeting") != std::string::npos);
    CHECK(closed);
  }

  TEST_CASE("a command the monitor never answers fails naming it and the time waited, and the connection closes") {
    vl::test::TempDir dir;
    FakeMonitor monitor(dir.path() + "/qmp.sock", [](int fd) {
      if (!handshake(fd)) return;
      while (read_command(fd)) {  // reads every command, answers none
      }
    });
    asio::io_context io;
    auto qmp = std::make_shared<vl::QmpClient>(io);
    qmp->set_timeout(500ms);
    bool closed = false;
    qmp->on_closed = [&] { closed = true; };
    std::optional<vl::Result<void>> ready;
    qmp->connect(monitor.path(), [&](vl::Result<void> r) { ready = std::move(r); });
    run_until(io, [&] { return ready.has_value(); });
    REQUIRE(ready.has_value());
    REQUIRE(ready->ok());
    std::optional<vl::Result<Json>> reply, other;
    qmp->execute("query-status", nullptr, [&](vl::Result<Json> r) { reply = std::move(r); });
    qmp->execute("query-vnc", nullptr, 60s, [&](vl::Result<Json> r) { other = std::move(r); });
    run_until(io, [&] { return reply.has_value() && other.has_value() && closed; });
    REQUIRE(reply.has_value());
    REQUIRE_FALSE(reply->ok());
    CHECK(reply->error().sys_errno == 0);
    CHECK(reply->error().message().find("within") != std::string::npos);
    CHECK(reply->error().message().find("query-status") != std::string::npos);
    // The connection is given up: everything else pending fails with it, on_closed fires.
    REQUIRE(other.has_value());
    CHECK_FALSE(other->ok());
    CHECK(closed);
    std::optional<vl::Result<Json>> late;
    qmp->execute("cont", nullptr, [&](vl::Result<Json> r) { late = std::move(r); });
    REQUIRE(late.has_value());
    CHECK_FALSE(late->ok());
  }

  TEST_CASE("a command answered in time is not failed by its deadline later") {
    vl::test::TempDir dir;
    FakeMonitor monitor(dir.path() + "/qmp.sock", [](int fd) {
      if (!handshake(fd)) return;
      while (auto cmd = read_command(fd))
        if (!send_all(fd, Json{{"return", {{"status", "running"}}}, {"id", (*cmd)["id"]}}.dump() + "\n")) return;
    });
    asio::io_context io;
    auto qmp = std::make_shared<vl::QmpClient>(io);
    qmp->set_timeout(300ms);
    bool closed = false;
    qmp->on_closed = [&] { closed = true; };
    std::optional<vl::Result<void>> ready;
    qmp->connect(monitor.path(), [&](vl::Result<void> r) { ready = std::move(r); });
    run_until(io, [&] { return ready.has_value(); });
    REQUIRE(ready.has_value());
    REQUIRE(ready->ok());
    int answered = 0;
    qmp->execute("query-status", nullptr, [&](vl::Result<Json> r) { answered += r.ok(); });
    run_until(io, [&] { return answered == 1; });
    CHECK(answered == 1);
    // Well past the deadline: nothing fires, the connection stays up.
    auto until = std::chrono::steady_clock::now() + 1s;
    run_until(io, [&] { return closed || std::chrono::steady_clock::now() > until; });
    CHECK_FALSE(closed);
    qmp->close();
  }
}
