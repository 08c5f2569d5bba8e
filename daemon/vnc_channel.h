// A channel to a VM's VNC server (channel.h): one connection from the daemon to QEMU's VNC
// socket per channel, so that `vmctl vnc` can forward each local viewer connection through
// the control protocol. The emulator has a network namespace of its own, so its VNC server
// is a Unix socket it binds in a directory of its own whose group is the daemon's
// (helper/vnc_socket.h); the viewer still authenticates to QEMU itself (the VNC password and
// any TLS travel inside the stream).
#pragma once

#include "daemon/asio.h"
#include <sys/types.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "common/error.h"
#include "daemon/channel.h"

namespace vl {

/// Why a channel could not be opened, or the channel.
using ChannelOpened = std::function<void(Result<std::shared_ptr<Channel>>)>;

/// How long connecting to a VM's VNC server may take. A listener whose emulator is stopped (or
/// busy) accepts nothing; once its backlog is full the kernel drops further connection attempts
/// and a connect would wait minutes.
inline constexpr std::chrono::seconds kVncConnectDeadline{10};

/// Connects to the VNC socket at `path` (HostConfig::vnc_socket_path), which must be a socket
/// owned by `vm_uid`, without holding the event loop, and calls `done` with the channel for
/// `owner`, registered in the ChannelTable, or with why not (within kVncConnectDeadline). A
/// channel counts against its owner's kMaxChannelsPerConnection from the start of the connect.
void open_vnc_channel(boost::asio::io_context& io, const std::string& vm, const std::string& path, uid_t vm_uid,
                      std::weak_ptr<BusConnection> owner, ChannelOpened done);

}  // namespace vl
