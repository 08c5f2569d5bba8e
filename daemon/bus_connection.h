// One control-socket client: an sd-bus server object on the accepted socket, pumped by the
// daemon's Asio event loop.
//
// Every descriptor has one owner (house rule 18): sd-bus owns the accepted socket (it writes
// replies there) and closes it when the client leaves; the event loop reads and watches a dup
// of it that this object owns and closes itself. Watching sd-bus's own number instead let the
// kernel hand that number to a new client, a QMP socket or a pidfd after sd-bus closed it, and
// the departed connection then removed the newcomer's registration from epoll: the daemon
// silently stopped watching live descriptors (issue 9, item 1).
//
// Input is relayed, not read by sd-bus from the client: this object reads the client's bytes,
// lets a BusFramer check where each message ends and that it is within the limit, and only then
// writes them into a socketpair whose other end is sd-bus's input. sd-bus itself accepts
// messages up to 128 MiB and buffers them as they arrive; this way no client gets more than
// Limits::max_message bytes into the daemon, and no handshake or message may take longer than
// Limits::message_deadline to arrive. Descriptors a client sends (SCM_RIGHTS, D-Bus type 'h':
// `vmctl start --ask-passphrase`) travel with the bytes they came with, at most
// kMaxFdsPerRead at a time; more in one read drop the connection.
#pragma once

#include <sys/types.h>
#include <systemd/sd-bus.h>

#include "daemon/asio.h"
#include <array>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/unique_fd.h"
#include "daemon/authorization.h"
#include "daemon/bus_framer.h"

namespace vl {

/// The peer's credentials, read once at accept time (SO_PEERCRED, SO_PEERGROUPS), and the
/// abstract name its socket is bound to, if any (what it says of itself, not a credential).
struct Peer {
  uid_t uid = static_cast<uid_t>(-1);
  std::vector<gid_t> groups;
  std::string abstract_name;  ///< without the leading NUL; "" if none
};

/// Reads the credentials and name of the process at the other end of a connected unix socket.
Peer peer_of(int fd);

/// What one connection may cost the daemon.
struct BusLimits {
  /// The largest message accepted, header included.
  size_t max_message = size_t{1} << 20;
  /// The handshake, and each message once its first byte arrived, must be complete by then.
  std::chrono::milliseconds message_deadline{10'000};
  /// Replies and signals queued for a client that does not read them, before it is dropped.
  uint64_t max_queued_out = 1024;
  /// Bytes the client may send over the connection's life; 0: no limit.
  uint64_t byte_budget = 0;
  /// How long the connection may live; 0: no limit.
  std::chrono::milliseconds lifetime{0};
};

/// The most descriptors one read from a client may carry: a method takes one at most.
inline constexpr size_t kMaxFdsPerRead = 4;

class BusConnection final : public std::enable_shared_from_this<BusConnection> {
 public:
  /// Takes the accepted socket; start() hands it to sd-bus.
  /// `socket` carries the client's D-Bus stream (the accepted unix socket, or the daemon's end
  /// of a TLS relay); `who` is the client as admitted, for the method handlers' checks.
  BusConnection(boost::asio::io_context& io, UniqueFd socket, Identity who, BusLimits limits = {});
  ~BusConnection();
  BusConnection(const BusConnection&) = delete;
  BusConnection& operator=(const BusConnection&) = delete;

  /// Sets up the sd-bus server on the socket and serves `vtable` at kControlPath.
  Result<void> start(const sd_bus_vtable* vtable, void* userdata);
  /// Processes what sd-bus has to do, then waits for the socket or sd-bus's timeout.
  void pump();
  /// Pumps from the event loop, never from inside sd_bus_process (which must not recurse):
  /// for replies and signals queued by handlers.
  void schedule_pump();
  const Identity& identity() const { return identity_; }
  sd_bus* bus() const { return bus_; }
  /// True once the client went away (or broke the protocol or a limit) and the connection was
  /// dropped.
  bool closed() const { return closed_; }
  /// Why the connection was dropped by the daemon ("" if the client left or it is open).
  const std::string& close_reason() const { return close_reason_; }

  /// Messages queued for the client right now (replies and signals not yet written).
  uint64_t queued_out() const;
  /// Calls `ready` (once, from the event loop) when at most `low_water` messages are queued
  /// for the client, at once if that is so now; dropped if the connection closes first.
  /// Channels use it to pause their source while a client reads slowly (channel.h).
  void when_drained(uint64_t low_water, std::function<void()> ready);
  /// Calls `closed` (once) when the connection is dropped or the client leaves.
  void on_close(std::function<void()> closed);

  /// The live connections, by their sd-bus object (method handlers find their peer here).
  static std::map<sd_bus*, std::weak_ptr<BusConnection>>& registry();
  /// The connection a method call arrived on, or null.
  static std::shared_ptr<BusConnection> of(sd_bus_message* m);

 private:
  void read_client();
  /// Reads what the client sent, with its descriptors; false if the read must wait.
  bool receive_client();
  void on_client_bytes(size_t n);
  void feed_bus();
  void track_deadline();
  void drop(std::string reason);
  void run_drained_waiters();

  UniqueFd socket_;                               ///< until start() gives it to sd-bus
  boost::asio::posix::stream_descriptor client_;  ///< our own dup of the socket: reads, readiness
  boost::asio::posix::stream_descriptor feed_;    ///< our end of sd-bus's input socketpair
  boost::asio::steady_timer timer_;               ///< sd-bus's own timeouts
  boost::asio::steady_timer deadline_;            ///< the current handshake or message
  boost::asio::steady_timer lifetime_;
  Identity identity_;
  BusLimits limits_;
  BusFramer framer_;
  std::array<uint8_t, 64 * 1024> in_{};
  size_t in_len_ = 0, in_fed_ = 0;  ///< bytes read from the client and not yet given to sd-bus
  std::vector<UniqueFd> in_fds_;    ///< descriptors that came with them, passed on with their first byte
  uint64_t received_ = 0;
  uint64_t deadline_for_ = UINT64_MAX;  ///< the message (framer_.completed()) the deadline guards
  uint64_t deadline_gen_ = 0;
  sd_bus* bus_ = nullptr;
  bool reading_ = false, client_eof_ = false, feed_waiting_ = false;
  bool waiting_write_ = false;
  bool closed_ = false;
  std::string close_reason_;
  std::vector<std::pair<uint64_t, std::function<void()>>> drained_waiters_;
  std::vector<std::function<void()>> close_waiters_;
};

}  // namespace vl
