// A channel to a VM's VNC server (channel.h): one TCP connection from the daemon to QEMU's
// VNC port per channel, so that `vmctl vnc` can forward each local viewer connection through
// the control protocol. The daemon's user may connect there (helper/console_filter.h); the
// viewer still authenticates to QEMU itself (the VNC password travels inside the stream).
#pragma once

#include "daemon/asio.h"
#include <memory>
#include <string>

#include "common/error.h"
#include "daemon/channel.h"

namespace vl {

/// Connects to `address`:`port` (the VM's VNC listener; the wildcard addresses mean the
/// loopback address) and returns the channel for `owner`, registered in the ChannelTable.
Result<std::shared_ptr<Channel>> open_vnc_channel(boost::asio::io_context& io, const std::string& vm,
                                                  const std::string& address, uint16_t port,
                                                  std::weak_ptr<BusConnection> owner);

}  // namespace vl
