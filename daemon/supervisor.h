// One VM under supervision: its state machine, its QMP connection and its pidfd.
//
// The state machine. Rows are the states a VM reports; columns the events that move it.
// "op" events come from the VM's operation queue (one at a time, in the order asked); the
// others from the current run's pidfd, monitor, timers and broker replies.
//
//   state    | start (op)     | stop (op)      | exit (pidfd)      | QMP failure [1]   | SHUTDOWN   | broker lost [2]
//   ---------+----------------+----------------+-------------------+-------------------+------------+-----------------
//   stopped  | starting       | done           | -                 | -                 | -          | -
//   failed   | [3] starting   | [3] done       | -                 | -                 | -          | -
//   starting | queued         | queued         | cleanup; failed   | kill, cleanup;    | quit       | kill, cleanup;
//            |                |                |                   |   failed          |            |   failed [3]
//   running  | "already       | stopping       | cleanup; failed   | noted in reason   | quit;      | -
//            |  running"      |                |                   |                   | stopping[6]|
//   stopping | after the exit | joins the stop | cleanup; stopped  | kill [4]          | quit       | -
//
//   Under systemd the broker's start only queues the unit kvm-vm@NAME: the start then waits
//   (awaiting_unit_, with the start's deadline) for the unit to say Launched (its ExecStartPost)
//   or LaunchFailed (the helper). A Launched nobody waits for is a `systemctl start`: a start
//   op of its own. Either way the unit is active only once the start answered (architecture.md).
//   A Launched or LaunchFailed read before the broker's answer to the same start (a loaded
//   host can order them so) is kept (early_unit_word_) and acted on when that answer comes.
//   restart (op): stop, then start, as one operation: nothing queued runs between the two.
//   kill: running or stopping: a signal through the broker, its exit then expected (recorded
//     as a StopIntent, so that a daemon restarted before the exit reads it `stopped` too);
//     answered once the exit is cleaned up (reason "killed with SIGTERM"), or with an error
//     at SupervisorContext::kill_wait; otherwise "not running".
//   graceful stop: the power button every 2 s, the reason counting down ("waiting for the
//     guest, N s left"); at the deadline `quit`, and the exit reads "forced after N s: ...".
//     A plain stop first offers it to the guest agent (5 s at most); taken, the stop waits for
//     the power-off without pressing, and a stop resumed after a restart does the same.
//   forced stop: `quit` at once (the kill after its grace); the exit reads "forced at once: ...".
//   forget (the domain XML was removed): only an idle VM (idle()): its last outcome is dropped.
//   adopt (daemon start): emulator gone: cleanup; stopped. Alive: `starting` (operations wait)
//     until the monitor says what runs: `running` is running; no answer: running, with the
//     monitor's trouble as the reason; `prelaunch` is a start interrupted before `cont` (vmlaunchd died mid-start):
//     kill, cleanup, stopped [5]; `shutdown` is a guest that powered off unwatched: quit,
//     stopping. A stop (or guest power-off) under way when vmlaunchd went down is recorded
//     (StopIntent): the adopted VM is `stopping`, the stop is carried on, and its exit reads
//     `stopped`. A pidfd that cannot be opened (EMFILE...) keeps it running, unwatched,
//     retried every second.
//   [1] an error reply, a closed connection, or a deadline: each command's own (QmpClient), and
//       the start's as a whole (SupervisorContext::start_deadline). The error names the
//       command.
//   [2] the broker closed the connection with the start unanswered (its outcome is unknown), or
//       the cleanup of a failed start could not be done.
//   [3] an unfinished teardown (the emulator of an interrupted start may live; the broker was
//       away): retried every SupervisorContext::converge_retry, and first of all by the next
//       start or stop, which fail if it still cannot be done.
//   [4] of a power-button press (a `quit` whose connection closes is taking effect, not
//       failing): the broker kills at once; the stop ends with the exit, as `stopped`, and
//       answers with the QMP error.
//   [5] not resumed: whoever asked for the start was told it failed, and nobody expects it.
//   [6] the guest's own power-off (guest: true): `stopping`, reason "guest powered off", kept
//       through the second SHUTDOWN that `quit` brings (guest: false); the exit reads `stopped`.
//
// Runs and generations: each emulator run has a generation number (run_), bumped when a run
// begins and again when it ends. Every asynchronous callback of a run (broker replies, QMP
// replies, the pidfd wait, timers) carries the generation it was made in and is dropped when
// it is stale, so a reply that arrives after the emulator exited never touches the next run's
// monitor or state. The completion of the operation in progress is never dropped: it lives in
// starting_ or stop_waiters_ and is answered exactly once. The cleanup after an exit holds the
// operation queue, so no start can begin a run before the last one is cleaned up.
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
#include "daemon/emulator_output.h"
#include "daemon/qmp_client.h"

