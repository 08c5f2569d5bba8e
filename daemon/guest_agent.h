// Asking QEMU's guest agent (qemu-guest-agent in the VM) to power the guest off: the
// `vmctl stop --mode agent` of a domain with the agent <channel>, like `virsh shutdown --mode
// agent`.
//
// The host end of the channel is RUNTIME/vms/NAME/agent.sock, bound by the helper. The agent
// runs inside the guest and is not trusted: every line read is bounded (kMaxLine) and the whole
// exchange has one deadline.
#pragma once

#include <chrono>
#include <functional>
#include <string>

#include "common/error.h"
#include "daemon/asio.h"

namespace vl {

/// The longest reply line accepted from a guest agent.
inline constexpr size_t kMaxGuestAgentLine = 64 * 1024;

/// Connects to the agent socket at `path`, flushes the agent's parser (a 0xFF byte, as the
/// protocol defines), sends `guest-sync` with a random id and reads lines until the reply that
/// carries that id (older replies left in the channel are skipped), then sends
/// `guest-shutdown` (mode powerdown), which the agent never answers. `done` runs on `io` once:
/// with success after the request is written, or with an error saying which step failed (a
/// missing socket: the domain has no agent channel; the deadline: no agent answers).
void request_guest_shutdown(boost::asio::io_context& io, const std::string& path, std::chrono::milliseconds timeout,
                            std::function<void(Result<void>)> done);

}  // namespace vl
