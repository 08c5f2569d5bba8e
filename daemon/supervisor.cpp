#include "daemon/supervisor.h"

#include "daemon/guest_agent.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <utility>

#include "common/sys.h"
#include "daemon/emulator_output.h"
#include "daemon/event_log.h"
#include "daemon/guest_agent.h"

namespace vl {

namespace asio = boost::asio;
using Json = nlohmann::json;

const char* vm_status_name(VmStatus status) {
  switch (status) {
    case VmStatus::kStopped: return "stopped";
    case VmStatus::kStarting: return "starting";
    case VmStatus::kRunning: return "running";
    case VmStatus::kStopping: return "stopping";
    case VmStatus::kFailed: return "failed";
  }
  return "unknown";
}

namespace {

constexpr auto kKillGrace = std::chrono::seconds(5);
constexpr auto kMonitorLossGrace = std::chrono::milliseconds(500);
constexpr auto kPowerButtonRepeat = std::chrono::seconds(2);
constexpr auto kWatchRetry = std::chrono::seconds(1);
// How long the reason of a failed run waits for the emulator's last lines: for journald to hold
// them (a unit's run), or for the log relay to end its copy (standalone). Only an emulator that
// said nothing waits it all under systemd; the relay ends its copy as soon as the emulator's
// pipe is closed.
constexpr auto kSaidWait = std::chrono::seconds(2);

Result<VmState> read_state(const HostConfig& config, const VmName& vm) {
  return read_vm_state_file(config.vm_runtime_dir(vm) + "/state.json");
}

// A pidfd for the state's emulator. kNotFound: it is gone (ESRCH, or the pid now names
// another process, or it has exited and awaits reaping). Any other error (EMFILE, ENFILE,
// ENOMEM...) says nothing about the emulator, which may well be running.
Result<UniqueFd> watch_process(const VmState& state) {
  UniqueFd fd = VL_TRY(open_process(state.pid, state.start_time));
  if (pidfd_exited(fd.get()))
    return Error::make(ErrorCode::kNotFound, "process " + std::to_string(state.pid) + " is gone");
  return fd;
}

// Whole seconds, rounded up: "1 s left" until the deadline, never "0 s left" before it.
long long seconds_left(std::chrono::steady_clock::duration d) {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
  return ms <= 0 ? 0 : (ms + 999) / 1000;
}

const char* signal_name(int signal) {
  switch (signal) {
    case SIGTERM: return "SIGTERM";
    case SIGKILL: return "SIGKILL";
    case SIGINT: return "SIGINT";
  }
  return "a signal";
}

bool gone(const Result<UniqueFd>& process) { return !process && process.error().code == ErrorCode::kNotFound; }

}  // namespace

Supervisor::Supervisor(SupervisorContext& ctx, VmName name)
    : ctx_(ctx), name_(std::move(name)), stop_timer_(ctx.io), start_timer_(ctx.io), converge_timer_(ctx.io), monitor_grace_(ctx.io) {
  info_.name = name_.str();
}

Supervisor::~Supervisor() {
  end_run();
  converge_timer_.cancel();
}

void Supervisor::enqueue(std::function<void()> op) {
  ops_.push_back(std::move(op));
  if (!busy_) finish_op();
}

void Supervisor::finish_op() {
  if (ops_.empty()) {
    busy_ = false;
    return;
  }
  busy_ = true;
  auto op = std::move(ops_.front());
  ops_.pop_front();
  op();
}

Supervisor::Done Supervisor::op_done(Done done) {
  return [this, done = std::move(done)](Result<void> result) {
    done(std::move(result));
    finish_op();
  };
}

void Supervisor::set_status(VmStatus status, std::string reason) {
  info_.status = status;
  info_.reason = std::move(reason);
  if (status == VmStatus::kStopped || status == VmStatus::kFailed) {
    info_.pid = 0;
    info_.taps.clear();
    info_.vnc_display = -1;
    info_.vnc_listen.clear();
  }
  if (ctx_.state_changed) ctx_.state_changed(info_);
}

void Supervisor::start(Done done) {
  enqueue([this, done = std::move(done)]() mutable { begin_start(op_done(std::move(done))); });
}

void Supervisor::stop(std::chrono::seconds timeout, bool force, Done done, StopMode mode) {
  enqueue([this, timeout, force, mode, done = std::move(done)]() mutable {
    begin_stop(timeout, force, op_done(std::move(done)), mode);
  });
}

void Supervisor::restart(std::chrono::seconds timeout, Done done) {
  enqueue([this, timeout, done = std::move(done)]() mutable {
    Done finish = op_done(std::move(done));
    begin_stop(timeout, false, [this, finish](Result<void> stopped) {
      if (!stopped) return finish(stopped);
      begin_start(finish);
    });
  });
}

void Supervisor::begin_start(Done done) {
  if (unconverged_) {
    // An interrupted start's emulator may still hold the VM's taps and disks: tear it down
    // first, or this launch would fail on its leftovers.
    return teardown([this, done = std::move(done)](Result<void> cleaned) mutable {
      if (!cleaned)
        return done(cleaned.error().wrap("VM '" + name_.str() + "' is not cleaned up after an earlier failure"));
      begin_start(std::move(done));
    });
  }
  if (info_.status == VmStatus::kStopping && pidfd_) {
    // On its way out (a guest that powered off): start once it is gone and cleaned up.
    stop_waiters_.push_back([this, done = std::move(done)](Result<void>) mutable { begin_start(std::move(done)); });
    return;
  }
  if (info_.status == VmStatus::kRunning) {
    return done(Error::make(ErrorCode::kConflict, "VM '" + name_.str() + "' is already running"));
  }
  end_run();  // whatever a failed earlier run left behind is history now
  forget_run();
  clear_intent();
  set_status(VmStatus::kStarting, "");
  guest_shutdown_ = false;
  stop_requested_ = false;
  starting_ = std::move(done);
  start_step_ = "the broker's launch";
  awaiting_broker_ = true;
  ctx_.broker.call({BrokerOp::kStart, name_, 0}, [this, run = run_](Result<int> pid) {
    if (run != run_) return;
    awaiting_broker_ = false;
    std::optional<Result<void>> early = std::exchange(early_unit_word_, std::nullopt);
    if (!pid) return fail_start(pid.error());
    if (*pid == 0 && early) {
      // The unit spoke before this answer was read (a loaded host): its word goes on now.
      if (!*early) return fail_start(early->error());
      return attach_launched();
    }
    if (*pid == 0) {
      // systemd launches it (kvm-vm@NAME.service): wait for the unit's word, within the
      // start's deadline; its ExecStartPost calls launched(), a failed helper launch_failed().
      awaiting_unit_ = true;
      start_step_ = "the launch by unit kvm-vm@" + name_.str() + ".service";
      start_timer_.expires_after(ctx_.start_deadline);
      start_timer_.async_wait([this, run = run_](boost::system::error_code ec) {
        if (ec || run != run_ || !awaiting_unit_) return;
        auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(ctx_.start_deadline).count();
        fail_start(Error::make(ErrorCode::kSystem, "VM '" + name_.str() + "': no word from unit kvm-vm@" + name_.str() +
                                                       ".service within " + std::to_string(ms) + " ms"));
      });
      return;
    }
    auto state = read_state(ctx_.config, name_);
    if (!state) {
      // The broker takes the close of its report pipe for the exec; a helper killed before
      // it closes the pipe just the same, and leaves no state behind.
      return fail_start(Error::make(ErrorCode::kSystem, "VM '" + name_.str() +
                                                            "': the launch helper ended without starting the emulator "
                                                            "(killed before its exec?); see " + ctx_.config.state_dir +
                                                            "/logs/" + name_.str() + ".log"));
    }
    attach(*state, true);
  });
}

void Supervisor::launched(Done done) {
  if (starting_ && (awaiting_unit_ || awaiting_broker_)) {
    // The start asked through the broker: the unit's caller is answered with it.
    Done requester = std::move(starting_);
    starting_ = [requester = std::move(requester), done = std::move(done)](Result<void> r) {
      done(r);
      requester(std::move(r));
    };
    // Read before the broker's answer to that start (reliability finding 9): kept until it
    // comes, which may still be a failure, and nothing is attached before.
    if (awaiting_broker_) {
      early_unit_word_ = Result<void>();
      return;
    }
    awaiting_unit_ = false;
    return attach_launched();
  }
  enqueue([this, done = std::move(done)]() mutable {
    Done finish = op_done(std::move(done));
    if (info_.status == VmStatus::kRunning || info_.status == VmStatus::kStopping)
      return finish(Error::make(ErrorCode::kConflict, "VM '" + name_.str() + "' is already running"));
    end_run();
    forget_run();
    clear_intent();
    set_status(VmStatus::kStarting, "started by its systemd unit");
    guest_shutdown_ = false;
    stop_requested_ = false;
    starting_ = std::move(finish);
    attach_launched();
  });
}

void Supervisor::attach_launched() {
  auto state = read_state(ctx_.config, name_);
  if (!state)
    return fail_start(state.error().wrap("VM '" + name_.str() + "': its unit reports a launch, but its state is unreadable"));
  attach(*state, true);
}

void Supervisor::launch_failed(const Error& error) {
  if (starting_ && awaiting_broker_) {
    early_unit_word_ = Result<void>(error);  // as in launched(): acted on at the broker's answer
    return;
  }
  if (starting_ && awaiting_unit_) {
    awaiting_unit_ = false;
    return fail_start(error);
  }
  // A `systemctl start` that failed before any start began here: one truth, the VM failed.
  if (busy_ || (info_.status != VmStatus::kStopped && info_.status != VmStatus::kFailed)) return;
  failure_ = error.message();
  set_status(VmStatus::kFailed, failure_);
}

void Supervisor::complete_start(Result<void> result) {
  if (!starting_) return;
  start_timer_.cancel();
  if (result) log_vm_event(name_.str(), LogLevel::kInfo, "started (pid " + std::to_string(info_.pid) + ")");
  Done done = std::exchange(starting_, nullptr);
  done(std::move(result));
}

void Supervisor::fail_start(const Error& error) {
  if (!starting_) return;  // already answered (the emulator's exit did it)
  // The run ends here: its exit, monitor replies and timers are stale from now on, so the
  // start is answered once, by the teardown below. The helper rolls back its own failures,
  // but an emulator may run (a monitor that failed, a broker that died mid-launch): it is
  // killed through the broker, then cleaned up (idempotent), before the failure is reported.
  Done done = std::exchange(starting_, nullptr);
  end_run();
  // Killed first: its last lines are complete only once it is gone (the relay's copy ends when
  // the emulator's output does). Kill answers once it is gone, or that nothing runs.
  ctx_.broker.call({BrokerOp::kKill, name_, SIGKILL}, [this, done = std::move(done), error](Result<int>) mutable {
    gather_said([this, done = std::move(done), error](std::string said) mutable {
      failure_ = error.message() + said;
      log_vm_event(name_.str(), LogLevel::kError, "start failed: " + failure_);
      teardown([this, done = std::move(done), failed = Error::make(error.code, failure_)](Result<void> cleaned) {
        if (cleaned) set_status(VmStatus::kFailed, failure_);
        done(failed);
      });
    });
  });
}

void Supervisor::gather_said(std::function<void(std::string)> next) {
  // Read before the cleanup, which removes the relay's copy with the runtime directory.
  auto explained = [this, next = std::move(next)](std::string said) {
    next(explain_emulator_said(said, ctx_.disk_targets ? ctx_.disk_targets(name_) : std::vector<std::string>()));
  };
  said_.push_back(std::make_unique<EmulatorSaid>(ctx_.io, name_, run_state_, ctx_.config.vm_runtime_dir(name_) + "/emulator.log",
                                                 kSaidWait, std::move(explained)));
}

void Supervisor::teardown(std::function<void(Result<void>)> done) {
  // Kill answers once the emulator is gone; a VM with nothing running answers "not running".
  ctx_.broker.call({BrokerOp::kKill, name_, SIGKILL}, [this, done = std::move(done)](Result<int>) mutable {
    ctx_.broker.call({BrokerOp::kCleanup, name_, 0}, [this, done = std::move(done)](Result<int> cleaned) {
      if (cleaned) {
        converge_timer_.cancel();
        if (std::exchange(unconverged_, false)) {
          if (failure_.empty()) set_status(VmStatus::kStopped, "");  // an expected exit, cleaned up late
          else set_status(VmStatus::kFailed, failure_ + "; cleaned up since");
        }
        return done({});
      }
      std::string reason = (failure_.empty() ? "" : failure_ + "; ") + "not cleaned up yet (retrying): " + cleaned.error().message();
      if (!unconverged_ || info_.reason != reason) set_status(VmStatus::kFailed, reason);
      unconverged_ = true;
      schedule_converge();
      done(cleaned.error());
    });
  });
}

void Supervisor::schedule_converge() {
  converge_timer_.expires_after(ctx_.converge_retry);
  converge_timer_.async_wait([this](boost::system::error_code ec) {
    if (ec || !unconverged_) return;
    enqueue([this] {
      if (!unconverged_) return finish_op();
      teardown([this](Result<void>) { finish_op(); });
    });
  });
}

void Supervisor::end_run() {
  ++run_;
  awaiting_unit_ = false;
  awaiting_broker_ = false;
  early_unit_word_.reset();
  watch_failed_ = false;
  if (qmp_) {
    qmp_->on_event = nullptr;
    qmp_->on_closed = nullptr;
    qmp_->close();
    qmp_.reset();
  }
  if (pidfd_) {
    pidfd_->close();
    pidfd_.reset();
  }
  stop_timer_.cancel();
  start_timer_.cancel();
  monitor_grace_.cancel();
}

void Supervisor::forget_run() {
  // No earlier run's output may be quoted for this one; its gatherings have answered (each
  // holds the operation queue until it has).
  run_state_ = {};
  said_.clear();
}

void Supervisor::attach(const VmState& state, bool fresh) {
  ++run_;  // a new run: its callbacks carry this generation
  const uint64_t run = run_;
  run_state_ = state;
  info_.pid = state.pid;
  info_.uid = state.uid;
  info_.zone = state.zone;
  info_.taps = state.taps;
  auto process = watch_process(state);
  if (gone(process)) {
    Error e = Error::make(ErrorCode::kSystem, "the emulator (pid " + std::to_string(state.pid) + ") is gone");
    if (fresh) return fail_start(e);
    return exited();
  }
  if (!process) {
    // Not a verdict on the emulator: a fresh start fails with the real error (and its
    // emulator is killed, as nobody could supervise it); an adopted VM stays running, says
    // why it is unwatched, and the watch is retried.
    Error e = process.error().wrap("VM '" + name_.str() + "': cannot watch the emulator (pid " +
                                   std::to_string(state.pid) + ")");
    if (fresh) return fail_start(e);
    watch_failed_ = true;
    set_status(info_.status == VmStatus::kStarting ? VmStatus::kRunning : info_.status, e.message() + "; retrying");
    adopted();
    stop_timer_.expires_after(kWatchRetry);
    stop_timer_.async_wait([this, run, state](boost::system::error_code ec) {
      if (!ec && run == run_) attach(state, false);
    });
    return;
  }
  watch_failed_ = false;
  if (fresh) {
    // The start's deadline runs from here: whatever the monitor does, the start ends in time.
    start_timer_.expires_after(ctx_.start_deadline);
    start_timer_.async_wait([this, run](boost::system::error_code ec) {
      if (ec || run != run_) return;
      auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(ctx_.start_deadline).count();
      fail_start(Error::make(ErrorCode::kSystem, "VM '" + name_.str() + "': no answer to " + start_step_ + " within " +
                                                     std::to_string(ms) + " ms; the emulator was killed"));
    });
  }
  pidfd_ = std::make_unique<asio::posix::stream_descriptor>(ctx_.io, process->release());
  watch_exit();
  qmp_ = std::make_shared<QmpClient>(ctx_.io);
  qmp_->on_event = [this, run](const Json& event) {
    if (run != run_) return;
    std::string name = QmpClient::string_field(event, "event");
    if (name == "SHUTDOWN") {
      // -no-shutdown keeps qemu alive after a guest poweroff; the supervisor ends it.
      // Sticky: the `quit` sent here (or at re-adoption) brings a second SHUTDOWN, with
      // guest: false, which must not turn a guest poweroff into an unexpected exit.
      if (event.contains("data") && QmpClient::bool_field(event["data"], "guest") && !guest_shutdown_) {
        guest_shutdown_ = true;
        if (!stop_requested_) {
          record_intent(StopIntent{StopIntent::kGuest, {}});
          // On its way out, and why: a stop asked for meanwhile joins this exit.
          if (info_.status == VmStatus::kRunning) set_status(VmStatus::kStopping, "guest powered off");
        }
      }
      if (qmp_) qmp_->execute("quit", nullptr, [](Result<Json>) {});
    }
  };
  qmp_->on_closed = [this, run] {
    // Replies still pending have failed already (and acted); between operations the loss is
    // worth saying: a stop will then go straight to the kill.
    if (run == run_ && info_.status == VmStatus::kRunning) info_.reason = "the monitor closed the connection";
  };
  auto monitor = ctx_.config.vm_runtime_dir(name_) + "/qmp.sock";
  start_step_ = "the monitor's greeting";
  qmp_->connect(monitor, [this, run, fresh](Result<void> ready) {
    if (run != run_) return;
    if (!ready) {
      Error e = ready.error().wrap("VM '" + name_.str() + "'");
      if (!fresh) return adopted_without_monitor(e.message());  // keep watching the process
      return fail_start_unless_exiting(e);
    }
    after_monitor_ready(fresh);
  });
}

// A monitor lost during a start is most often an emulator that refused the start and exited
// (an unreadable kernel, a bad -device): it closes its monitor a moment before its pidfd says
// so. That moment is waited for, so that the exit answers the start ("the emulator exited
// during its start; qemu said: ..."), QEMU's reason rather than the connection's echo of it.
void Supervisor::fail_start_unless_exiting(const Error& error) {
  monitor_grace_.expires_after(kMonitorLossGrace);
  monitor_grace_.async_wait([this, run = run_, error](boost::system::error_code ec) {
    if (!ec && run == run_) fail_start(error);
  });
}

void Supervisor::start_command(const std::string& command, Json arguments, std::function<void(const Json&)> next) {
  start_step_ = "'" + command + "'";
  qmp_->execute(command, std::move(arguments), [this, run = run_, command, next = std::move(next)](Result<Json> r) {
    if (run != run_) return;
    if (!r) return fail_start_unless_exiting(r.error().wrap("VM '" + name_.str() + "': '" + command + "' failed"));
    next(*r);
  });
}

void Supervisor::after_monitor_ready(bool fresh) {
  const uint64_t run = run_;
  qmp_->execute("query-vnc", nullptr, [this, run](Result<Json> r) {
    if (run != run_) return;  // informational: a failure here shows in the next command
    // The emulator's one VNC server listens on its Unix socket (daemon/vnc_channel.h): display
    // 0 of that socket. An emulator of an older version, listening on TCP in the host's
    // network, is left without one here until it restarts.
    if (r && QmpClient::bool_field(*r, "enabled") && QmpClient::string_field(*r, "family") == "unix") {
      info_.vnc_display = 0;
      info_.vnc_listen = "unix:" + QmpClient::string_field(*r, "service");  // QEMU puts the path there
    }
  });
  if (!fresh) {
    qmp_->execute("query-status", nullptr, [this, run](Result<Json> status) {
      if (run != run_) return;
      if (!status) {  // adopted: keep watching the process, report the monitor trouble
        adopted_without_monitor(status.error().wrap("VM '" + name_.str() + "': 'query-status' failed").message());
        return;
      }
      std::string s = QmpClient::string_field(*status, "status");
      if (s == "prelaunch") {
        abandon_interrupted_start(run);
        return adopted();
      }
      if (auto intent = std::exchange(resumed_stop_, std::nullopt)) {
        if (intent->kind == StopIntent::kGuest) {
          set_status(VmStatus::kStopping, "guest powered off");
          qmp_->execute("quit", nullptr, [](Result<Json>) {});
        } else {
          // The agent has the request already: carried on without pressing the button.
          press_button_ = intent->kind != StopIntent::kAgent;
          drive_stop(intent->kind == StopIntent::kForced, intent->deadline, "stop resumed after a vmlaunchd restart");
        }
        return adopted();
      }
      if (guest_shutdown_) {
        // The guest powered off during the adoption (its SHUTDOWN came before this answer):
        // `quit` is sent already.
        set_status(VmStatus::kStopping, "guest powered off");
        return adopted();
      }
      if (s == "shutdown") {
        // The guest powered off while nobody watched: -no-shutdown kept the emulator, and
        // its SHUTDOWN event went to no one. Do what that event does: quit, end as stopped.
        guest_shutdown_ = true;
        set_status(VmStatus::kStopping, "guest powered off while vmlaunchd was down");
        qmp_->execute("quit", nullptr, [](Result<Json>) {});
        return adopted();
      }
      set_status(VmStatus::kRunning, "adopted");
      log_vm_event(name_.str(), LogLevel::kInfo, "re-adopted (pid " + std::to_string(info_.pid) + ")");
      adopted();
    });
    return;
  }
  // A fresh emulator waits in prelaunch: the helper execs no plan without exactly one -S
  // (argv_policy.h). So `cont` follows at once, without a status query's round trip before it.
  auto go_on = [this] {
    start_command("cont", nullptr, [this](const Json&) {
      set_status(VmStatus::kRunning, "");
      complete_start({});
    });
  };
  std::string password = ctx_.vnc_password(name_);
  if (password.empty()) return go_on();
  // A VM whose XML asks for a password never runs without one.
  start_command("set_password", {{"protocol", "vnc"}, {"password", password}}, [go_on](const Json&) { go_on(); });
}

void Supervisor::abandon_interrupted_start(uint64_t run) {
  // Decided, not guessed: `cont` is the last step of a start, so an emulator still in
  // prelaunch belongs to a start whose requester was told it failed (vmlaunchd died). It is
  // torn down; resuming it would run a VM nobody asked for any more. Nothing but the start
  // failed, and its requester was told: once cleaned up, the VM is stopped.
  set_status(VmStatus::kStopping, "tearing down a start interrupted before the guest ran");
  enqueue([this, run] {
    if (run != run_) return finish_op();  // it exited meanwhile, and was cleaned up
    end_run();
    failure_.clear();
    teardown([this](Result<void> cleaned) {
      if (cleaned)
        set_status(VmStatus::kStopped,
                   "start interrupted before the guest ran (vmlaunchd stopped during the start); the emulator was killed");
      finish_op();
    });
  });
}

void Supervisor::watch_exit() {
  pidfd_->async_wait(asio::posix::stream_descriptor::wait_read, [this, run = run_](boost::system::error_code ec) {
    if (ec == asio::error::operation_aborted || run != run_) return;
    exited();
  });
}

void Supervisor::exited() {
  end_run();
  bool expected = stop_requested_ || guest_shutdown_;
  // An exit during a start answers the start (its QMP callbacks are stale now and dropped).
  Done start_done = std::exchange(starting_, nullptr);
  // With no operation in progress the cleanup is one: a start asked for meanwhile waits for
  // it, and cannot see (or be overwritten by) this run's end.
  bool owns_queue = !busy_ || std::exchange(adopting_, false);
  busy_ = true;
  if (expected && !start_done) return clean_up_exit(expected, owns_queue, "", nullptr);
  gather_said([this, expected, owns_queue, start_done = std::move(start_done)](std::string said) mutable {
    clean_up_exit(expected, owns_queue, said, std::move(start_done));
  });
}

void Supervisor::clean_up_exit(bool expected, bool owns_queue, std::string said, Done start_done) {
  std::string reason = stop_error_                 ? stop_error_->message()
                       : stop_requested_           ? exit_reason_
                       : guest_shutdown_           ? "guest powered off"
                                                   : "emulator exited unexpectedly" + said;
  ctx_.broker.call({BrokerOp::kCleanup, name_, 0}, [this, expected, reason, owns_queue, said,
                                                    start_done = std::move(start_done)](Result<int> cleaned) mutable {
    if (start_done) {
      Error e = Error::make(ErrorCode::kSystem, "VM '" + name_.str() + "': the emulator exited during its start" + said);
      failure_ = e.message();
      log_vm_event(name_.str(), LogLevel::kError, "start failed: the emulator exited during its start" + said);
      if (cleaned) set_status(VmStatus::kFailed, failure_);
      else teardown([](Result<void>) {});  // reports itself, and retries
      return start_done(e);
    }
    clear_intent();
    log_vm_event(name_.str(), expected ? LogLevel::kInfo : LogLevel::kError,
                 !expected                       ? "crashed: " + reason
                 : guest_shutdown_ && !stop_requested_ ? std::string("stopped: guest powered off")
                 : reason.empty()                ? std::string("stopped")
                                                 : "stopped: " + reason);
    if (cleaned) {
      set_status(expected ? VmStatus::kStopped : VmStatus::kFailed, reason);
    } else {
      // Retried until it converges; an expected exit then ends `stopped`, as it would have.
      failure_ = expected ? "" : reason;
      set_status(VmStatus::kFailed, (failure_.empty() ? "" : failure_ + "; ") +
                                        "not cleaned up yet (retrying): " + cleaned.error().message());
      unconverged_ = true;
      schedule_converge();
    }
    Result<void> outcome = !cleaned ? Result<void>(cleaned.error()) : stop_error_ ? Result<void>(*stop_error_) : Result<void>();
    auto waiters = std::move(stop_waiters_);
    stop_waiters_.clear();
    stop_requested_ = false;
    stop_error_.reset();
    exit_reason_.clear();
    for (auto& w : waiters) w(outcome);
    if (owns_queue) finish_op();
  });
}

void Supervisor::begin_stop(std::chrono::seconds timeout, bool force, Done done, StopMode mode) {
  if (unconverged_) return teardown(std::move(done));  // the stop of a failed start's leftovers
  if (info_.status == VmStatus::kStopping && pidfd_) {
    stop_waiters_.push_back(std::move(done));  // already on its way out: answered at its exit
    return;
  }
  if (watch_failed_) {
    // An adopted VM whose pidfd could not be opened yet: its end could not be seen.
    return done(Error::make(ErrorCode::kSystem, "VM '" + name_.str() + "' is not watched: " + info_.reason));
  }
  if (info_.status != VmStatus::kRunning || !pidfd_) return done({});  // stopping a stopped VM is not an error
  auto deadline = std::chrono::system_clock::now() + timeout;
  if (mode != StopMode::kAcpi && !force) return stop_by_agent(deadline, std::move(done), mode == StopMode::kAuto);
  stop_by_button(force, deadline, std::move(done));
}

void Supervisor::stop_by_button(bool force, std::chrono::system_clock::time_point deadline, Done done) {
  stop_waiters_.push_back(std::move(done));
  record_intent(StopIntent{force ? StopIntent::kForced : StopIntent::kGraceful, deadline});
  press_button_ = true;
  drive_stop(force, deadline, force ? "forced" : "");
  // Its exit says how it ended, as a deadline's "forced after N s" does (drive_stop cleared it).
  if (force) exit_reason_ = "forced at once: the guest was not asked to power off";
}

// The VM stays `running` while the agent is asked: if it does not answer, nothing was
// requested, and the stop either fails (--mode agent, as virsh's does) instead of pressing the
// button unasked, or (a plain stop) goes on with the button, like libvirt's default mode.
// Once it has the request, the stop is the button's without the presses: a power-off by the
// deadline, else `quit` and the kill.
void Supervisor::stop_by_agent(std::chrono::system_clock::time_point deadline, Done done, bool or_button) {
  constexpr std::chrono::seconds kAgentDeadline{10};
  // A plain stop must not spend the guest's deadline on an agent that does not answer.
  constexpr std::chrono::seconds kAgentTry{5};  // libvirt waits as long for the agent's guest-sync
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::system_clock::now());
  auto bound = or_button ? std::clamp<std::chrono::milliseconds>(left, std::chrono::milliseconds(0), kAgentTry)
                         : std::chrono::milliseconds(kAgentDeadline);
  std::string socket = ctx_.config.vm_runtime_dir(name_) + "/agent.sock";
  request_guest_shutdown(ctx_.io, socket, bound,
                         [this, run = run_, deadline, or_button, done = std::move(done)](Result<void> asked) mutable {
    // The emulator ended meanwhile (its exit was handled): there is nothing left to stop.
    if (run != run_ || info_.status != VmStatus::kRunning || !pidfd_) return done({});
    if (!asked && !or_button) return done(asked.error().wrap("VM '" + name_.str() + "': stop --mode agent"));
    if (!asked) {
      // No channel at all is the common case, and no news.
      if (asked.error().code != ErrorCode::kUnsupported)
        log_vm_event(name_.str(), LogLevel::kInfo, "the guest agent did not take the stop (" + asked.error().message() +
                                                       "); pressing the power button");
      return stop_by_button(false, deadline, std::move(done));
    }
    log_vm_event(name_.str(), LogLevel::kInfo, "stopping: the guest agent was asked to power off");
    stop_waiters_.push_back(std::move(done));
    record_intent(StopIntent{StopIntent::kAgent, deadline});
    press_button_ = false;
    drive_stop(false, deadline, "the guest agent was asked to power off");
  });
}

