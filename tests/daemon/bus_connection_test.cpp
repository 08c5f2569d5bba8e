// The control connection object: sd-bus and the Asio loop never share a descriptor number, so
// a client leaving cannot take another descriptor's registration with it.
#include "daemon/bus_connection.h"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "common/control_protocol.h"
#include "common/unique_fd.h"

namespace asio = boost::asio;
using namespace std::chrono_literals;

namespace {

const sd_bus_vtable kEmpty[] = {SD_BUS_VTABLE_START(0), SD_BUS_VTABLE_END};

// A client that authenticates, pings the server (sd-bus answers Peer.Ping itself) and leaves.
// The client end of a connection on `fd`, authenticated.
sd_bus* client_bus(int fd) {
  sd_bus* bus = nullptr;
  REQUIRE(sd_bus_new(&bus) >= 0);
  REQUIRE(sd_bus_set_fd(bus, fd, fd) >= 0);
  REQUIRE(sd_bus_set_anonymous(bus, 1) >= 0);
  REQUIRE(sd_bus_start(bus) >= 0);
  return bus;
}

void ping_and_leave(int fd) {
  sd_bus* bus = client_bus(fd);
  sd_bus_error error = SD_BUS_ERROR_NULL;
  sd_bus_message* reply = nullptr;
  int r = sd_bus_call_method(bus, nullptr, "/", "org.freedesktop.DBus.Peer", "Ping", &error, &reply, "");
  CHECK_MESSAGE(r >= 0, (error.message ? error.message : ""));
  sd_bus_error_free(&error);
  sd_bus_message_unref(reply);
  sd_bus_flush_close_unref(bus);  // closes fd
}

bool is_open(int fd) { return ::fcntl(fd, F_GETFD) >= 0; }

// A method that takes a descriptor ('h') and notes the inode it refers to.
ino_t g_taken_inode = 0;
int method_take(sd_bus_message* m, void*, sd_bus_error*) {
  int fd = -1;
  if (int r = sd_bus_message_read(m, "h", &fd); r < 0) return r;
  struct stat st {};
  if (::fstat(fd, &st) == 0) g_taken_inode = st.st_ino;
  return sd_bus_reply_method_return(m, "");
}
const sd_bus_vtable kTake[] = {SD_BUS_VTABLE_START(0),
                               SD_BUS_METHOD("Take", "h", "", method_take, SD_BUS_VTABLE_UNPRIVILEGED), SD_BUS_VTABLE_END};

// A client that passes `passed` to Take (kControlPath: the vtable's object).
void take(int fd, int passed) {
  sd_bus* bus = client_bus(fd);
  sd_bus_error error = SD_BUS_ERROR_NULL;
  sd_bus_message* reply = nullptr;
  int r = sd_bus_call_method(bus, nullptr, vl::kControlPath, vl::kControlInterface, "Take", &error, &reply, "h", passed);
  CHECK_MESSAGE(r >= 0, (error.message ? error.message : ""));
  sd_bus_error_free(&error);
  sd_bus_message_unref(reply);
  sd_bus_flush_close_unref(bus);
}

}  // namespace

