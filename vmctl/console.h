// `vmctl console` and `vmctl vnc`: byte streams through the daemon's channels
// (common/control_protocol.h), over whatever carries the control connection.
#pragma once

#include <string>

#include "vmctl/client.h"

namespace vl::ctl {

/// The escape key that detaches from a console: Ctrl-] (0x1d), as virsh's.
inline constexpr unsigned char kConsoleEscape = 0x1d;

/// Attaches the terminal (or whatever stdin and stdout are) to the VM's serial console until
/// the escape key, the end of stdin, the channel's end or SIGTERM/SIGHUP/SIGINT. A terminal is
/// put in raw mode and restored on every way out. `read_only`: input other than the escape
/// key is ignored. Returns the exit status.
int run_console(Client& client, const std::string& vm, bool read_only);

/// Listens on `listen` ("127.0.0.1:PORT"; port 0: any free one, printed) and forwards every
/// connection accepted there to the VM's VNC server through a channel of its own, until
/// SIGTERM/SIGINT/SIGHUP or the daemon goes. Returns the exit status.
int run_vnc_forward(Client& client, const std::string& vm, const std::string& listen);

}  // namespace vl::ctl