void Supervisor::drive_stop(bool force, std::chrono::system_clock::time_point deadline, std::string reason) {
  stop_requested_ = true;
  stop_error_.reset();
  exit_reason_.clear();
  if (force || !qmp_) {
    set_status(VmStatus::kStopping, std::move(reason));
    // `quit` closes the connection as it takes effect: its reply may never come, and
    // that is no failure. The kill after the grace period covers an emulator that ignores it.
    if (qmp_) qmp_->execute("quit", nullptr, [](Result<Json>) {});
    else ctx_.broker.call({BrokerOp::kKill, name_, SIGTERM}, [](Result<int>) {});
    return escalate_to_kill();
  }
  // The deadline is kept in wall-clock time, as a stop resumed after a restart reads it.
  auto left = std::max<std::chrono::system_clock::duration>(deadline - std::chrono::system_clock::now(), {});
  deadline_ = std::chrono::steady_clock::now() + left;
  stop_seconds_ = std::llround(std::chrono::duration<double>(left).count());
  press_power_button();  // sets the status, with the time left as its reason
}

void Supervisor::resume_stop_without_monitor() {
  auto intent = std::exchange(resumed_stop_, std::nullopt);
  if (!intent) return;
  // Nobody can ask the guest any more: quit fails at once, and the kill follows its grace.
  std::string why = info_.reason;
  drive_stop(true, intent->deadline, "stop resumed after a vmlaunchd restart: " + why);
}