TEST_SUITE("daemon/bus_connection") {
  TEST_CASE("a departed client's descriptor number, reused, stays watched by the event loop") {
    asio::io_context io;
    int fds[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
    const int server_fd = fds[0];
    auto conn = std::make_shared<vl::BusConnection>(io, vl::UniqueFd(server_fd), vl::local_identity(0, {}, {}));
    REQUIRE(conn->start(kEmpty, nullptr).ok());
    conn->pump();
    std::thread client(ping_and_leave, fds[1]);
    for (auto until = std::chrono::steady_clock::now() + 5s; !conn->closed() && std::chrono::steady_clock::now() < until;)
      io.run_for(10ms);
    client.join();
    REQUIRE(conn->closed());
    io.restart();
    io.poll();  // the cancelled waits complete; the test still holds the connection

    // The daemon opens something else (a new client, a QMP socket, a pidfd) and the kernel
    // hands out the number sd-bus just closed; it is watched by the same loop.
    const bool reusable = !is_open(server_fd);
    int other[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, other) == 0);
    vl::UniqueFd peer(other[1]);
    vl::UniqueFd mine(other[0]);
    if (reusable && mine.get() != server_fd) {
      REQUIRE(::dup3(mine.get(), server_fd, O_CLOEXEC) == server_fd);
      mine.reset(server_fd);
    }
    // Either sd-bus closed the number and it is reused now, or nobody closed it (then only
    // the connection's own copy may hold it, and the kernel hands out another number).
    CHECK(reusable);
    const int watched_fd = mine.release();
    asio::posix::stream_descriptor watched(io, watched_fd);
    bool readable = false;
    watched.async_wait(asio::posix::stream_descriptor::wait_read, [&](boost::system::error_code ec) {
      readable = !ec;
    });
    io.poll();

    conn.reset();  // the old connection goes: it must not unregister the new descriptor
    REQUIRE(::write(peer.get(), "x", 1) == 1);
    io.restart();
    for (auto until = std::chrono::steady_clock::now() + 2s; !readable && std::chrono::steady_clock::now() < until;)
      io.run_for(10ms);
    CHECK_MESSAGE(readable, "the event loop stopped watching a live descriptor");
  }

  TEST_CASE("a connection whose client left has closed every descriptor it owned") {
    asio::io_context io;
    int fds[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
    vl::UniqueFd client(fds[1]);
    asio::steady_timer warm_up(io);  // the loop's own descriptors (epoll, timerfd, eventfd)
    {
      asio::posix::stream_descriptor d(io, ::dup(fds[1]));
    }
    int before = 0;
    for (int fd = 0; fd < 1024; ++fd) before += is_open(fd);
    std::weak_ptr<vl::BusConnection> weak;
    {
      auto conn = std::make_shared<vl::BusConnection>(io, vl::UniqueFd(fds[0]), vl::local_identity(0, {}, {}));
      REQUIRE(conn->start(kEmpty, nullptr).ok());
      conn->pump();
      weak = conn;
    }
    client.reset();
    for (auto until = std::chrono::steady_clock::now() + 5s; !weak.expired() && std::chrono::steady_clock::now() < until;) {
      io.restart();
      io.run_for(10ms);
    }
    REQUIRE(weak.expired());  // nothing keeps a departed client's connection alive
    int after = 0;
    for (int fd = 0; fd < 1024; ++fd) after += is_open(fd);
    CHECK(after == before - 2);  // the accepted socket and the client's end; no copy left behind
  }
  TEST_CASE("a descriptor a client sends arrives with its message; more than 4 in one read drop the connection") {
    asio::io_context io;
    int fds[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
    auto conn = std::make_shared<vl::BusConnection>(io, vl::UniqueFd(fds[0]), vl::local_identity(0, {}, {}));
    REQUIRE(conn->start(kTake, nullptr).ok());
    conn->pump();
    int pipe_fds[2];
    REQUIRE(::pipe2(pipe_fds, O_CLOEXEC) == 0);
    vl::UniqueFd pipe_read(pipe_fds[0]), pipe_write(pipe_fds[1]);
    struct stat st {};
    REQUIRE(::fstat(pipe_read.get(), &st) == 0);
    g_taken_inode = 0;
    std::thread client(take, fds[1], pipe_read.get());
    for (auto until = std::chrono::steady_clock::now() + 5s; !conn->closed() && std::chrono::steady_clock::now() < until;)
      io.run_for(10ms);
    client.join();
    CHECK(g_taken_inode == st.st_ino);  // the very pipe, through the relay

    // Five descriptors with one byte, before the handshake is even done: dropped, saying why.
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
    vl::UniqueFd hostile(fds[1]);
    auto second = std::make_shared<vl::BusConnection>(io, vl::UniqueFd(fds[0]), vl::local_identity(0, {}, {}));
    REQUIRE(second->start(kTake, nullptr).ok());
    second->pump();
    char byte = 0;
    iovec iov{&byte, 1};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 5)] = {};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * 5);
    int five[5];
    for (int& f : five) f = pipe_read.get();
    std::memcpy(CMSG_DATA(c), five, sizeof five);
    REQUIRE(::sendmsg(hostile.get(), &msg, 0) == 1);
    io.restart();
    for (auto until = std::chrono::steady_clock::now() + 5s; !second->closed() && std::chrono::steady_clock::now() < until;)
      io.run_for(10ms);
    REQUIRE(second->closed());
    CHECK_MESSAGE(second->close_reason().find("more than 4 descriptors at once") != std::string::npos, second->close_reason());
  }
}

TEST_SUITE("daemon/bus_framer") {
  std::vector<uint8_t> bytes(std::string_view s) { return {s.begin(), s.end()}; }

  std::vector<uint8_t> header(char order, uint32_t body, uint32_t fields) {
    std::vector<uint8_t> h = {static_cast<uint8_t>(order), 1, 0, 1};
    auto put = [&](uint32_t v) {
      for (int i = 0; i < 4; ++i)
        h.push_back(static_cast<uint8_t>(order == 'l' ? v >> (8 * i) : v >> (8 * (3 - i))));
    };
    put(body), put(7), put(fields);
    return h;
  }

  TEST_CASE("messages are delimited by their headers, in either byte order, fed in any pieces") {
    vl::BusFramer f(4096);
    CHECK(f.mid_message());  // the handshake is due
    REQUIRE(f.consume(bytes(std::string_view("\0AUTH EXTERNAL 30\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n", 45))).ok());
    CHECK_FALSE(f.mid_message());
    auto h = header('l', 100, 13);  // 16 + 16 (13 padded to 8) + 100
    std::vector<uint8_t> msg = h;
    msg.resize(132, 0);
    for (uint8_t b : msg) REQUIRE(f.consume({&b, 1}).ok());
    CHECK(f.completed() == 1);
    CHECK_FALSE(f.mid_message());
    auto big_endian = header('B', 8, 0);
    big_endian.resize(24, 0);
    REQUIRE(f.consume(big_endian).ok());
    CHECK(f.completed() == 2);
    REQUIRE(f.consume(std::vector<uint8_t>(h.begin(), h.begin() + 3)).ok());
    CHECK(f.mid_message());
  }

  TEST_CASE("oversized messages, bad headers and endless handshakes are refused") {
    auto after_begin = [] {
      vl::BusFramer f(4096);
      REQUIRE(f.consume(bytes(std::string_view("\0BEGIN\r\n", 8))).ok());
      return f;
    };
    auto f = after_begin();
    auto r = f.consume(header('l', 119u << 20, 0));
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().message().find("exceeds the limit of 4096 bytes") != std::string::npos);
    f = after_begin();
    CHECK_FALSE(f.consume(header('l', 4000, 200)).ok());  // the field array counts too
    f = after_begin();
    CHECK_FALSE(f.consume(header('x', 8, 0)).ok());
    vl::BusFramer no_nul(4096);
    CHECK_FALSE(no_nul.consume(bytes("AUTH")).ok());
    vl::BusFramer endless(4096);
    CHECK_FALSE(endless.consume(bytes(std::string(1, '\0') + std::string(600, 'A'))).ok());
    vl::BusFramer chatty(4096);
    std::string lines(1, '\0');
    for (int i = 0; i < 17; ++i) lines += "DATA\r\n";
    CHECK_FALSE(chatty.consume(bytes(lines)).ok());
  }
}
