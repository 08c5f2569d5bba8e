// vmctl -H tls:// against a far side that does not play along: it must not hold vmctl forever.
#include "vmctl/tls_client.h"

#include <doctest/doctest.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <chrono>
#include <cstdlib>
#include <future>

#include "common/unique_fd.h"
#include "tests/support/temp_dir.h"

using namespace std::chrono_literals;

TEST_SUITE("vmctl/tls_client") {
  // The kernel completes the TCP handshake for a listener that never accepts: the far side
  // is "connected" and says nothing, as a hung daemon or a hostile host would.
  TEST_CASE("a server that accepts the connection and never answers the handshake fails at the deadline, naming it") {
    vl::test::TempDir dir;
    const std::string ca = dir.path() + "/ca.pem";
    std::string make_ca = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout " + dir.path() +
                          "/ca.key -out " + ca + " -subj /CN=test-ca -days 1 >/dev/null 2>&1";
    REQUIRE(std::system(make_ca.c_str()) == 0);
    vl::UniqueFd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(listener.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
    REQUIRE(::listen(listener.get(), 8) == 0);
    socklen_t len = sizeof sa;
    REQUIRE(::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&sa), &len) == 0);
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
}
