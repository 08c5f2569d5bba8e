// vmctl -H tls:// against a far side that does not play along: it must not hold vmctl forever.
#include "vmctl/tls_client.h"

#include <doctest/doctest.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <future>
#include <thread>

#include "common/unique_fd.h"
#include "tests/support/temp_dir.h"

using namespace std::chrono_literals;

namespace {

// A CA certificate for vmctl to trust (the far sides here never get to present theirs).
std::string make_ca(const std::string& dir) {
  const std::string ca = dir + "/ca.pem";
  std::string command = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout " + dir +
                        "/ca.key -out " + ca + " -subj /CN=test-ca -days 1 >/dev/null 2>&1";
  REQUIRE(std::system(command.c_str()) == 0);
  return ca;
}

// A listening TCP socket on a free loopback port, its address in `sa`.
vl::UniqueFd listen_loopback(sockaddr_in& sa) {
  vl::UniqueFd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sa = sockaddr_in{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(listener.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
  REQUIRE(::listen(listener.get(), 64) == 0);
  socklen_t len = sizeof sa;
  REQUIRE(::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&sa), &len) == 0);
  return listener;
}

}  // namespace

TEST_SUITE("vmctl/tls_client") {
  // The kernel completes the TCP handshake for a listener that never accepts: the far side
  // is "connected" and says nothing, as a hung daemon or a hostile host would.
  TEST_CASE("a server that accepts the connection and never answers the handshake fails at the deadline, naming it") {
    vl::test::TempDir dir;
    const std::string ca = make_ca(dir.path());
    sockaddr_in sa{};
    vl::UniqueFd listener = listen_loopback(sa);
    auto target = vl::ctl::parse_remote("tls://127.0.0.1:" + std::to_string(ntohs(sa.sin_port)));
    REQUIRE(target.ok());

    auto connecting = std::async(std::launch::async, [&] { return vl::ctl::tls_connect(*target, {ca, "", ""}, 2s); });
    bool ended = connecting.wait_for(60s) == std::future_status::ready;
    CHECK_MESSAGE(ended, "tls_connect still waits for the silent server after 60 s");
    listener.reset();  // resets the queued connection: a handshake still waiting ends now
    auto result = connecting.get();
    REQUIRE_FALSE(result.ok());
    CHECK_MESSAGE(result.error().message().find("TLS handshake with 127.0.0.1 port " + std::to_string(ntohs(sa.sin_port)) +
                                                " failed: no answer within 2 s") != std::string::npos,
                  result.error().message());
  }

  // A daemon refusing a connection (its handshake slots full) closes it unread. OpenSSL then
  // writes its alert to a socket the far side has reset: EPIPE, and SIGPIPE, whose default
  // action killed vmctl with status 141 and no message.
  TEST_CASE("a server that closes the connection at once is an error, never a SIGPIPE that kills vmctl") {
    vl::test::TempDir dir;
    const std::string ca = make_ca(dir.path());
    sockaddr_in sa{};
    vl::UniqueFd listener = listen_loopback(sa);
    constexpr int kTries = 20;
    std::thread closer([fd = listener.get()] {
      for (int i = 0; i < kTries; ++i) {
        vl::UniqueFd conn(::accept4(fd, nullptr, nullptr, SOCK_CLOEXEC));
        if (!conn) return;  // shut down: the client ended early
      }
    });
    pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      ::signal(SIGPIPE, SIG_DFL);  // as vmctl starts; the test programs ignore it
      auto target = vl::ctl::parse_remote("tls://127.0.0.1:" + std::to_string(ntohs(sa.sin_port)));
      for (int i = 0; i < kTries; ++i)
        if (!target || vl::ctl::tls_connect(*target, {ca, "", ""}, 10s).ok()) ::_exit(2);
      ::_exit(0);
    }
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    ::shutdown(listener.get(), SHUT_RDWR);
    closer.join();
    CHECK_MESSAGE(WIFEXITED(status), "killed by signal " << (WIFSIGNALED(status) ? WTERMSIG(status) : 0));
    if (WIFEXITED(status)) CHECK(WEXITSTATUS(status) == 0);
  }
}
