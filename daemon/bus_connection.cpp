#include "daemon/bus_connection.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>

#include "common/control_protocol.h"

namespace vl {

namespace asio = boost::asio;

Peer peer_of(int fd) {
  Peer peer;
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
    peer.uid = cred.uid;
    peer.groups.push_back(cred.gid);
  }
  gid_t groups[256];
  len = sizeof groups;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) == 0)
    peer.groups.insert(peer.groups.end(), groups, groups + len / sizeof(gid_t));
  return peer;
}

BusConnection::BusConnection(asio::io_context& io, UniqueFd socket, Peer peer)
    : socket_(std::move(socket)), watch_(io), timer_(io), peer_(std::move(peer)) {}

// sd-bus closes its socket; watch_ closes (and unregisters) the dup. Nobody releases or
// closes a number it does not own.
BusConnection::~BusConnection() {
  if (bus_) {
    registry().erase(bus_);
    sd_bus_flush_close_unref(bus_);
  }
}

std::map<sd_bus*, std::weak_ptr<BusConnection>>& BusConnection::registry() {
  static std::map<sd_bus*, std::weak_ptr<BusConnection>> r;
  return r;
}

std::shared_ptr<BusConnection> BusConnection::of(sd_bus_message* m) {
  auto& reg = registry();
  auto it = reg.find(sd_bus_message_get_bus(m));
  return it == reg.end() ? nullptr : it->second.lock();
}

Result<void> BusConnection::start(const sd_bus_vtable* vtable, void* userdata) {
  UniqueFd watched(::fcntl(socket_.get(), F_DUPFD_CLOEXEC, 3));
  if (!watched) return Error::from_errno("duplicate the control connection's socket");
  boost::system::error_code ec;
  watch_.assign(watched.get(), ec);
  if (ec) return Error::make(ErrorCode::kSystem, "watch the control connection: " + ec.message());
  (void)watched.release();  // watch_ owns it now
  sd_id128_t id;
  int r = sd_id128_randomize(&id);
  if (r >= 0) r = sd_bus_new(&bus_);
  if (r >= 0) r = sd_bus_set_fd(bus_, socket_.get(), socket_.get());
  if (r >= 0) (void)socket_.release();  // sd-bus owns it now, and closes it when the client leaves
  if (r >= 0) r = sd_bus_set_server(bus_, 1, id);
  if (r >= 0) r = sd_bus_set_anonymous(bus_, 1);
  if (r >= 0) r = sd_bus_add_object_vtable(bus_, nullptr, kControlPath, kControlInterface, vtable, userdata);
  if (r >= 0) r = sd_bus_start(bus_);
  if (r < 0) return Error::from_errno(-r, "set up control connection");
  registry()[bus_] = weak_from_this();
  return {};
}

void BusConnection::schedule_pump() {
  asio::post(watch_.get_executor(), [self = shared_from_this()] { self->pump(); });
}

void BusConnection::pump() {
  if (closed_) return;
  for (;;) {
    int r = sd_bus_process(bus_, nullptr);
    if (r < 0) {  // the client went away (or broke the protocol): drop the connection
      closed_ = true;
      registry().erase(bus_);
      boost::system::error_code ignored;
      watch_.close(ignored);  // our dup: unregistered and closed now, its waits cancelled
      timer_.cancel();
      return;
    }
    if (r == 0) break;
  }
  int events = sd_bus_get_events(bus_);
  auto self = shared_from_this();
  if ((events & POLLIN) && !waiting_read_) {
    waiting_read_ = true;
    watch_.async_wait(asio::posix::stream_descriptor::wait_read, [self](boost::system::error_code ec) {
      self->waiting_read_ = false;
      if (!ec) self->pump();
    });
  }
  if ((events & POLLOUT) && !waiting_write_) {
    waiting_write_ = true;
    watch_.async_wait(asio::posix::stream_descriptor::wait_write, [self](boost::system::error_code ec) {
      self->waiting_write_ = false;
      if (!ec) self->pump();
    });
  }
  uint64_t usec = UINT64_MAX;
  if (sd_bus_get_timeout(bus_, &usec) >= 0 && usec != UINT64_MAX) {
    timer_.expires_at(std::chrono::steady_clock::time_point(std::chrono::microseconds(usec)));
    timer_.async_wait([self](boost::system::error_code ec) {
      if (!ec) self->pump();
    });
  }
}

}  // namespace vl
