// Hostile local peers against the real daemon and broker: no local user can take the daemon
// down, grow its memory, read its state changes without permission, or freeze the broker.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <systemd/sd-bus.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

#include "common/broker_protocol.h"
#include "common/control_protocol.h"
#include "tests/support/system_env.h"

using namespace std::chrono_literals;

namespace {

constexpr uid_t kAdminUid = 4243, kOtherAdminUid = 4244, kStrangerUid = 4242;
constexpr gid_t kAdminGid = 100;  // Debian's "users", the test's admin group

// The system with "users" as the admin group and the given [control] limits.
class HostileEnv : public vl::test::SystemEnv {
 public:
  explicit HostileEnv(const std::string& control) {
    REQUIRE(::getgrgid(kAdminGid) != nullptr);
    users_ = "[users]\ndaemon_user = \"nobody\"\ndaemon_group = \"nogroup\"\nadmin_group = \"" +
             std::string(::getgrgid(kAdminGid)->gr_name) + "\"\n" + vl::test::test_uid_range();
    write_config(control);
    stop_daemon();
    start_daemon();
  }
};

// Runs `body` in a child with the given uid (and only `groups`); the child's exit code is
// body's result. `rlimit_nofile` is raised first (as root) when non-zero.
pid_t spawn_as(uid_t uid, std::vector<gid_t> groups, std::function<int()> body, rlim_t nofile = 0) {
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid > 0) return pid;
  if (nofile) {
    rlimit r{nofile, nofile};
    if (::setrlimit(RLIMIT_NOFILE, &r) != 0) ::_exit(250);
  }
  gid_t gid = groups.empty() ? uid : groups[0];
  if (::setgroups(groups.size(), groups.data()) != 0 || ::setresgid(gid, gid, gid) != 0 ||
      ::setresuid(uid, uid, uid) != 0)
    ::_exit(251);
  ::_exit(body());
}

int exit_code_of(pid_t pid) {
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int connect_unix(const std::string& path, int type, bool nonblocking) {
  int fd = ::socket(AF_UNIX, type | SOCK_CLOEXEC | (nonblocking ? SOCK_NONBLOCK : 0), 0);
  if (fd < 0) return -1;
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  path.copy(sa.sun_path, sizeof sa.sun_path - 1);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// True once the server closed this connection (EOF or reset).
bool closed_by_server(int fd) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, 0) != 1) return false;
  char c;
  ssize_t n = ::recv(fd, &c, 1, MSG_DONTWAIT | MSG_PEEK);
  return n == 0 || (n < 0 && errno != EAGAIN);
}

long rss_kib(pid_t pid) {
  auto text = vl::sys::read_file("/proc/" + std::to_string(pid) + "/status", 1 << 16);
  if (!text) return -1;
  auto at = text->find("VmRSS:");
  return at == std::string::npos ? -1 : std::strtol(text->c_str() + at + 6, nullptr, 10);
}

// The daemon this environment started: the vmlaunchd process whose command line names the
// environment's configuration file.
pid_t daemon_pid(const std::string& config_path) {
  const std::string daemon = vl::test::build_path("VMLAUNCH_DAEMON");
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    auto cmdline = vl::sys::read_file(entry.path().string() + "/cmdline", 1 << 16);
    if (!cmdline) continue;
    std::replace(cmdline->begin(), cmdline->end(), '\0', ' ');
    if (cmdline->rfind(daemon + " ", 0) == 0 && cmdline->find(" " + config_path + " ") != std::string::npos)
      return static_cast<pid_t>(std::atoi(entry.path().filename().c_str()));
  }
  return -1;
}