namespace vl {

enum class VmStatus { kStopped, kStarting, kRunning, kStopping, kFailed };

/// How a graceful stop asks the guest: the ACPI power button, QEMU's guest agent in the VM
/// (`guest-shutdown`, then waiting for the power-off as for the button), like `virsh shutdown
/// --mode acpi|agent`; or, as virsh's shutdown without a mode, the agent if the domain has its
/// channel and it takes the request within a few seconds, else the button.
enum class StopMode { kAcpi, kAgent, kAuto };
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
  /// `status` only: the pre-plan's state (daemon/preplanner.h), and how many libvirt
  /// conversions this daemon has run for the VM.
  std::string plan;
  unsigned conversions = 0;
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
  /// How long a start may take from the broker's answer to the guest running (greeting,
  /// capabilities, VNC password, `cont`): past it the emulator is killed and the start fails.
  std::chrono::milliseconds start_deadline = std::chrono::seconds(30);
  /// How often the teardown of an interrupted start is retried while the broker is away.
  std::chrono::milliseconds converge_retry = std::chrono::seconds(2);
  /// How long a kill waits for the emulator to be gone before it answers that it is not.
  std::chrono::milliseconds kill_wait = std::chrono::seconds(10);
  /// The <target dev> of each disk of the VM's domain XML, in order (to name the disk whose
  /// passphrase QEMU refused); none if unset.
  std::function<std::vector<std::string>(const VmName&)> disk_targets = nullptr;
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
  /// With StopMode::kAgent the guest agent is asked instead of the button, once; if it does not
  /// answer, the stop fails at once and the VM keeps running. With kAuto such an agent (or none)
  /// means the button.
  void stop(std::chrono::seconds timeout, bool force, Done done, StopMode mode = StopMode::kAuto);
  /// Stop, then start, as one operation.
  void restart(std::chrono::seconds timeout, Done done);
  void kill(int signal, Done done);
  /// The VM's systemd unit exec'd its emulator (paused before `cont`): the start waiting for
  /// the unit goes on with it, or, if none waits (`systemctl start` issued directly), a start
  /// begins with it. `done` once the guest runs or the start failed. A start still waiting for
  /// the broker's answer (which queued the unit) goes on with it once that answer comes.
  void launched(Done done);
  /// The VM's systemd unit reports its launch failed: the start waiting for it fails with
  /// `error` (once the broker has answered it); with none waiting, the VM reads failed with it.
  void launch_failed(const Error& error);
  /// Takes over a VM found running at daemon start; a dead one is cleaned up.
  void adopt(const VmState& state);
  /// A launch found unfinished at daemon start (a runtime directory without state): cleaned
  /// up through the broker, which waits for a launch still under way; `stopped` once done,
  /// unless its emulator lives after all, which is then adopted. `state_path` is its state.json.
  void adopt_unfinished_launch(std::string state_path);

  const VmInfo& info() const { return info_; }
  /// Nothing of the VM runs, nothing is under way or pending: its supervisor holds only the
  /// last outcome.
  bool idle() const;
  /// Drops the last outcome of an idle VM (whose definition was removed): it reads `stopped`.
  void forget();

