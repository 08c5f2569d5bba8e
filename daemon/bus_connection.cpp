#include "daemon/bus_connection.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <utility>

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
  sockaddr_un name{};
  len = sizeof name;
  constexpr socklen_t kPathAt = offsetof(sockaddr_un, sun_path);
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&name), &len) == 0 && len > kPathAt + 1 && name.sun_path[0] == '\0')
    peer.abstract_name.assign(name.sun_path + 1, std::min<size_t>(len - kPathAt - 1, sizeof name.sun_path - 1));
  return peer;
}

BusConnection::BusConnection(asio::io_context& io, UniqueFd socket, Identity who, BusLimits limits)
    : socket_(std::move(socket)),
      client_(io),
      feed_(io),
      timer_(io),
      deadline_(io),
      lifetime_(io),
      identity_(std::move(who)),
      limits_(limits),
      framer_(limits.max_message) {}

// sd-bus closes its two descriptors; client_ and feed_ close (and unregister) ours. Nobody
// releases or closes a number it does not own. No flush: a client that does not read would
// hold the daemon in it.
BusConnection::~BusConnection() {
  if (bus_) {
    registry().erase(bus_);
    sd_bus_close(bus_);
    sd_bus_unref(bus_);
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
  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, pair) < 0)
    return Error::from_errno("create the control connection's relay");
  UniqueFd feed(pair[0]), bus_input(pair[1]);
  boost::system::error_code ec;
  client_.assign(watched.get(), ec);
  if (ec) return Error::make(ErrorCode::kSystem, "watch the control connection: " + ec.message());
  (void)watched.release();  // client_ owns it now
  feed_.assign(feed.get(), ec);
  if (ec) return Error::make(ErrorCode::kSystem, "watch the control connection's relay: " + ec.message());
  (void)feed.release();  // feed_ owns it now
  sd_id128_t id;
  int r = sd_id128_randomize(&id);
  if (r >= 0) r = sd_bus_new(&bus_);
  if (r >= 0) r = sd_bus_set_fd(bus_, bus_input.get(), socket_.get());
  if (r >= 0) {  // sd-bus owns both now, and closes them when the client leaves
    (void)bus_input.release();
    (void)socket_.release();
  }
  if (r >= 0) r = sd_bus_set_server(bus_, 1, id);
  // The peer was identified at admission (its socket's credentials, or its certificate);
  // sd-bus would see only the relay, whose peer is the daemon itself.
  if (r >= 0) r = sd_bus_set_anonymous(bus_, 1);
  // Descriptors pass through the relay with the bytes they came with (read_client).
  if (r >= 0) r = sd_bus_negotiate_fds(bus_, 1);
  if (r >= 0) r = sd_bus_add_object_vtable(bus_, nullptr, kControlPath, kControlInterface, vtable, userdata);
  if (r >= 0) r = sd_bus_start(bus_);
  if (r < 0) return Error::from_errno(-r, "set up control connection");
  registry()[bus_] = weak_from_this();
  track_deadline();  // the handshake is due from now on
  if (limits_.lifetime.count() > 0) {
    lifetime_.expires_after(limits_.lifetime);
    lifetime_.async_wait([self = shared_from_this()](boost::system::error_code wait_ec) {
      if (!wait_ec) self->drop("open longer than " + std::to_string(self->limits_.lifetime.count()) + " ms");
    });
  }
  return {};
}

void BusConnection::schedule_pump() {
  asio::post(client_.get_executor(), [self = shared_from_this()] { self->pump(); });
}

