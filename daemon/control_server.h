// The control socket: the D-Bus protocol spoken peer-to-peer (sd-bus), one connection per
// client, all driven by the daemon's single Asio event loop.
//
// Every connection is admitted with an Identity (authorization.h): a local peer's from its
// credentials (SO_PEERCRED, SO_PEERGROUPS) at accept time, a TLS peer's from its certificate
// (tls_listener.h). What the identity's role may call is decided per call from one table
// (role_needed): root everything, admin all but the root-only calls, read-only List and
// Status; only callers with a role receive StateChanged. Callers without one get a short,
// tightly capped session in which every call is answered with org.vmlaunch.Error.Denied
// saying what they lack. The number of connections (in total and per caller) and the size
// and arrival time of every message are capped before sd-bus buffers anything (ControlLimits,
// bus_connection.h); root is never refused. Calls of remote callers, and calls that change
// anything, go to the event log with the caller's identity.
#pragma once

#include <sys/types.h>

#include "daemon/asio.h"
#include <memory>
#include <set>
#include <string>

#include "common/config.h"
#include "common/unique_fd.h"
#include "daemon/authorization.h"
#include "daemon/manager.h"

namespace vl {

class ControlServer final {
 public:
  ControlServer(boost::asio::io_context& io, const HostConfig& config, Manager& manager);
  ~ControlServer();
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  /// Binds the control socket (mode 0666: access is decided from peer credentials).
  Result<void> listen();
  void close();

  /// Caps a new connection of the caller `who` before reading from it; serves or closes it.
  /// Every transport ends here: `fd` carries the client's D-Bus stream.
  void admit(UniqueFd fd, Identity who);

 private:
  void accept_next();
  void admit_local(UniqueFd fd);

  boost::asio::io_context& io_;
  const HostConfig& config_;
  Manager& manager_;
  std::unique_ptr<boost::asio::local::stream_protocol::acceptor> acceptor_;
  /// Out of descriptors, the pending connection stays queued and the listener readable:
  /// accepting again at once would spin. This timer spaces the retries (see accept_next).
  boost::asio::steady_timer accept_backoff_;
  bool accept_starved_ = false;  ///< logged once per episode of fd exhaustion
  bool refusing_ = false;        ///< logged once per episode of refused connections
  LocalRoles roles_;
};

}  // namespace vl
