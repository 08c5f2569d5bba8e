// vmctl's connection to vmlaunchd: one sd-bus peer-to-peer connection, synchronous queries
// and bounded-parallel batches of long operations.
#pragma once

#include <functional>
#include <memory>
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

  /// Runs calls with at most `parallel` in flight, in order. `progress` sees every state
  /// change signal of the daemon; the results come back in the calls' order.
  std::vector<Result<void>> run_batch(const std::vector<BatchCall>& calls, unsigned parallel,
                                      const std::function<void(const std::string& vm, const std::string& state,
                                                               const std::string& reason)>& progress);

 private:
  explicit Client(sd_bus* bus) : bus_(bus) {}
  Error explain(Error e) const;
  sd_bus* bus_;
  std::function<std::string()> transport_error_;
};

}  // namespace vl::ctl
