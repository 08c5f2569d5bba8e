// One control-socket client: an sd-bus server object on the accepted socket, pumped by the
// daemon's Asio event loop.
//
// Every descriptor has one owner (house rule 18): sd-bus owns the accepted socket and closes
// it when the client leaves; the event loop watches a dup of it that this object owns and
// closes itself. Watching sd-bus's own number instead let the kernel hand that number to a
// new client, a QMP socket or a pidfd after sd-bus closed it, and the departed connection
// then removed the newcomer's registration from epoll: the daemon silently stopped watching
// live descriptors (issue 9, item 1).
#pragma once

#include <sys/types.h>
#include <systemd/sd-bus.h>

#include "daemon/asio.h"
#include <map>
#include <memory>
#include <vector>

#include "common/error.h"
#include "common/unique_fd.h"

namespace vl {

/// The peer's credentials, read once at accept time (SO_PEERCRED, SO_PEERGROUPS).
struct Peer {
  uid_t uid = static_cast<uid_t>(-1);
  std::vector<gid_t> groups;
};

/// Reads the credentials of the process at the other end of a connected unix socket.
Peer peer_of(int fd);

class BusConnection final : public std::enable_shared_from_this<BusConnection> {
 public:
  /// Takes the accepted socket; start() hands it to sd-bus.
  BusConnection(boost::asio::io_context& io, UniqueFd socket, Peer peer);
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
  const Peer& peer() const { return peer_; }
  sd_bus* bus() const { return bus_; }
  /// True once the client went away (or broke the protocol) and the connection was dropped.
  bool closed() const { return closed_; }

  /// The live connections, by their sd-bus object (method handlers find their peer here).
  static std::map<sd_bus*, std::weak_ptr<BusConnection>>& registry();
  /// The connection a method call arrived on, or null.
  static std::shared_ptr<BusConnection> of(sd_bus_message* m);

 private:
  UniqueFd socket_;                             ///< until start() gives it to sd-bus
  boost::asio::posix::stream_descriptor watch_;  ///< our own dup of the socket, for readiness only
  boost::asio::steady_timer timer_;
  Peer peer_;
  sd_bus* bus_ = nullptr;
  bool waiting_read_ = false, waiting_write_ = false;
  bool closed_ = false;
};

}  // namespace vl