void Supervisor::escalate_to_kill() {
  stop_timer_.expires_after(kKillGrace);
  stop_timer_.async_wait([this, run = run_](boost::system::error_code ec) {
    if (!ec && run == run_) ctx_.broker.call({BrokerOp::kKill, name_, SIGKILL}, [](Result<int>) {});
  });
}

void Supervisor::stop_command(const std::string& command) {
  if (!qmp_) return;
  qmp_->execute(command, nullptr, [this, run = run_, command](Result<Json> r) {
    // After the guest's SHUTDOWN the supervisor quits the emulator, which closes the monitor
    // with a press still unanswered: that is the stop succeeding, not the monitor failing.
    if (r || run != run_ || stop_error_ || guest_shutdown_) return;
    // The monitor failed mid-stop (an error, a closed connection, its deadline): the guest
    // cannot be asked any more, and waiting for the stop's deadline would only delay the
    // kill. The stop ends with the exit and reports this. But an emulator that is exiting
    // anyway (a kill, a power-off) closes its monitor a moment before its pidfd says so: that
    // moment is waited for, and such an exit is the stop succeeding.
    Error failure = r.error().wrap("VM '" + name_.str() + "': '" + command + "' failed during the stop; the emulator was killed");
    monitor_grace_.expires_after(kMonitorLossGrace);
    monitor_grace_.async_wait([this, run, failure](boost::system::error_code ec) {
      if (ec || run != run_ || stop_error_) return;
      stop_error_ = failure;
      stop_timer_.cancel();
      ctx_.broker.call({BrokerOp::kKill, name_, SIGKILL}, [](Result<int>) {});
    });
  });
}

