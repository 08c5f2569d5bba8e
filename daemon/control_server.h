// The control socket: the D-Bus protocol spoken peer-to-peer (sd-bus), one connection per
// client, all driven by the daemon's single Asio event loop.
//
// Authorization is by the peer's credentials (SO_PEERCRED, SO_PEERGROUPS): root and members of
// the configured admin group may call everything except GetLaunchPlan, which only root (the
// helper's `launch`) may call. Everyone else may connect and introspect, and gets
// org.vmlaunch.Error.Denied naming the group to join.
#pragma once

#include <sys/types.h>

#include "daemon/asio.h"
#include <memory>
#include <set>
#include <string>

#include "common/config.h"
#include "daemon/manager.h"

namespace vl {

class ControlServer final {
 public:
  ControlServer(boost::asio::io_context& io, const HostConfig& config, Manager& manager);
  ~ControlServer();
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  /// Binds the control socket (mode 0666: access is decided per call from peer credentials).
  Result<void> listen();
  void close();

 private:
  void accept_next();

  boost::asio::io_context& io_;
  const HostConfig& config_;
  Manager& manager_;
  std::unique_ptr<boost::asio::local::stream_protocol::acceptor> acceptor_;
  /// Out of descriptors, the pending connection stays queued and the listener readable:
  /// accepting again at once would spin. This timer spaces the retries (see accept_next).
  boost::asio::steady_timer accept_backoff_;
  bool accept_starved_ = false;  ///< logged once per episode of fd exhaustion
  gid_t admin_gid_ = static_cast<gid_t>(-1);
};

}  // namespace vl
