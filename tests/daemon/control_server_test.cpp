// The control socket's accept loop under descriptor exhaustion: it must back off, not spin.
#include "daemon/control_server.h"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
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

}  // namespace

TEST_SUITE("daemon/control_server") {
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
