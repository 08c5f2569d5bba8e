// What vmlaunchd tells systemd about itself (sd_notify): READY=1 once it serves and knows its
// VMs, STATUS= with the VMs' counts, WATCHDOG=1 from its event loop. Without $NOTIFY_SOCKET
// (standalone, tests) every call is a no-op.
#pragma once

#include "daemon/asio.h"
#include <chrono>
#include <map>
#include <string>

#include "daemon/supervisor.h"

namespace vl {

class ServiceNotifier final {
 public:
  explicit ServiceNotifier(boost::asio::io_context& io);
  ServiceNotifier(const ServiceNotifier&) = delete;
  ServiceNotifier& operator=(const ServiceNotifier&) = delete;

  /// READY=1 with the first STATUS=; starts the watchdog pings if the unit asks for them.
  void ready();
  /// Records a VM's new state and updates STATUS= (after ready()).
  void state_changed(const VmInfo& info);
  /// "2 running, 1 starting, 0 stopping, 0 failed": what STATUS= says.
  std::string status_line() const;

 private:
  void ping();

  boost::asio::steady_timer watchdog_;
  std::chrono::microseconds interval_{0};
  std::map<std::string, VmStatus> states_;
  bool ready_ = false;
};

}  // namespace vl
