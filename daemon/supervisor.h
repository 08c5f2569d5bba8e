// One VM under supervision: its state machine, its QMP connection and its pidfd.
//
//   stopped/failed --start--> starting --cont--> running --stop--> stopping --exit--> stopped
//                                 \--error--> failed        \--exit (not asked)--> failed
//   adopted at daemon start: running, except a guest found powered off (QMP status `shutdown`
//   under -no-shutdown) --quit--> stopping --exit--> stopped, as on the SHUTDOWN event; a
//   pidfd that cannot be opened (EMFILE...) keeps it running, unwatched, retried every second.
// Operations on one VM run one at a time, in the order they were asked for; a start of a
// running VM and similar conflicts fail at once with a clear reason.
//
// Runs and generations: each emulator run has a generation number (run_), bumped when a run
// begins and again when it ends. Every asynchronous callback of a run (broker replies, QMP
// replies, the pidfd wait, timers) carries the generation it was made in and is dropped when
// it is stale, so a reply that arrives after the emulator exited never touches the next run's
// monitor or state (issue 9, item 2). The one completion that is never dropped is the start
// operation's own: it lives in starting_ and is answered exactly once, by whichever of
// "running", "start failed" or "emulator exited" comes first.
#pragma once

#include "daemon/asio.h"
#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "common/config.h"
#include "common/vm_state.h"
#include "daemon/broker_client.h"
#include "daemon/qmp_client.h"

namespace vl {

enum class VmStatus { kStopped, kStarting, kRunning, kStopping, kFailed };
const char* vm_status_name(VmStatus status);

/// What List and Status report about one VM.
struct VmInfo {
  std::string name;
  VmStatus status = VmStatus::kStopped;
  std::string reason;
  pid_t pid = 0;
  uid_t uid = 0;
  std::string zone;
  int vnc_display = -1;
  std::string vnc_listen;
  std::vector<std::string> taps;
  /// Running VMs: whether its taps are on its zone bridge (daemon/link_watch.h), else "".
  std::string network;
  bool autostart = false;
  int start_order = 0;
};

/// What a supervisor needs from the daemon around it.
struct SupervisorContext {
  boost::asio::io_context& io;
  const HostConfig& config;
  BrokerClient& broker;
  /// The VNC password of the VM's domain XML ("" if none).
  std::function<std::string(const VmName&)> vnc_password;
  /// Called on every state change.
  std::function<void(const VmInfo&)> state_changed;
};

class Supervisor final {
 public:
  using Done = std::function<void(Result<void>)>;

  Supervisor(SupervisorContext& ctx, VmName name);
  ~Supervisor();
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  void start(Done done);
  /// Graceful: ACPI power button (pressed again every 2 s), `quit` after `timeout`, SIGKILL
  /// 5 s later. Forced: `quit`.
  void stop(std::chrono::seconds timeout, bool force, Done done);
  void kill(int signal, Done done);
  /// Takes over a VM found running at daemon start; a dead one is cleaned up.
  void adopt(const VmState& state);

  const VmInfo& info() const { return info_; }

 private:
  void enqueue(std::function<void()> op);
  void finish_op();
  void set_status(VmStatus status, std::string reason);
  void attach(const VmState& state, bool fresh);
  void after_monitor_ready(bool fresh);
  void watch_exit();
  void exited();
  /// Closes the monitor and pidfd of the current run and makes its pending callbacks stale.
  void end_run();
  /// Rolls back and fails the start in progress, if one is still waiting.
  void fail_start(const Error& error);
  /// Answers the start in progress, if one is still waiting, and runs the next operation.
  void complete_start(Result<void> result);
  void press_power_button(std::function<void()> escalate_to_kill);

  SupervisorContext& ctx_;
  VmName name_;
  VmInfo info_;
  std::deque<std::function<void()>> ops_;
  uint64_t run_ = 0;   ///< the generation of the current run; callbacks of older ones are stale
  Done starting_;      ///< the start operation in progress, until answered
  bool busy_ = false;
  std::shared_ptr<QmpClient> qmp_;
  std::unique_ptr<boost::asio::posix::stream_descriptor> pidfd_;
  boost::asio::steady_timer stop_timer_;
  std::chrono::steady_clock::time_point deadline_;
  std::vector<Done> stop_waiters_;
  bool stop_requested_ = false;
  bool guest_shutdown_ = false;
  bool watch_failed_ = false;  ///< an adopted VM whose pidfd could not be opened (retrying)
};

}  // namespace vl
