// The daemon's broker connection across broker restarts: a request that never reached the
// broker is sent again on a new connection; one the broker may have acted on is not, unless it
// is idempotent (cleanup).
#include "daemon/broker_client.h"

#include <doctest/doctest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <optional>
#include <thread>

#include "common/sys.h"
#include "tests/support/temp_dir.h"

namespace asio = boost::asio;
using namespace std::chrono_literals;

namespace {

// Assertions on the broker's thread: a failure is recorded and that side gives up.
#define BROKER_EXPECT(cond)                   \
  do {                                        \
    if (!(cond)) {                            \
      FAIL_CHECK("broker side: " #cond);      \
      return;                                 \
    }                                         \
  } while (0)

// A scripted broker: accepts connections in turn and hands each to the test.
class ScriptedBroker final {
 public:
  explicit ScriptedBroker(const std::string& path) : listener_(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0)) {
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    path.copy(sa.sun_path, sizeof sa.sun_path - 1);
    REQUIRE(::bind(listener_.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
    REQUIRE(::listen(listener_.get(), 4) == 0);
  }
  /// The next connection, waiting up to 5 s.
  vl::UniqueFd accept() {
    pollfd p{listener_.get(), POLLIN, 0};
    if (::poll(&p, 1, 5000) != 1) return vl::UniqueFd();
    return vl::UniqueFd(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
  }
  /// Reads one request (up to 5 s); "" on EOF or timeout.
  static std::string read_request(int conn) {
    pollfd p{conn, POLLIN, 0};
    if (::poll(&p, 1, 5000) != 1) return "";
    char buf[vl::kMaxBrokerMessage];
    ssize_t n = ::recv(conn, buf, sizeof buf, 0);
    return n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
  }
  static void answer(int conn, int pid) {
    vl::BrokerReply reply;
    reply.ok = true;
    reply.pid = pid;
    std::string out = vl::encode_broker_reply(reply);
    CHECK(::send(conn, out.data(), out.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(out.size()));
  }
  /// Whether a connection is waiting to be accepted within `ms`.
  bool pending(int ms) {
    pollfd p{listener_.get(), POLLIN, 0};
    return ::poll(&p, 1, ms) == 1;
  }

 private:
  vl::UniqueFd listener_;
};

// The daemon's side: a client on its own loop, playing requests against a scripted broker.
struct DaemonSide {
  vl::test::TempDir dir;
  std::string path = dir.path() + "/helper.sock";
  asio::io_context io;
  vl::BrokerClient client{io, path};

  // Runs one call on the loop in this thread while `broker_side` plays the broker in another.
  template <typename F>
  std::optional<vl::Result<int>> call(vl::BrokerOp op, F broker_side) {
    std::optional<vl::Result<int>> result;
    std::thread broker(broker_side);
    client.call({op, vl::VmName::parse("web1").value(), 0}, [&](vl::Result<int> r) { result = std::move(r); });
    for (auto until = std::chrono::steady_clock::now() + 5s; !result && std::chrono::steady_clock::now() < until;) {
      io.restart();
      io.run_for(10ms);
    }
    broker.join();
    return result;
  }
};

// Accepts the next connection and reads one request from it; an invalid fd if either failed.
vl::UniqueFd accept_request(ScriptedBroker& broker) {
  vl::UniqueFd conn = broker.accept();
  if (conn && ScriptedBroker::read_request(conn.get()).empty()) conn.reset();
  return conn;
}

}  // namespace

TEST_SUITE("daemon/broker_client") {
  TEST_CASE("a request sent after the broker restarted goes out on a new connection") {
    DaemonSide daemon;
    std::optional<ScriptedBroker> broker(std::in_place, daemon.path);
    // First request: served normally, the connection stays open.
    auto first = daemon.call(vl::BrokerOp::kStart, [&] {
      vl::UniqueFd conn = accept_request(*broker);
      BROKER_EXPECT(conn);
      ScriptedBroker::answer(conn.get(), 42);
    });  // the broker's end of the connection closes here
    REQUIRE(first);
    CHECK(first->value() == 42);
    broker.reset();  // and so does its listener: the broker is restarted
    ::unlink(daemon.path.c_str());
    broker.emplace(daemon.path);

    auto second = daemon.call(vl::BrokerOp::kStart, [&] {
      vl::UniqueFd conn = accept_request(*broker);
      BROKER_EXPECT(conn);
      ScriptedBroker::answer(conn.get(), 43);
    });
    REQUIRE(second);
    CHECK_MESSAGE(second->ok(), (second->ok() ? std::string() : second->error().message()));
    if (second->ok()) CHECK(second->value() == 43);
  }

  TEST_CASE("a request the broker dropped unread is sent again") {
    DaemonSide daemon;
    ScriptedBroker broker(daemon.path);
    auto r = daemon.call(vl::BrokerOp::kStart, [&] {
      {
        vl::UniqueFd conn = broker.accept();
        BROKER_EXPECT(conn);
        pollfd p{conn.get(), POLLIN, 0};
        BROKER_EXPECT(::poll(&p, 1, 5000) == 1);
      }  // closed with the request unread: it was never received
      vl::UniqueFd again = accept_request(broker);
      BROKER_EXPECT(again);
      ScriptedBroker::answer(again.get(), 44);
    });
    REQUIRE(r);
    CHECK_MESSAGE(r->ok(), (r->ok() ? std::string() : r->error().message()));
    if (r->ok()) CHECK(r->value() == 44);
  }

  TEST_CASE("a start whose reply was lost is not sent twice; a cleanup is") {
    DaemonSide daemon;
    ScriptedBroker broker(daemon.path);
    auto start = daemon.call(vl::BrokerOp::kStart, [&] {
      BROKER_EXPECT(accept_request(broker));  // received, then the broker dies
    });
    REQUIRE(start);
    REQUIRE_FALSE(start->ok());
    CHECK(start->error().message().find("before answering") != std::string::npos);
    CHECK_FALSE(broker.pending(200));  // no second start

    auto cleanup = daemon.call(vl::BrokerOp::kCleanup, [&] {
      BROKER_EXPECT(accept_request(broker));  // received, then the broker dies
      vl::UniqueFd again = accept_request(broker);
      BROKER_EXPECT(again);
      ScriptedBroker::answer(again.get(), 0);
    });
    REQUIRE(cleanup);
    CHECK_MESSAGE(cleanup->ok(), (cleanup->ok() ? std::string() : cleanup->error().message()));
  }
}

TEST_SUITE("daemon/broker_client") {
  TEST_CASE("a request goes out on another connection while an earlier one waits for its answer") {
    DaemonSide daemon;
    ScriptedBroker broker(daemon.path);
    std::optional<vl::Result<int>> slow, fast;
    std::thread broker_side([&] {
      vl::UniqueFd first = accept_request(broker);  // the start: held unanswered
      BROKER_EXPECT(first);
      vl::UniqueFd second = accept_request(broker);  // the cleanup, on a connection of its own
      BROKER_EXPECT(second);
      ScriptedBroker::answer(second.get(), 0);
      ScriptedBroker::answer(first.get(), 45);
    });
    daemon.client.call({vl::BrokerOp::kStart, vl::VmName::parse("web1").value(), 0}, [&](vl::Result<int> r) { slow = std::move(r); });
    daemon.client.call({vl::BrokerOp::kCleanup, vl::VmName::parse("web2").value(), 0}, [&](vl::Result<int> r) {
      fast = std::move(r);
      CHECK_FALSE(slow.has_value());  // answered first, as the broker did
    });
    for (auto until = std::chrono::steady_clock::now() + 10s; !(slow && fast) && std::chrono::steady_clock::now() < until;) {
      daemon.io.restart();
      daemon.io.run_for(10ms);
    }
    broker_side.join();
    REQUIRE(slow);
    REQUIRE(fast);
    CHECK(fast->ok());
    REQUIRE(slow->ok());
    CHECK(slow->value() == 45);
  }
}