// A guest that is still booting has not enabled its power button event yet and misses the
// press (QEMU latches the button only when the guest enabled it): press again every few
// seconds until the deadline, then quit.
void Supervisor::press_power_button() {
  if (stop_error_) return;
  auto now = std::chrono::steady_clock::now();
  if (now >= deadline_) {
    exit_reason_ = "forced after " + std::to_string(stop_seconds_) + " s: the guest did not power off";
    log_vm_event(name_.str(), LogLevel::kWarning, "the guest did not power off within " +
                                                      std::to_string(stop_seconds_) + " s; forcing the stop");
    set_status(VmStatus::kStopping, "the guest did not power off within " + std::to_string(stop_seconds_) + " s; quitting");
    if (qmp_) qmp_->execute("quit", nullptr, [](Result<Json>) {});
    return escalate_to_kill();
  }
  if (press_button_) stop_command("system_powerdown");
  set_status(VmStatus::kStopping, "waiting for the guest, " + std::to_string(seconds_left(deadline_ - now)) + " s left");
  stop_timer_.expires_after(std::min<std::chrono::steady_clock::duration>(kPowerButtonRepeat, deadline_ - now));
  stop_timer_.async_wait([this, run = run_](boost::system::error_code ec) {
    if (!ec && run == run_) press_power_button();
  });
}

