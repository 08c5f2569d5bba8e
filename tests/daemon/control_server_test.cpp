// The control socket under hostile clients: the accept loop backs off instead of spinning when
// descriptors run out, and no client can make the daemon buffer an oversized message or hold
// a half-sent one open.
#include "daemon/control_server.h"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <systemd/sd-bus.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <cstring>
#include <fstream>
#include <functional>
#include <future>
#include <thread>
#include <vector>

#include "common/unique_fd.h"
#include "daemon/bus_connection.h"
#include "daemon/channel.h"
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

// The console socket of VM `vm` under runtime dir `dir`, listening as QEMU's does (backlog 1)
// and accepting only when the test says so.
vl::UniqueFd console_listener(const std::string& dir, const std::string& vm) {
  std::filesystem::create_directories(dir + "/vms/" + vm);
  vl::UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  (dir + "/vms/" + vm + "/console.sock").copy(sa.sun_path, sizeof sa.sun_path - 1);
  REQUIRE(::bind(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
  REQUIRE(::listen(fd.get(), 1) == 0);
  return fd;
}

// A listening control server on a temporary runtime directory whose admin group is the test
// process's own group (the test is the client); `adjust` may change the configuration first.
struct AdminServer {
  vl::test::TempDir dir;
  boost::asio::io_context io;
  vl::HostConfig config;
  vl::Manager manager;
  vl::ControlServer server;
  explicit AdminServer(const std::function<void(vl::HostConfig&)>& adjust = {})
      : config(admin_config(dir.path(), adjust)), manager(io, config), server(io, config, manager) {
    REQUIRE(server.listen().ok());
  }
  static vl::HostConfig admin_config(const std::string& dir, const std::function<void(vl::HostConfig&)>& adjust) {
    vl::HostConfig config = test_config(dir);
    config.admin_group = ::getgrgid(::getgid())->gr_name;
    if (adjust) adjust(config);
    return config;
  }
};

// The daemon's loop on a thread of its own, stopped and joined however the test ends.
struct Loop {
  boost::asio::io_context& io;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work{io.get_executor()};
  std::thread thread{[this] { io.run(); }};
  ~Loop() {
    work.reset();
    io.stop();
    thread.join();
  }
};

// A client connection to the control socket of `config`.
sd_bus* client_bus(const vl::HostConfig& config) {
  sd_bus* bus = nullptr;
  REQUIRE(sd_bus_new(&bus) >= 0);
  std::string address = "unix:path=" + config.control_socket();
  REQUIRE(sd_bus_set_address(bus, address.c_str()) >= 0);
  REQUIRE(sd_bus_start(bus) >= 0);
  return bus;
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

TEST_SUITE("daemon/channels") {
  // A console whose client reads nothing: once the client's socket is full (sd-bus asks the
  // kernel for an 8 MiB send buffer, 16 MiB for root) and kChannelHighWater messages wait in the
  // daemon, the daemon stops reading the VM's side, so the VM's writes stall at a bound instead
  // of the daemon buffering them or dropping the client; once the client reads, they flow again.
  TEST_CASE("a client that does not read pauses the console's source; it is neither buffered without bound nor dropped") {
    vl::test::TempDir dir;
    boost::asio::io_context io;
    vl::HostConfig config = test_config(dir.path());
    // The test process is the client: its own group is the admin group.
    config.admin_group = ::getgrgid(::getgid())->gr_name;
    vl::UniqueFd vm_listener = console_listener(dir.path(), "web1");
    vl::Manager manager(io, config);
    vl::ControlServer server(io, config, manager);
    REQUIRE(server.listen().ok());
    Loop loop{io};
    sd_bus* bus = client_bus(config);
    sd_bus_error error = SD_BUS_ERROR_NULL;
    sd_bus_message* reply = nullptr;
    int r = sd_bus_call_method(bus, nullptr, "/org/vmlaunch1", "org.vmlaunch.Manager1", "OpenConsole", &error, &reply,
                               "sb", "web1", 1);
    REQUIRE_MESSAGE(r >= 0, (error.message ? error.message : "?"));
    sd_bus_message_unref(reply);
    vl::UniqueFd vm(::accept4(vm_listener.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    REQUIRE(vm.valid());

    // Writes as the guest would, until nothing more goes for a second (or 64 MiB went).
    auto flood = [&] {
      std::vector<char> chunk(64 * 1024, 'x');
      size_t total = 0;
      auto idle_since = std::chrono::steady_clock::now();
      while (total < (64u << 20) && std::chrono::steady_clock::now() - idle_since < 1s) {
        pollfd p{vm.get(), POLLOUT, 0};
        (void)::poll(&p, 1, 100);
        ssize_t n = ::send(vm.get(), chunk.data(), chunk.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n > 0) total += static_cast<size_t>(n), idle_since = std::chrono::steady_clock::now();
      }
      return total;
    };
    size_t stalled_at = flood();
    MESSAGE("the VM side wrote " << (stalled_at >> 10) << " KiB before it stalled");
    CHECK(stalled_at < (24u << 20));  // socket buffers plus at most ~1 MiB in the daemon
    std::promise<size_t> channels;  // read on the loop's thread, which owns the table
    boost::asio::post(io, [&] { channels.set_value(vl::ChannelTable::size()); });
    CHECK(channels.get_future().get() == 1);  // the client was not dropped

    // The client reads what waits, until nothing more comes for a second; the console flows
    // again.
    size_t received = 0;
    auto deadline = std::chrono::steady_clock::now() + 60s;
    auto last = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() - last < 1s && std::chrono::steady_clock::now() < deadline) {
      sd_bus_message* m = nullptr;
      r = sd_bus_process(bus, &m);
      REQUIRE(r >= 0);
      if (m && sd_bus_message_is_signal(m, "org.vmlaunch.Manager1", "ChannelData")) {
        const void* data = nullptr;
        size_t size = 0;
        uint32_t id = 0;
        REQUIRE(sd_bus_message_read(m, "u", &id) >= 0);
        REQUIRE(sd_bus_message_read_array(m, 'y', &data, &size) >= 0);
        received += size;
        last = std::chrono::steady_clock::now();
      }
      sd_bus_message_unref(m);
      if (r == 0) sd_bus_wait(bus, 100000);
    }
    CHECK(received >= stalled_at / 2);
    CHECK(flood() > 0);

    sd_bus_flush_close_unref(bus);
  }
}

TEST_SUITE("daemon/channels") {
  // QEMU's console socket listens with a backlog of 1 and accepts only while no client is
  // connected; an emulator that is stopped (or frozen, or busy) accepts nothing. Connections the
  // daemon opened and closed meanwhile stay in that backlog, so a blocking connect would then
  // wait, and hold the daemon's one event loop, until the emulator runs again.
  TEST_CASE("a console socket that accepts nothing gets a clear refusal, and the daemon keeps answering") {
    AdminServer daemon;
    Loop loop{daemon.io};
    // Declared after the loop: closed first however the test ends, which frees a connect
    // stuck on it.
    vl::UniqueFd vm_listener = console_listener(daemon.dir.path(), "web1");
    sd_bus* bus = client_bus(daemon.config);
    REQUIRE(sd_bus_set_method_call_timeout(bus, 5'000'000) >= 0);

    bool refused = false;
    for (int attempt = 0; attempt < 4 && !refused; ++attempt) {
      sd_bus_error error = SD_BUS_ERROR_NULL;
      sd_bus_message* reply = nullptr;
      int r = sd_bus_call_method(bus, nullptr, "/org/vmlaunch1", "org.vmlaunch.Manager1", "OpenConsole", &error,
                                 &reply, "sb", "web1", 1);
      if (r < 0) {
        std::string why = std::string(error.name ? error.name : "?") + ": " + (error.message ? error.message : "?");
        INFO("attempt " << attempt << ": " << why);
        REQUIRE(sd_bus_error_has_name(&error, "org.vmlaunch.Error.Conflict"));  // not a timeout
        CHECK(std::string(error.message).find("'web1'") != std::string::npos);
        refused = true;
      } else {
        uint32_t id = 0;
        REQUIRE(sd_bus_message_read(reply, "u", &id) >= 0);
        REQUIRE(sd_bus_call_method(bus, nullptr, "/org/vmlaunch1", "org.vmlaunch.Manager1", "CloseChannel", &error,
                                   nullptr, "u", id) >= 0);
      }
      sd_bus_message_unref(reply);
      sd_bus_error_free(&error);
    }
    CHECK(refused);
    // The daemon answers other calls meanwhile.
    sd_bus_error error = SD_BUS_ERROR_NULL;
    CHECK(sd_bus_call_method(bus, nullptr, "/org/vmlaunch1", "org.vmlaunch.Manager1", "List", &error, nullptr, "") >= 0);
    sd_bus_error_free(&error);

    // Once the emulator takes what waits, the console opens again.
    REQUIRE(::fcntl(vm_listener.get(), F_SETFL, O_NONBLOCK) == 0);
    for (;;) {
      vl::UniqueFd stale(::accept4(vm_listener.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
      if (!stale) break;
    }
    sd_bus_message* reply = nullptr;
    int r = sd_bus_call_method(bus, nullptr, "/org/vmlaunch1", "org.vmlaunch.Manager1", "OpenConsole", &error, &reply,
                               "sb", "web1", 1);
    CHECK_MESSAGE(r >= 0, (error.message ? error.message : "?"));
    sd_bus_message_unref(reply);
    sd_bus_error_free(&error);
    sd_bus_flush_close_unref(bus);
  }
}

TEST_SUITE("daemon/serial_log") {
  // Each ReadSerialLog reply carries up to 2 MiB (both parts of the log). A client that sends
  // calls and reads no reply would otherwise have them all built and queued in the daemon: the
  // connection limit counts messages (1024), not bytes, so that was up to 2 GiB per connection.
  TEST_CASE("a client that asks for the serial log again and again without reading gets refusals, not gigabytes queued") {
    AdminServer daemon([](vl::HostConfig& config) { config.log_dir = config.runtime_dir + "/log"; });
    std::filesystem::create_directories(daemon.config.log_dir);
    for (const char* part : {"/web1.serial.log", "/web1.serial.log.1"})
      std::ofstream(daemon.config.log_dir + part) << std::string(vl::kSerialLogPartBytes, 'x');
    Loop loop{daemon.io};
    sd_bus* bus = client_bus(daemon.config);

    constexpr int kCalls = 60;
    struct Count {
      int logs = 0, refused = 0, other = 0;
    } count;
    auto on_reply = [](sd_bus_message* m, void* userdata, sd_bus_error*) -> int {
      auto* c = static_cast<Count*>(userdata);
      const void* data = nullptr;
      size_t size = 0;
      if (sd_bus_message_is_method_error(m, "org.vmlaunch.Error.Conflict")) ++c->refused;
      else if (!sd_bus_message_is_method_error(m, nullptr) && sd_bus_message_read_array(m, 'y', &data, &size) >= 0 &&
               size == 2 * vl::kSerialLogPartBytes)
        ++c->logs;
      else ++c->other;
      return 0;
    };
    for (int i = 0; i < kCalls; ++i)
      REQUIRE(sd_bus_call_method_async(bus, nullptr, nullptr, "/org/vmlaunch1", "org.vmlaunch.Manager1", "ReadSerialLog", on_reply,
                                       &count, "s", "web1") >= 0);
    REQUIRE(sd_bus_flush(bus) >= 0);
    // Unread, until the daemon has answered what it was sent: what it queues for the client no
    // longer changes.
    auto queued = [&] {
      std::promise<uint64_t> total;
      boost::asio::post(daemon.io, [&] {
        uint64_t n = 0;
        for (auto& [b, weak] : vl::BusConnection::registry())
          if (auto conn = weak.lock()) n += conn->queued_out();
        total.set_value(n);
      });
      return total.get_future().get();
    };
    uint64_t last = UINT64_MAX;
    int same = 0;
    for (auto deadline = std::chrono::steady_clock::now() + 60s; same < 5 && std::chrono::steady_clock::now() < deadline;) {
      uint64_t now = queued();
      same = now == last ? same + 1 : 0;
      last = now;
      std::this_thread::sleep_for(200ms);
    }
    MESSAGE("messages queued in the daemon for the client that does not read: " << last);

    for (auto deadline = std::chrono::steady_clock::now() + 120s;
         count.logs + count.refused + count.other < kCalls && std::chrono::steady_clock::now() < deadline;) {
      int r = sd_bus_process(bus, nullptr);
      REQUIRE(r >= 0);
      if (r == 0) sd_bus_wait(bus, 100000);
    }
    MESSAGE(count.logs << " logs, " << count.refused << " refused");
    CHECK(count.other == 0);
    CHECK(count.logs + count.refused == kCalls);
    CHECK(count.logs >= 1);
    CHECK(count.logs <= 16);  // what the kernel's socket buffers hold, and a few replies queued in the daemon

    // A client that reads gets the log every time.
    for (int i = 0; i < 3; ++i) {
      sd_bus_error error = SD_BUS_ERROR_NULL;
      sd_bus_message* reply = nullptr;
      REQUIRE(sd_bus_call_method(bus, nullptr, "/org/vmlaunch1", "org.vmlaunch.Manager1", "ReadSerialLog", &error, &reply,
                                 "s", "web1") >= 0);
      const void* data = nullptr;
      size_t size = 0;
      REQUIRE(sd_bus_message_read_array(reply, 'y', &data, &size) >= 0);
      CHECK(size == 2 * vl::kSerialLogPartBytes);
      sd_bus_message_unref(reply);
    }
    sd_bus_flush_close_unref(bus);
  }
}
