// The control socket under hostile clients: the accept loop backs off instead of spinning when
// descriptors run out, and no client can make the daemon buffer an oversized message or hold
// a half-sent one open.
#include "daemon/control_server.h"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <thread>
#include <vector>

#include "common/unique_fd.h"
#include "tests/support/temp_dir.h"

using namespace std::chrono_literals;

namespace {

double cpu_seconds() {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

// In a child: a listening control server, a client waiting in its backlog and a full fd
// table; the loop runs for `wall`. Exits with the CPU time spent, in milliseconds / 10.
[[noreturn]] void run_exhausted_server(const std::string& dir, std::chrono::milliseconds wall) {
  boost::asio::io_context io;
  vl::HostConfig config;
  config.runtime_dir = dir;
  config.cache_dir = dir + "/cache";
  config.domains_dir = dir + "/domains";
  vl::Manager manager(io, config);
  vl::ControlServer server(io, config, manager);
  if (!server.listen()) ::_exit(255);
  vl::UniqueFd client(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  config.control_socket().copy(sa.sun_path, sizeof sa.sun_path - 1);
  if (::connect(client.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) ::_exit(254);
  rlimit low{256, 256};
  if (::setrlimit(RLIMIT_NOFILE, &low) != 0) ::_exit(253);
  std::vector<vl::UniqueFd> filler;
  for (;;) {
    vl::UniqueFd fd(::fcntl(0, F_DUPFD_CLOEXEC, 0));
    if (!fd) break;
    filler.push_back(std::move(fd));
  }
  double before = cpu_seconds();
  io.run_for(wall);
  double spent_ms = (cpu_seconds() - before) * 1000;
  ::_exit(static_cast<int>(std::min(spent_ms / 10, 250.0)));
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

vl::HostConfig test_config(const std::string& dir) {
  vl::HostConfig config;
  config.runtime_dir = dir;
  config.cache_dir = dir + "/cache";
  config.domains_dir = dir + "/domains";
  return config;
}

vl::UniqueFd connect_to(const std::string& path) {
  vl::UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  path.copy(sa.sun_path, sizeof sa.sun_path - 1);
  REQUIRE(::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
  return fd;
}

// The D-Bus handshake, then the fixed header of a method call announcing `body` bytes.
std::string hello_and_header(uint32_t body) {
  std::string s = std::string(1, '\0') + "AUTH ANONYMOUS\r\nBEGIN\r\n";
  char header[16] = {'l', 1, 0, 1};
  std::memcpy(header + 4, &body, 4);
  uint32_t serial = 1;
  std::memcpy(header + 8, &serial, 4);
  return s + std::string(header, sizeof header);
}

// True once the server hung up on `fd` (EOF or reset after draining what it sent).
bool hung_up(int fd) {
  char buf[4096];
  for (;;) {
    ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0) continue;  // the server's handshake replies
    return n == 0 || (n < 0 && errno != EAGAIN);
  }
}

}  // namespace

TEST_SUITE("daemon/control_server") {
  TEST_CASE("a message larger than the limit is refused on its header, before the daemon buffers it") {
    vl::test::TempDir dir;
    boost::asio::io_context io;
    vl::HostConfig config = test_config(dir.path());
    vl::Manager manager(io, config);
    vl::ControlServer server(io, config, manager);
    REQUIRE(server.listen().ok());
    long before = rss_kib();
    vl::UniqueFd client = connect_to(config.control_socket());
    std::string head = hello_and_header(119u << 20);
    REQUIRE(::send(client.get(), head.data(), head.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(head.size()));
    // A writer thread pushes the body (up to 100 MiB) while the loop runs here.
    std::atomic<size_t> sent{0};
    std::thread writer([&] {
      std::vector<char> chunk(1 << 20, 0);
      for (size_t i = 0; i < 100; ++i) {
        ssize_t n = ::send(client.get(), chunk.data(), chunk.size(), MSG_NOSIGNAL);
        if (n <= 0) return;
        sent += static_cast<size_t>(n);
      }
    });
    bool closed = false;
    for (auto until = std::chrono::steady_clock::now() + 30s; !closed && std::chrono::steady_clock::now() < until;) {
      io.run_for(50ms);
      closed = hung_up(client.get());
    }
    ::shutdown(client.get(), SHUT_RDWR);  // ends the writer either way
    writer.join();
    long grown_mib = (rss_kib() - before) / 1024;
    MESSAGE("client got " << (sent >> 20) << " MiB in; RSS grew by " << grown_mib << " MiB");
    CHECK(closed);
    CHECK(grown_mib < 32);
  }

  TEST_CASE("a message begun and never finished is dropped at the message deadline") {
    vl::test::TempDir dir;
    boost::asio::io_context io;
    vl::HostConfig config = test_config(dir.path());
    config.control.message_timeout = 1;
    vl::Manager manager(io, config);
    vl::ControlServer server(io, config, manager);
    REQUIRE(server.listen().ok());
    vl::UniqueFd client = connect_to(config.control_socket());
    std::string head = hello_and_header(200).substr(0, 30);  // the handshake and half a header
    REQUIRE(::send(client.get(), head.data(), head.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(head.size()));
    bool closed = false;
    for (auto until = std::chrono::steady_clock::now() + 30s; !closed && std::chrono::steady_clock::now() < until;) {
      io.run_for(50ms);
      closed = hung_up(client.get());
    }
    CHECK(closed);
  }

  TEST_CASE("a client that connects and says nothing is dropped at the handshake deadline") {
    vl::test::TempDir dir;
    boost::asio::io_context io;
    vl::HostConfig config = test_config(dir.path());
    config.control.message_timeout = 1;
    vl::Manager manager(io, config);
    vl::ControlServer server(io, config, manager);
    REQUIRE(server.listen().ok());
    vl::UniqueFd client = connect_to(config.control_socket());
    bool closed = false;
    for (auto until = std::chrono::steady_clock::now() + 30s; !closed && std::chrono::steady_clock::now() < until;) {
      io.run_for(50ms);
      closed = hung_up(client.get());
    }
    CHECK(closed);
  }

  TEST_CASE("with no descriptor left, the accept loop backs off instead of spinning") {
    vl::test::TempDir dir;
    constexpr auto kWall = 500ms;
    pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) run_exhausted_server(dir.path(), kWall);
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    REQUIRE(WIFEXITED(status));
    int code = WEXITSTATUS(status);
    REQUIRE_MESSAGE(code < 250, "child setup failed: " << code);
    int cpu_ms = code * 10;
    MESSAGE("CPU over " << kWall.count() << " ms of EMFILE: about " << cpu_ms << " ms");
    CHECK(cpu_ms < 100);  // a spinning loop burns the whole 500 ms
  }
}