// The intent file: RUNTIME/vmlaunchd/NAME.stop, in a directory of the daemon's own. One line:
// "graceful MS", "agent MS" (the guest agent has the request), "forced MS" (the stop's
// deadline, milliseconds since the epoch), "signalled MS" or "guest".
std::string Supervisor::intent_path() const { return ctx_.config.runtime_dir + "/vmlaunchd/" + name_.str() + ".stop"; }

void Supervisor::record_intent(const StopIntent& intent) {
  std::string dir = ctx_.config.runtime_dir + "/vmlaunchd";
  if (::mkdir(dir.c_str(), 0700) < 0 && errno != EEXIST) return;  // then a restart mid-stop reads `failed`
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(intent.deadline.time_since_epoch()).count();
  const char* kind = intent.kind == StopIntent::kGuest       ? "guest"
                     : intent.kind == StopIntent::kForced    ? "forced"
                     : intent.kind == StopIntent::kSignalled ? "signalled"
                     : intent.kind == StopIntent::kAgent     ? "agent"
                                                             : "graceful";
  (void)sys::write_file_atomic(intent_path(), std::string(kind) + " " + std::to_string(ms) + "\n", 0600);
}

void Supervisor::clear_intent() { ::unlink(intent_path().c_str()); }

std::optional<Supervisor::StopIntent> Supervisor::read_intent() const {
  auto text = sys::read_file(intent_path(), 64);
  if (!text) return std::nullopt;
  char kind[16] = {};
  long long ms = 0;
  if (std::sscanf(text->c_str(), "%15s %lld", kind, &ms) != 2) return std::nullopt;
  StopIntent intent;
  std::string k = kind;
  if (k == "guest") intent.kind = StopIntent::kGuest;
  else if (k == "forced") intent.kind = StopIntent::kForced;
  else if (k == "graceful") intent.kind = StopIntent::kGraceful;
  else if (k == "signalled") intent.kind = StopIntent::kSignalled;
  else if (k == "agent") intent.kind = StopIntent::kAgent;
  else return std::nullopt;
  intent.deadline = std::chrono::system_clock::time_point(std::chrono::milliseconds(ms));
  return intent;
}

