// vmlaunch-helper serve: the root broker the unprivileged daemon talks to.
//
// It listens on RUNTIME/helper.sock (root:daemon-group 0660), accepts connections only from
// the daemon's uid (SO_PEERCRED), and answers exactly four requests (common/broker_protocol.h):
//   start NAME    launch VM NAME (systemd unit when systemd runs, else `launch` detached)
//   kill NAME SIG signal the VM's emulator (pid and start time from its root-owned state)
//   cleanup NAME  undo a launch (helper/cleanup.h)
//   reattach NAME put a running VM's taps back on its zone bridge (helper/reattach.h)
// Any malformed request ends the connection.
//
// Concurrency. Up to 32 connections are served at once (the daemon keeps up to 16:
// kBrokerConnections), each with at most one request in flight, so launches, kills and cleanups
// of different VMs proceed side by side; what they share is locked inside the helper only where
// it is shared (locks.h). One poll() loop watches the signalfd, the listener, each idle
// connection and each busy connection's worker: a request is handled by a forked worker
// process, which writes its reply to a pipe and exits, and the loop relays it; a busy
// connection is not read until its reply is out, so a peer has at most one request in flight
// per connection and the broker at most 32 workers. A new connection beyond the cap replaces
// the one silent longest, or is refused if all are busy; a connection silent for 60 s is closed
// (the daemon reconnects on its next request). SIGTERM/SIGINT stop accepting and reading; the
// requests in flight are answered, then the broker ends.
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