// Sends the D-Bus handshake and the header of one huge method call, then `body` bytes of it,
// never finishing it; stops early when the daemon hangs up. Returns the bytes it got in.
size_t send_unfinished_message(int fd, uint32_t announced, size_t body) {
  std::string hello = std::string(1, '\0') + "AUTH ANONYMOUS\r\nBEGIN\r\n";
  if (::send(fd, hello.data(), hello.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(hello.size())) return 0;
  uint8_t header[16] = {'l', 1, 0, 1};
  std::memcpy(header + 4, &announced, 4);  // body length (little endian, as on x86)
  uint32_t serial = 1;
  std::memcpy(header + 8, &serial, 4);
  if (::send(fd, header, sizeof header, MSG_NOSIGNAL) != sizeof header) return 0;
  std::vector<char> chunk(1 << 20, 0);
  size_t sent = 0;
  auto until = std::chrono::steady_clock::now() + 60s;
  while (sent < body && std::chrono::steady_clock::now() < until) {
    pollfd p{fd, POLLOUT, 0};
    if (::poll(&p, 1, 1000) <= 0) continue;
    if (p.revents & (POLLERR | POLLHUP)) break;
    ssize_t n = ::send(fd, chunk.data(), std::min(chunk.size(), body - sent), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0 && errno == EAGAIN) continue;
    if (n <= 0) break;
    sent += static_cast<size_t>(n);
  }
  return sent;
}

// In a child: a D-Bus client that counts StateChanged signals until `stop` becomes readable.
// Exits with the count (capped), or 200+ on setup failure.
int count_state_signals(const std::string& socket, int ready_fd, int stop_fd) {
  sd_bus* bus = nullptr;
  if (sd_bus_new(&bus) < 0) return 201;
  if (sd_bus_set_address(bus, ("unix:path=" + socket).c_str()) < 0 || sd_bus_start(bus) < 0) return 202;
  int count = 0;
  sd_bus_slot* slot = nullptr;
  auto on_signal = [](sd_bus_message*, void* userdata, sd_bus_error*) -> int {
    ++*static_cast<int*>(userdata);
    return 0;
  };
  if (sd_bus_match_signal(bus, &slot, nullptr, vl::kControlPath, vl::kControlInterface, "StateChanged", on_signal,
                          &count) < 0)
    return 203;
  // A round trip, so the session is established before the test goes on.
  sd_bus_message* reply = nullptr;
  sd_bus_error error = SD_BUS_ERROR_NULL;
  (void)sd_bus_call_method(bus, nullptr, vl::kControlPath, "org.freedesktop.DBus.Peer", "Ping", &error, &reply, "");
  sd_bus_error_free(&error);
  sd_bus_message_unref(reply);
  (void)::write(ready_fd, "r", 1);
  for (;;) {
    pollfd p[2] = {{sd_bus_get_fd(bus), static_cast<short>(sd_bus_get_events(bus)), 0}, {stop_fd, POLLIN, 0}};
    if (::poll(p, 2, 1000) < 0) break;
    if (p[1].revents) break;
    int r;
    while ((r = sd_bus_process(bus, nullptr)) > 0) {
    }
    if (r < 0) {  // the daemon ended the session: no more signals can come
      pollfd s{stop_fd, POLLIN, -1};
      (void)::poll(&s, 1, -1);
      break;
    }
  }
  sd_bus_slot_unref(slot);
  sd_bus_close_unref(bus);
  return std::min(count, 199);
}

// Lets `children` forked children blocked on the stop pipe go on. Closing the write end is not
// enough: every child inherited a copy of it, so none of them would ever read EOF.
// A child that already ended is no reason for the test to die of SIGPIPE.
void release(int stop_write, int children) {
  struct sigaction ignore {}, previous {};
  ignore.sa_handler = SIG_IGN;
  ::sigaction(SIGPIPE, &ignore, &previous);
  for (int i = 0; i < children; ++i) (void)::write(stop_write, "x", 1);
  ::close(stop_write);
  ::sigaction(SIGPIPE, &previous, nullptr);
}

bool wait_readable(int fd, int ms) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, ms) == 1;
}

}  // namespace

