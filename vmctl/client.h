// vmctl's connection to vmlaunchd: one sd-bus peer-to-peer connection, synchronous queries
// and bounded-parallel batches of long operations.
#pragma once

#include <poll.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/error.h"

struct sd_bus;

namespace vl::ctl {

struct VmRow {
  std::string name, state, reason, zone;
  uint32_t pid = 0, uid = 0;
  int vnc_display = -1;
  bool autostart = false;
  int start_order = 0;
};

/// One operation of a batch: the method, its VM, and how to append its arguments.
struct BatchCall {
  std::string vm;
  std::string method;      // "Start", "Stop", "Shutdown", "Restart", "Kill"
  uint32_t timeout = 0;    // Stop, Shutdown, Restart
  bool force = false;      // Stop
  int signal = 0;          // Kill
  std::string mode;        // Shutdown: "acpi" or "agent"
  int passphrase = -1;     // Start: the disks' passphrase as a sealed memfd (StartWithPassphrase)
};

class Client final {
 public:
  /// Connects to the control socket; if the daemon is not there, the error says so and ends
  /// with `start_hint` ("start it with ...").
  static Result<Client> connect(const std::string& socket_path, const std::string& start_hint);
  /// Connects to a far host's daemon through ssh (remote.h, ssh_bus_address). `url` names it
  /// in messages; a call that fails because the connection closed says that ssh failed.
  static Result<Client> connect_ssh(const std::string& bus_address, const std::string& url);
  /// Speaks the protocol over `fd`, a connected stream already authenticated to the daemon
  /// (the local end of the TLS relay); takes it over. When a call fails, `transport_error`
  /// may know the real reason (the daemon's TLS alert), which then replaces the error if the
  /// connection is closed.
  static Result<Client> over_fd(int fd, const std::string& url, std::function<std::string()> transport_error);
  Client(Client&&) noexcept;
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  Client& operator=(Client&&) = delete;

  Result<std::vector<VmRow>> list();
  Result<std::vector<std::pair<std::string, std::string>>> status(const std::string& vm);
  Result<std::string> launch_plan(const std::string& vm);
  /// The daemon's audit findings as JSON (daemon/audit.h): of `vms`, of every VM if empty.
  Result<std::string> audit(const std::vector<std::string>& vms);

  /// The VM's serial log (both parts, older first).
  Result<std::string> read_serial_log(const std::string& vm);
  /// Opens a channel (control_protocol.h) to the VM's serial console, as its writer or not.
  Result<uint32_t> open_console(const std::string& vm, bool write);
  /// Opens a channel to a new connection to the VM's VNC server.
  Result<uint32_t> open_vnc(const std::string& vm);
  /// Sends bytes for the VM without waiting; `done` runs from process() with the answer.
  Result<void> channel_write(uint32_t channel, std::span<const uint8_t> bytes, std::function<void(Result<void>)> done);
  /// Closes a channel without waiting for the answer.
  Result<void> close_channel(uint32_t channel);
  /// Calls `data` for every ChannelData and `closed` for every ChannelClosed the daemon sends,
  /// from process(), until the client goes.
  Result<void> watch_channels(std::function<void(uint32_t, std::span<const uint8_t>)> data,
                              std::function<void(uint32_t, const std::string&)> closed);
  /// For a poll() loop: the connection's fd and the events sd-bus waits for now.
  pollfd poll_fd() const;
  /// ... and how long poll() may wait for it, in ms (-1: no limit).
  int poll_timeout_ms() const;
  /// Handles whatever arrived or may be sent now; an error: the connection is gone.
  Result<void> process();
  /// Sends what is queued, waiting for it (before exit).
  void flush();

  /// Runs calls with at most `parallel` in flight, in order. `progress` sees every state
  /// change signal of the daemon; the results come back in the calls' order.
  std::vector<Result<void>> run_batch(const std::vector<BatchCall>& calls, unsigned parallel,
                                      const std::function<void(const std::string& vm, const std::string& state,
                                                               const std::string& reason)>& progress);

 private:
  struct Watch;

  explicit Client(sd_bus* bus);
  Error explain(Error e) const;
  sd_bus* bus_;
  std::function<std::string()> transport_error_;
  std::unique_ptr<Watch> watch_;
};

}  // namespace vl::ctl