void Supervisor::kill(int signal, Done done) {
  Error not_running = Error::make(ErrorCode::kConflict, "VM '" + name_.str() + "' is not running");
  bool alive = pidfd_ || watch_failed_;  // no pidfd: it exited and is being cleaned up
  if ((info_.status != VmStatus::kRunning && info_.status != VmStatus::kStopping) || !alive) return done(not_running);
  stop_requested_ = true;
  // A stop under way keeps its own record: carried on after a restart, it still ends the VM.
  if (info_.status == VmStatus::kRunning) record_intent(StopIntent{StopIntent::kSignalled, std::chrono::system_clock::now()});
  exit_reason_ = std::string("killed with ") + signal_name(signal);
  ctx_.broker.call({BrokerOp::kKill, name_, signal}, [this, run = run_, signal, done = std::move(done),
                                                      not_running](Result<int> r) mutable {
    if (!r) {
      // The emulator exited and its cleanup removed the state the broker reads: a race with
      // the exit, whose answer is the same as after it.
      if (r.error().code == ErrorCode::kNotFound || r.error().sys_errno == ENOENT) return done(not_running);
      return done(r.error());
    }
    // Gone already: answered now if its exit is cleaned up, else with the cleanup under way
    // (which sets the status and answers stop_waiters_).
    bool cleaned = run != run_ && info_.status != VmStatus::kRunning && info_.status != VmStatus::kStopping;
    if (cleaned) return done({});
    wait_for_exit(signal, std::move(done));
  });
}