 private:
  void enqueue(std::function<void()> op);
  /// Runs the next queued operation, if any.
  void finish_op();
  /// `done`, followed by the end of the operation it answers.
  Done op_done(Done done);
  void begin_start(Done done);
  void begin_stop(std::chrono::seconds timeout, bool force, Done done, StopMode mode = StopMode::kAuto);
  /// The power button (or, forced, `quit`) until `deadline`.
  void stop_by_button(bool force, std::chrono::system_clock::time_point deadline, Done done);
  /// Asks the guest agent, then stops like the button would; if it does not take the request,
  /// the stop fails, or with `or_button` goes on with the button.
  void stop_by_agent(std::chrono::system_clock::time_point deadline, Done done, bool or_button);
  void set_status(VmStatus status, std::string reason);
  void attach(const VmState& state, bool fresh);
  /// A launch by the unit is done: attach its emulator as a fresh start's.
  void attach_launched();
  void after_monitor_ready(bool fresh);
  /// One QMP command of a start: on failure the start fails, naming the command.
  void start_command(const std::string& command, QmpClient::Json arguments,
                     std::function<void(const QmpClient::Json&)> next);
  /// One QMP command of a stop: on failure the emulator is killed at once.
  void stop_command(const std::string& command);
  void watch_exit();
  void exited();
  /// The rest of exited(), once qemu's last lines (`said`) are known.
  void clean_up_exit(bool expected, bool owns_queue, std::string said, Done start_done);
  /// "; qemu said: ..." of the current run (daemon/emulator_output.h) to `next`: at once from
  /// the log relay's copy, or from the journal for a run of a systemd unit.
  void gather_said(std::function<void(std::string)> next);
  /// Drops what is known of the last run's process (before a new run begins).
  void forget_run();
  /// Closes the monitor and pidfd of the current run and makes its pending callbacks stale.
  void end_run();
  /// Ends the run, kills its emulator, cleans up and fails the start in progress, if one is
  /// still waiting.
  void fail_start(const Error& error);
  /// fail_start() unless the emulator's exit is seen within kMonitorLossGrace: the exit then
  /// answers the start, with QEMU's last lines.
  void fail_start_unless_exiting(const Error& error);
  /// Answers the start in progress, if one is still waiting.
  void complete_start(Result<void> result);
  /// Kills the VM's emulator through the broker (whatever its state file names), then cleans
  /// up; `done` gets the cleanup's outcome. An unfinished one is retried (footnote [3]).
  void teardown(std::function<void(Result<void>)> done);
  void schedule_converge();
  /// A run found in `prelaunch` at adoption: a start interrupted before `cont`.
  void abandon_interrupted_start(uint64_t run);
  /// Stops the running emulator: `quit` (forced) or the power button until `deadline`.
  void drive_stop(bool force, std::chrono::system_clock::time_point deadline, std::string reason);
  void press_power_button();
  /// A stop found at adoption whose monitor failed: carried on as a forced stop.
  void resume_stop_without_monitor();
  /// The adoption's first half, outside the queue: reads the stop intent and sets the state
  /// a listing shows at once. True if the emulator is alive.
  bool prepare_adoption(const VmState& state);
  /// The adoption's second half, holding the queue: cleanup of a dead emulator, or the monitor.
  void adopt_in_queue(const VmState& state, bool alive);
  /// Ends an adoption: the next queued operation may run.
  void adopted();
  /// Ends an adoption whose monitor could not be asked: the VM is alive, reported running.
  void adopted_without_monitor(std::string why);
  /// SIGKILL through the broker after the grace period, unless the run ends first.
  void escalate_to_kill();
  /// Answers a kill once the emulator is gone, or with an error after ctx_.kill_wait.
  void wait_for_exit(int signal, Done done);

  /// A stop under way, recorded so that a vmlaunchd restarted meanwhile carries it on and
  /// reads its exit as the stop's (RUNTIME/vmlaunchd/NAME.stop; removed by the cleanup).
  struct StopIntent {
    enum Kind { kGraceful, kAgent, kForced, kGuest, kSignalled } kind = kGraceful;
    std::chrono::system_clock::time_point deadline;
  };
  std::string intent_path() const;
  void record_intent(const StopIntent& intent);
  void clear_intent();
  std::optional<StopIntent> read_intent() const;

  SupervisorContext& ctx_;
  VmName name_;
  VmInfo info_;
  std::deque<std::function<void()>> ops_;
  uint64_t run_ = 0;   ///< the generation of the current run; callbacks of older ones are stale
  Done starting_;      ///< the start operation in progress, until answered
  std::string start_step_;  ///< what the start in progress waits for (for its deadline's message)
  bool busy_ = false;  ///< an operation (or the cleanup after an exit) is in progress
  std::shared_ptr<QmpClient> qmp_;
  std::unique_ptr<boost::asio::posix::stream_descriptor> pidfd_;
  boost::asio::steady_timer stop_timer_;
  boost::asio::steady_timer start_timer_;
  boost::asio::steady_timer converge_timer_;
  boost::asio::steady_timer monitor_grace_;  ///< a monitor lost mid-start or mid-stop: the exit's moment
  std::chrono::steady_clock::time_point deadline_;
  std::vector<Done> stop_waiters_;
  std::optional<Error> stop_error_;  ///< a monitor failure during the stop in progress
  bool stop_requested_ = false;
  bool press_button_ = true;  ///< false while a stop waits for a power-off the guest agent was asked for
  std::string exit_reason_;  ///< the reason an exit asked for reports ("forced after 60 s: ...")
  long long stop_seconds_ = 0;  ///< the graceful stop's whole wait, for its messages
  bool guest_shutdown_ = false;
  bool watch_failed_ = false;  ///< an adopted VM whose pidfd could not be opened (retrying)
  bool awaiting_unit_ = false;  ///< the start in progress waits for its systemd unit's launch
  bool awaiting_broker_ = false;  ///< the start in progress waits for the broker's answer
  /// The unit's Launched (success) or LaunchFailed (its error), read while awaiting_broker_.
  std::optional<Result<void>> early_unit_word_;
  bool adopting_ = false;      ///< an adoption holds the queue until the monitor's verdict
  bool unconverged_ = false;   ///< a teardown is unfinished (footnote [3])
  std::string failure_;        ///< why the VM failed, for the reasons of later retries
  std::optional<StopIntent> resumed_stop_;  ///< found at adoption, carried on once the monitor answers
  VmState run_state_;  ///< the current (or last) run's state, as attached; empty before that
  std::vector<std::unique_ptr<EmulatorSaid>> said_;  ///< gatherings of the last run's lines
};

}  // namespace vl