void BusConnection::pump() {
  if (closed_) return;
  for (;;) {
    int r = sd_bus_process(bus_, nullptr);
    if (r < 0) return drop("");  // the client went away (or broke the protocol)
    if (r == 0) break;
  }
  uint64_t queued = queued_out();
  if (queued > limits_.max_queued_out)
    return drop("it does not read what it is sent (" + std::to_string(queued) + " messages queued)");
  run_drained_waiters();
  int events = sd_bus_get_events(bus_);
  auto self = shared_from_this();
  // sd-bus wants input: read more from the client once the last chunk is all passed on.
  if ((events & POLLIN) && !reading_ && !client_eof_ && in_fed_ == in_len_) read_client();
  if ((events & POLLOUT) && !waiting_write_) {
    waiting_write_ = true;
    client_.async_wait(asio::posix::stream_descriptor::wait_write, [self](boost::system::error_code ec) {
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

uint64_t BusConnection::queued_out() const {
  uint64_t queued = 0;
  if (!bus_ || sd_bus_get_n_queued_write(bus_, &queued) < 0) return 0;
  return queued;
}

void BusConnection::when_drained(uint64_t low_water, std::function<void()> ready) {
  if (closed_) return;
  drained_waiters_.emplace_back(low_water, std::move(ready));
  schedule_pump();  // runs it from the loop if the queue is short enough already
}

void BusConnection::on_close(std::function<void()> closed) {
  if (closed_) return asio::post(client_.get_executor(), std::move(closed));
  close_waiters_.push_back(std::move(closed));
}

// Waiters run from the event loop (pump() is), each at most once; one may add another.
void BusConnection::run_drained_waiters() {
  if (drained_waiters_.empty()) return;
  uint64_t queued = queued_out();
  std::vector<std::function<void()>> ready;
  std::erase_if(drained_waiters_, [&](auto& w) {
    if (queued > w.first) return false;
    ready.push_back(std::move(w.second));
    return true;
  });
  for (auto& f : ready) f();
}

void BusConnection::read_client() {
  reading_ = true;
  client_.async_wait(asio::posix::stream_descriptor::wait_read, [self = shared_from_this()](boost::system::error_code ec) {
    self->reading_ = false;
    if (self->closed_) return;
    if (ec || !self->receive_client()) {
      if (!ec) return self->read_client();  // a spurious wakeup: wait again
      self->client_eof_ = true;
      ::shutdown(self->feed_.native_handle(), SHUT_WR);
      return self->pump();
    }
  });
}

// recvmsg, not read: a client's descriptors (SCM_RIGHTS) arrive with the bytes of the message
// that carries them, and go on to sd-bus with those bytes (feed_bus).
bool BusConnection::receive_client() {
  iovec iov{in_.data(), in_.size()};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerRead)];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n = ::recvmsg(client_.native_handle(), &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return false;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      in_fds_.emplace_back(fd);
    }
  }
  if (n <= 0) {  // EOF (or a dead socket): pass the end on; sd-bus drops the connection after the rest
    in_fds_.clear();
    client_eof_ = true;
    ::shutdown(feed_.native_handle(), SHUT_WR);
    pump();
    return true;
  }
  // The kernel dropped descriptors that did not fit: the message they came with cannot be whole.
  if (msg.msg_flags & MSG_CTRUNC) {
    drop("it sent more than " + std::to_string(kMaxFdsPerRead) + " descriptors at once");
    return true;
  }
  on_client_bytes(static_cast<size_t>(n));
  return true;
}

// Bytes reach sd-bus only after the framer has accepted them: an oversized message is refused
// on its header, before its body is read.
void BusConnection::on_client_bytes(size_t n) {
  received_ += n;
  if (limits_.byte_budget && received_ > limits_.byte_budget)
    return drop("it sent more than " + std::to_string(limits_.byte_budget) + " bytes");
  if (auto ok = framer_.consume({in_.data(), n}); !ok) return drop(ok.error().message());
  track_deadline();
  in_len_ = n;
  in_fed_ = 0;
  feed_bus();
}

void BusConnection::feed_bus() {
  bool pumped = false;
  while (in_fed_ < in_len_) {
    iovec iov{in_.data() + in_fed_, in_len_ - in_fed_};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerRead)];
    if (!in_fds_.empty()) {  // with the first byte that goes, as they came
      msg.msg_control = control;
      msg.msg_controllen = CMSG_SPACE(sizeof(int) * in_fds_.size());
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * in_fds_.size());
      for (size_t i = 0; i < in_fds_.size(); ++i) {
        int fd = in_fds_[i].get();
        std::memcpy(CMSG_DATA(c) + i * sizeof(int), &fd, sizeof fd);
      }
    }
    ssize_t k = ::sendmsg(feed_.native_handle(), &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (k > 0) {
      in_fed_ += static_cast<size_t>(k);
      in_fds_.clear();  // sd-bus holds its own copies now
      continue;
    }
    if (k < 0 && errno == EINTR) continue;
    if (k < 0 && errno == EAGAIN && !std::exchange(pumped, true)) {  // let sd-bus drain its input
      pump();
      if (closed_) return;
      continue;
    }
    if (k < 0 && errno == EAGAIN) {
      feed_waiting_ = true;
      feed_.async_wait(asio::posix::stream_descriptor::wait_write, [self = shared_from_this()](boost::system::error_code ec) {
        self->feed_waiting_ = false;
        if (!ec && !self->closed_) self->feed_bus();
      });
      return;
    }
    return drop(std::string("relay to sd-bus: ") + std::strerror(errno));
  }
  pump();
}

// One deadline at a time, for the handshake or the message in progress; a message that
// completes in time disarms it, the next one re-arms it.
void BusConnection::track_deadline() {
  if (!framer_.mid_message()) {
    if (deadline_for_ != UINT64_MAX) {
      deadline_for_ = UINT64_MAX;
      ++deadline_gen_;
      deadline_.cancel();
    }
    return;
  }
  if (deadline_for_ == framer_.completed()) return;
  deadline_for_ = framer_.completed();
  uint64_t gen = ++deadline_gen_;
  deadline_.expires_after(limits_.message_deadline);
  deadline_.async_wait([self = shared_from_this(), gen](boost::system::error_code ec) {
    if (ec || self->closed_ || gen != self->deadline_gen_) return;
    self->drop((self->framer_.completed() == 0 ? "handshake or first message" : "a message") +
               std::string(" not complete within ") + std::to_string(self->limits_.message_deadline.count()) +
               " ms");
  });
}

void BusConnection::drop(std::string reason) {
  if (closed_) return;
  closed_ = true;
  if (!reason.empty())
    std::fprintf(stderr, "vmlaunchd: Dropped the control connection of %s: %s\n", identity_.who.c_str(),
                 reason.c_str());
  close_reason_ = std::move(reason);
  drained_waiters_.clear();
  for (auto& f : std::exchange(close_waiters_, {})) asio::post(client_.get_executor(), std::move(f));
  registry().erase(bus_);
  sd_bus_close(bus_);  // closes sd-bus's descriptors; nothing is flushed to a dropped client
  boost::system::error_code ignored;
  client_.close(ignored);  // our dup: unregistered and closed now, its waits cancelled
  feed_.close(ignored);
  timer_.cancel();
  deadline_.cancel();
  lifetime_.cancel();
}

}  // namespace vl