TEST_SUITE("root/hostile_peer") {
  TEST_CASE("one admin's 1,100 connections are capped per uid; other admins and root are still served") {
    HostileEnv env("[control]\nmax_connections = 16\nmax_connections_per_uid = 4\nmessage_timeout = 60\n");
    const std::string socket = env.config().control_socket();
    int report[2], stop[2];
    REQUIRE(::pipe2(report, O_CLOEXEC) == 0);
    REQUIRE(::pipe2(stop, O_CLOEXEC) == 0);
    // The hog opens its connections and reports how many the daemon kept open.
    pid_t hog = spawn_as(kAdminUid, {kAdminGid}, [&] {
      std::vector<int> fds;
      for (int i = 0; i < 1100; ++i)
        if (int fd = connect_unix(socket, SOCK_STREAM, true); fd >= 0) fds.push_back(fd);
      // The daemon closes the excess at once; give it (generously) time to get through all.
      size_t kept = fds.size();
      for (auto until = std::chrono::steady_clock::now() + 30s; std::chrono::steady_clock::now() < until;) {
        kept = 0;
        for (int fd : fds) kept += !closed_by_server(fd);
        if (kept <= 4) break;
        std::this_thread::sleep_for(100ms);
      }
      unsigned char k = static_cast<unsigned char>(std::min<size_t>(kept, 255));
      (void)::write(report[1], &k, 1);
      char c;
      (void)::read(stop[0], &c, 1);  // hold them while the others are served
      return 0;
    }, 4096);
    ::close(report[1]);
    ::close(stop[0]);
    unsigned char kept = 255;
    REQUIRE(wait_readable(report[0], 90'000));
    REQUIRE(::read(report[0], &kept, 1) == 1);
    MESSAGE("the daemon kept " << int(kept) << " of the hog's connections open");
    CHECK(kept <= 4);

    auto other = vl::test::run_program("/usr/bin/timeout",
        {"timeout", "30", "/usr/bin/setpriv", "--reuid=" + std::to_string(kOtherAdminUid),
         "--regid=" + std::to_string(kAdminGid), "--groups=" + std::to_string(kAdminGid),
         vl::test::build_path("VMLAUNCH_VMCTL"), "--config", env.config_path(), "list"});
    CHECK_MESSAGE(other.exit_code == 0, other.out);
    auto root = vl::test::run_program("/usr/bin/timeout",
        {"timeout", "30", vl::test::build_path("VMLAUNCH_VMCTL"), "--config", env.config_path(), "list"});
    CHECK_MESSAGE(root.exit_code == 0, root.out);
    release(stop[1], 1);
    CHECK(exit_code_of(hog) == 0);
    ::close(report[0]);
  }

  TEST_CASE("huge unfinished messages do not grow the daemon's memory, authorized or not") {
    HostileEnv env("");
    const std::string socket = env.config().control_socket();
    pid_t daemon = daemon_pid(env.config_path());
    REQUIRE(daemon > 0);
    long before = rss_kib(daemon);
    REQUIRE(before > 0);
    int stop[2];
    REQUIRE(::pipe2(stop, O_CLOEXEC) == 0);
    std::vector<pid_t> senders;
    // Four senders, as in the report: two strangers, two admins, each announcing 119 MiB and
    // sending 110 MiB of it, then holding the connection.
    for (auto [uid, groups] : {std::pair{kStrangerUid, std::vector<gid_t>{}}, {kStrangerUid + 10, {}},
                               {kAdminUid, {kAdminGid}}, {kOtherAdminUid, {kAdminGid}}}) {
      senders.push_back(spawn_as(uid, groups, [&, uid = uid] {
        int fd = connect_unix(socket, SOCK_STREAM, false);
        if (fd < 0) return 1;
        size_t sent = send_unfinished_message(fd, 119u << 20, 110u << 20);
        std::fprintf(stderr, "uid %u got %zu bytes in\n", static_cast<unsigned>(uid), sent);
        char c;
        (void)::read(stop[0], &c, 1);
        return 0;
      }));
    }
    ::close(stop[0]);
    // Whatever the daemon does with the bytes, it has had them (or refused them) once every
    // sender finished sending; give it a moment to settle by polling its RSS.
    long after = before;
    for (auto until = std::chrono::steady_clock::now() + 20s; std::chrono::steady_clock::now() < until;) {
      after = std::max(after, rss_kib(daemon));
      std::this_thread::sleep_for(200ms);
    }
    MESSAGE("daemon RSS " << before / 1024 << " MiB before, " << after / 1024 << " MiB at most after");
    CHECK(after - before < 32 * 1024);
    release(stop[1], static_cast<int>(senders.size()));
    for (pid_t p : senders) exit_code_of(p);
    CHECK(env.vmctl({"list"}).exit_code == 0);
  }

  TEST_CASE("only authorized clients receive StateChanged") {
    HostileEnv env("");
    env.define({.name = "web1", .mac = "52:54:00:00:13:01"});
    const std::string socket = env.config().control_socket();
    int ready[2], stop[2];
    REQUIRE(::pipe2(ready, O_CLOEXEC) == 0);
    REQUIRE(::pipe2(stop, O_CLOEXEC) == 0);
    pid_t stranger = spawn_as(kStrangerUid, {}, [&] { return count_state_signals(socket, ready[1], stop[0]); });
    pid_t admin = spawn_as(kAdminUid, {kAdminGid}, [&] { return count_state_signals(socket, ready[1], stop[0]); });
    ::close(ready[1]);
    ::close(stop[0]);
    char c;
    for (int i = 0; i < 2; ++i) REQUIRE((wait_readable(ready[0], 30'000) && ::read(ready[0], &c, 1) == 1));
    auto start = env.vmctl({"start", "web1"});
    CHECK_MESSAGE(start.exit_code == 0, start.out);
    auto stop_vm = env.vmctl({"stop", "--force", "web1"});
    CHECK_MESSAGE(stop_vm.exit_code == 0, stop_vm.out);
    // Let the signals of the stop reach the clients that may have them.
    std::this_thread::sleep_for(500ms);
    release(stop[1], 2);
    int strangers_signals = exit_code_of(stranger), admins_signals = exit_code_of(admin);
    MESSAGE("stranger saw " << strangers_signals << ", admin saw " << admins_signals << " StateChanged");
    CHECK(strangers_signals == 0);
    CHECK(admins_signals >= 2);  // starting, running, stopping, stopped
    CHECK(admins_signals < 200);
    ::close(ready[0]);
  }

  TEST_CASE("a peer of the daemon's uid that floods or idles on the broker socket does not block the daemon") {
    vl::test::SystemEnv env;
    env.define({.name = "web1", .mac = "52:54:00:00:13:02"});
    const std::string helper_socket = env.config().helper_socket();
    int ready[2], stop[2];
    REQUIRE(::pipe2(ready, O_CLOEXEC) == 0);
    REQUIRE(::pipe2(stop, O_CLOEXEC) == 0);
    // 'nobody' is the daemon's uid here: the broker admits it. It sends requests and never
    // reads a reply, until its requests stop going out, then sits there.
    pid_t flooder = spawn_as(65534, {65534}, [&] {
      int fd = connect_unix(helper_socket, SOCK_SEQPACKET, false);
      if (fd < 0) return 1;
      std::string req = vl::encode_broker_request({vl::BrokerOp::kKill, vl::VmName::parse("nosuchvm").value(), SIGTERM});
      int sent = 0;
      for (auto until = std::chrono::steady_clock::now() + 20s; std::chrono::steady_clock::now() < until;) {
        pollfd p{fd, POLLOUT, 0};
        if (::poll(&p, 1, 2000) != 1 || (p.revents & (POLLERR | POLLHUP))) break;
        if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL | MSG_DONTWAIT) <= 0) break;
        ++sent;
      }
      std::fprintf(stderr, "flooder sent %d requests\n", sent);
      (void)::write(ready[1], "r", 1);
      char c;
      (void)::read(stop[0], &c, 1);
      return 0;
    });
    ::close(ready[1]);
    char c;
    REQUIRE(wait_readable(ready[0], 60'000));
    REQUIRE(::read(ready[0], &c, 1) == 1);
    // An idle connection of the daemon's uid on top.
    pid_t idler = spawn_as(65534, {65534}, [&] {
      int fd = connect_unix(helper_socket, SOCK_SEQPACKET, false);
      (void)::read(stop[0], &c, 1);
      return fd < 0;
    });
    ::close(stop[0]);
    auto start = vl::test::run_program("/usr/bin/timeout",
        {"timeout", "60", vl::test::build_path("VMLAUNCH_VMCTL"), "--config", env.config_path(), "start", "web1"});
    CHECK_MESSAGE(start.exit_code == 0, start.out << env.log());
    release(stop[1], 2);
    exit_code_of(flooder);
    exit_code_of(idler);
    ::close(ready[0]);
    CHECK(env.vmctl({"stop", "--force", "web1"}).exit_code == 0);
  }
}

TEST_SUITE("root/hostile_peer") {
  TEST_CASE("a client that makes the daemon log after its log reader is gone does not kill it (SIGPIPE)") {
    HostileEnv env("");
    env.stop_daemon();
    // The daemon again, its stderr a pipe whose reader goes away once it said it listens.
    int log[2];
    REQUIRE(::pipe2(log, O_CLOEXEC) == 0);
    vl::UniqueFd log_read(log[0]), log_write(log[1]);
    ::unlink(env.config().control_socket().c_str());
    auto daemon = vl::spawn({"/usr/bin/setpriv",
                             {"setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                              vl::test::build_path("VMLAUNCH_DAEMON"), "--config", env.config_path(), "run"},
                             {"PATH=/usr/bin:/bin"},
                             {{log_write.get(), 1}, {log_write.get(), 2}}});
    REQUIRE(daemon.ok());
    log_write.reset();
    REQUIRE(wait_readable(log_read.get(), 30'000));  // "listening on ..."
    log_read.reset();
    // Bytes that are no D-Bus handshake: the daemon drops the connection and says so.
    int fd = connect_unix(env.config().control_socket(), SOCK_STREAM, false);
    REQUIRE(fd >= 0);
    REQUIRE(::send(fd, "GET / HTTP/1.0\r\n\r\n", 18, MSG_NOSIGNAL) == 18);
    pollfd p{fd, POLLIN, 0};
    CHECK(::poll(&p, 1, 30'000) == 1);  // hung up on
    ::close(fd);
    auto list = vl::test::run_program("/usr/bin/timeout",
        {"timeout", "30", vl::test::build_path("VMLAUNCH_VMCTL"), "--config", env.config_path(), "list"});
    CHECK_MESSAGE(list.exit_code == 0, list.out);
    int status = 0;
    pid_t gone = ::waitpid(*daemon, &status, WNOHANG);
    CHECK_MESSAGE(gone == 0, "the daemon ended: " << std::string(WIFSIGNALED(status) ? ::strsignal(WTERMSIG(status)) : "exit"));
    ::kill(*daemon, SIGTERM);
    if (gone == 0) (void)::waitpid(*daemon, &status, 0);
  }
}