void Supervisor::wait_for_exit(int signal, Done done) {
  // The signal is sent; the kill answers once the emulator is gone and cleaned up, as a stop
  // does, or at ctx_.kill_wait with an error: an operator reading "killed" may rely on it.
  auto once = std::make_shared<Done>(std::move(done));
  auto timer = std::make_shared<asio::steady_timer>(ctx_.io, ctx_.kill_wait);
  stop_waiters_.push_back([once, timer](Result<void> r) {
    timer->cancel();
    if (auto d = std::exchange(*once, nullptr)) d(std::move(r));
  });
  timer->async_wait([this, once, signal](boost::system::error_code ec) {
    if (ec) return;
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(ctx_.kill_wait).count();
    if (auto d = std::exchange(*once, nullptr))
      d(Error::make(ErrorCode::kSystem, "VM '" + name_.str() + "' is still running " + std::to_string(ms / 1000) + "." +
                                            std::to_string(ms % 1000 / 100) + " s after " + signal_name(signal) +
                                            (signal == SIGKILL ? "" : "; try --signal KILL")));
  });
}

void Supervisor::adopt(const VmState& state) {
  bool alive = prepare_adoption(state);
  enqueue([this, state, alive] { adopt_in_queue(state, alive); });
}

bool Supervisor::prepare_adoption(const VmState& state) {
  // The state is known at once, so no listing shows a half-adopted VM as plainly stopped.
  // Only a certain "gone" is cleaned up; a pidfd that cannot be opened (EMFILE...) is
  // reported and retried by attach(), never read as the emulator's death.
  bool alive = !gone(watch_process(state));
  // A stop (or a guest's power-off) that was under way when vmlaunchd went down: its exit is
  // expected, whenever it comes, and the stop is carried on once the monitor answers.
  resumed_stop_ = read_intent();
  if (resumed_stop_) {
    stop_requested_ = resumed_stop_->kind != StopIntent::kGuest;
    guest_shutdown_ = resumed_stop_->kind == StopIntent::kGuest;
  }
  // A signal sent on an operator's `kill`: its exit is expected, but there is no stop to carry on.
  if (resumed_stop_ && resumed_stop_->kind == StopIntent::kSignalled) resumed_stop_.reset();
  // Running or not is the monitor's to say (a start cut off before `cont` is torn down):
  // until it has, the VM reads `starting`, and operations wait behind the adoption.
  if (alive) set_status(resumed_stop_ ? VmStatus::kStopping : VmStatus::kStarting, "adopted; asking its monitor");
  else set_status(VmStatus::kStopping, "cleaning up: the emulator exited while vmlaunchd was down");
  return alive;
}

