#include "daemon/service_notify.h"

#include <systemd/sd-daemon.h>

namespace vl {

ServiceNotifier::ServiceNotifier(boost::asio::io_context& io) : watchdog_(io) {}

void ServiceNotifier::ready() {
  ready_ = true;
  (void)sd_notify(0, ("READY=1\nSTATUS=" + status_line()).c_str());
  uint64_t usec = 0;
  // Pinged from the event loop itself, twice per period: a loop that hangs (a blocking call,
  // an endless callback) stops the pings, and systemd restarts the daemon, which re-adopts.
  if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
    interval_ = std::chrono::microseconds(usec / 2);
    ping();
  }
}

void ServiceNotifier::ping() {
  (void)sd_notify(0, "WATCHDOG=1");
  watchdog_.expires_after(interval_);
  watchdog_.async_wait([this](boost::system::error_code ec) {
    if (!ec) ping();
  });
}

void ServiceNotifier::state_changed(const VmInfo& info) {
  if (info.status == VmStatus::kStopped) states_.erase(info.name);
  else states_[info.name] = info.status;
  if (ready_) (void)sd_notify(0, ("STATUS=" + status_line()).c_str());
}

std::string ServiceNotifier::status_line() const {
  size_t running = 0, starting = 0, stopping = 0, failed = 0;
  for (const auto& [name, status] : states_) {
    running += status == VmStatus::kRunning;
    starting += status == VmStatus::kStarting;
    stopping += status == VmStatus::kStopping;
    failed += status == VmStatus::kFailed;
  }
  return std::to_string(running) + " running, " + std::to_string(starting) + " starting, " +
         std::to_string(stopping) + " stopping, " + std::to_string(failed) + " failed";
}

}  // namespace vl
