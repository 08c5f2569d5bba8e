// The control socket: the D-Bus protocol spoken peer-to-peer (sd-bus), one connection per
// client, all driven by the daemon's single Asio event loop.
//
// Authorization is by the peer's credentials (SO_PEERCRED, SO_PEERGROUPS), read at accept
// time: root and members of the configured admin group may call everything except
// GetLaunchPlan, which only root (the helper's `launch`) may call, and only they receive
// StateChanged. Everyone else gets a short, tightly capped session in which every call is
// answered with org.vmlaunch.Error.Denied naming the group to join. The number of connections
// (in total and per uid) and the size and arrival time of every message are capped before
// sd-bus buffers anything (ControlLimits, bus_connection.h); root is never refused.
#pragma once

#include <sys/types.h>

#include "daemon/asio.h"
#include <memory>
#include <set>
#include <string>

#include "common/config.h"
#include "common/unique_fd.h"
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

 private:
  void accept_next();
  /// Authorizes and caps a new connection before reading from it; serves or closes it.
  void admit(UniqueFd fd);

  boost::asio::io_context& io_;
  const HostConfig& config_;
  Manager& manager_;
  std::unique_ptr<boost::asio::local::stream_protocol::acceptor> acceptor_;
  /// Out of descriptors, the pending connection stays queued and the listener readable:
  /// accepting again at once would spin. This timer spaces the retries (see accept_next).
  boost::asio::steady_timer accept_backoff_;
  bool accept_starved_ = false;  ///< logged once per episode of fd exhaustion
  bool refusing_ = false;        ///< logged once per episode of refused connections
  gid_t admin_gid_ = static_cast<gid_t>(-1);
};

}  // namespace vl