void Supervisor::adopt_in_queue(const VmState& state, bool alive) {
  if (!alive) {
    ctx_.broker.call({BrokerOp::kCleanup, name_, 0}, [this](Result<int> r) {
      clear_intent();
      set_status(r ? VmStatus::kStopped : VmStatus::kFailed, r ? "" : r.error().message());
      finish_op();
    });
    return;
  }
  adopting_ = true;
  attach(state, false);  // ends the adoption (adopted()) once the monitor has said what runs
}

void Supervisor::adopt_unfinished_launch(std::string state_path) {
  // Until the broker's cleanup has answered, the VM is on its way out: operations wait.
  set_status(VmStatus::kStopping, "cleaning up a start interrupted by a vmlaunchd restart");
  enqueue([this, state_path = std::move(state_path)] {
    ctx_.broker.call({BrokerOp::kCleanup, name_, 0}, [this, state_path](Result<int> cleaned) {
      // The launch finished first, and its emulator lives: adopted (in prelaunch, torn down).
      if (auto state = read_vm_state_file(state_path)) return adopt_in_queue(*state, prepare_adoption(*state));
      failure_.clear();  // nothing failed but the start, whose requester was told so
      const std::string why = "start interrupted (vmlaunchd stopped during the start)";
      if (cleaned) {
        set_status(VmStatus::kStopped, why + "; cleaned up");
      } else {
        set_status(VmStatus::kFailed, why + "; not cleaned up yet (retrying): " + cleaned.error().message());
        unconverged_ = true;
        schedule_converge();
      }
      finish_op();
    });
  });
}

void Supervisor::adopted() {
  if (std::exchange(adopting_, false)) finish_op();
}

void Supervisor::adopted_without_monitor(std::string why) {
  // Alive but unasked: reported running, with the monitor's trouble as the reason; a stop that
  // was under way goes on without it.
  log_vm_event(name_.str(), LogLevel::kWarning, "re-adopted (pid " + std::to_string(info_.pid) + ") without its monitor: " + why);
  if (info_.status == VmStatus::kStarting) set_status(VmStatus::kRunning, why);
  else info_.reason = std::move(why);
  resume_stop_without_monitor();
  adopted();
}

bool Supervisor::idle() const {
  return !busy_ && ops_.empty() && !pidfd_ && !qmp_ && !starting_ && !unconverged_ && !watch_failed_ &&
         stop_waiters_.empty() && (info_.status == VmStatus::kStopped || info_.status == VmStatus::kFailed);
}

void Supervisor::forget() {
  if (!idle() || (info_.status == VmStatus::kStopped && info_.reason.empty())) return;
  failure_.clear();
  set_status(VmStatus::kStopped, "");
}

}  // namespace vl
