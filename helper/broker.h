// vmlaunch-helper serve: the root broker the unprivileged daemon talks to.
//
// It listens on RUNTIME/helper.sock (root:daemon-group 0660), accepts connections only from
// the daemon's uid (SO_PEERCRED), and answers exactly four requests (common/broker_protocol.h):
//   start NAME    launch VM NAME (systemd unit when systemd runs, else `launch` detached)
//   kill NAME SIG signal the VM's emulator (pid and start time from its root-owned state)
//   cleanup NAME  undo a launch (helper/cleanup.h)
//   reattach NAME put a running VM's taps back on its zone bridge (helper/reattach.h)
// Any malformed request ends the connection. One connection is served at a time, in one
// poll() loop with the listener and the signalfd: SIGTERM/SIGINT end the broker whenever no
// request is being handled; a new connection from the daemon's uid replaces the current one;
// a connection silent for 60 s is closed (the daemon reconnects on its next request).
// Nothing a peer does can block that loop: the socket is SOCK_SEQPACKET, so a request arrives
// whole or not at all (there is no partial request to wait for), reads never block, and a
// reply that does not fit in the peer's receive queue (a peer that does not read) closes the
// connection instead of waiting.
#pragma once

#include "common/config.h"

namespace vl::helper {

/// Runs the broker until SIGTERM/SIGINT. Returns the reason it stopped, or success.
Result<void> serve_broker(const HostConfig& config, const std::string& config_path);

}  // namespace vl::helper
