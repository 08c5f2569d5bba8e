#include "daemon/supervisor.h"

#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <utility>

#include "common/sys.h"

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
constexpr auto kPowerButtonRepeat = std::chrono::seconds(2);
constexpr auto kWatchRetry = std::chrono::seconds(1);

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

bool gone(const Result<UniqueFd>& process) { return !process && process.error().code == ErrorCode::kNotFound; }

}  // namespace

Supervisor::Supervisor(SupervisorContext& ctx, VmName name) : ctx_(ctx), name_(std::move(name)), stop_timer_(ctx.io) {
  info_.name = name_.str();
}

Supervisor::~Supervisor() { end_run(); }

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
  enqueue([this, done = std::move(done)]() mutable {
    if (info_.status == VmStatus::kRunning) {
      done(Error::make(ErrorCode::kConflict, "VM '" + name_.str() + "' is already running"));
      return finish_op();
    }
    end_run();  // whatever a failed earlier run left behind is history now
    set_status(VmStatus::kStarting, "");
    guest_shutdown_ = false;
    stop_requested_ = false;
    starting_ = std::move(done);
    ctx_.broker.call({BrokerOp::kStart, name_, 0}, [this, run = run_](Result<int> pid) {
      if (run != run_) return;
      if (!pid) return fail_start(pid.error());
      auto state = read_state(ctx_.config, name_);
      if (!state) return fail_start(state.error());
      attach(*state, true);
    });
  });
}

void Supervisor::complete_start(Result<void> result) {
  if (!starting_) return;
  Done done = std::exchange(starting_, nullptr);
  done(std::move(result));
  finish_op();
}

void Supervisor::fail_start(const Error& error) {
  if (!starting_) return;  // already answered (the emulator's exit did it)
  // The helper rolls back its own failures, except one after its privilege drop; cleanup is
  // idempotent, so it always runs before the failure is reported. The start's completion
  // travels with it: it is answered whatever happens to the run meanwhile.
  Done done = std::exchange(starting_, nullptr);
  ctx_.broker.call({BrokerOp::kCleanup, name_, 0}, [this, error, done = std::move(done)](Result<int>) mutable {
    set_status(VmStatus::kFailed, error.message());
    done(error);
    finish_op();
  });
}

void Supervisor::end_run() {
  ++run_;
  watch_failed_ = false;
  if (qmp_) {
    qmp_->on_event = nullptr;
    qmp_->close();
    qmp_.reset();
  }
  if (pidfd_) {
    pidfd_->close();
    pidfd_.reset();
  }
  stop_timer_.cancel();
}

void Supervisor::attach(const VmState& state, bool fresh) {
  ++run_;  // a new run: its callbacks carry this generation
  const uint64_t run = run_;
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
    // Not a verdict on the emulator (issue 9, item 11): a fresh start fails with the real
    // error (and its emulator is killed, as nobody could supervise it); an adopted VM stays
    // running, says why it is unwatched, and the watch is retried.
    Error e = process.error().wrap("VM '" + name_.str() + "': cannot watch the emulator (pid " +
                                   std::to_string(state.pid) + ")");
    if (fresh) {
      ctx_.broker.call({BrokerOp::kKill, name_, SIGKILL}, [](Result<int>) {});
      return fail_start(e);
    }
    watch_failed_ = true;
    set_status(info_.status, e.message() + "; retrying");
    stop_timer_.expires_after(kWatchRetry);
    stop_timer_.async_wait([this, run, state](boost::system::error_code ec) {
      if (!ec && run == run_) attach(state, false);
    });
    return;
  }
  watch_failed_ = false;
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
      if (event.contains("data") && QmpClient::bool_field(event["data"], "guest")) guest_shutdown_ = true;
      if (qmp_) qmp_->execute("quit", nullptr, [](Result<Json>) {});
    }
  };
  auto monitor = ctx_.config.vm_runtime_dir(name_) + "/qmp.sock";
  qmp_->connect(monitor, [this, run, fresh](Result<void> ready) {
    if (run != run_) return;
    if (!ready) {
      Error e = ready.error().wrap("VM '" + name_.str() + "'");
      if (!fresh) {  // adopted: keep watching the process, report the monitor trouble
        info_.reason = e.message();
        return;
      }
      ctx_.broker.call({BrokerOp::kKill, name_, SIGKILL}, [](Result<int>) {});
      return fail_start(e);
    }
    after_monitor_ready(fresh);
  });
}

void Supervisor::after_monitor_ready(bool fresh) {
  const uint64_t run = run_;
  qmp_->execute("query-vnc", nullptr, [this, run](Result<Json> r) {
    if (run != run_) return;
    if (r && QmpClient::bool_field(*r, "enabled")) {
      std::string service = QmpClient::string_field(*r, "service");
      int port = std::atoi(service.c_str());
      if (port >= 5900 && port <= 65535) info_.vnc_display = port - 5900;
      info_.vnc_listen = QmpClient::string_field(*r, "host");
    }
  });
  std::string password = fresh ? ctx_.vnc_password(name_) : "";
  auto go_on = [this, run, fresh] {
    qmp_->execute("query-status", nullptr, [this, run, fresh](Result<Json> status) {
      if (run != run_) return;
      std::string s = status ? QmpClient::string_field(*status, "status") : "";
      if (!fresh && s == "shutdown") {
        // The guest powered off while nobody watched: -no-shutdown kept the emulator, and
        // its SHUTDOWN event went to no one. Do what that event does: quit, end as stopped
        // (issue 9, item 9).
        guest_shutdown_ = true;
        set_status(VmStatus::kStopping, "guest powered off while vmlaunchd was down");
        qmp_->execute("quit", nullptr, [](Result<Json>) {});
        return;
      }
      auto running = [this, run, fresh](Result<Json> r) {
        if (run != run_) return;
        if (!r) {
          if (fresh) {
            ctx_.broker.call({BrokerOp::kKill, name_, SIGKILL}, [](Result<int>) {});
            fail_start(r.error());
          }
          return;
        }
        set_status(VmStatus::kRunning, "");
        if (fresh) complete_start({});
      };
      // A VM adopted in prelaunch was launched, but its `cont` never came.
      if (s == "prelaunch" || (fresh && s != "running")) qmp_->execute("cont", nullptr, std::move(running));
      else running(Json::object());
    });
  };
  if (password.empty()) return go_on();
  qmp_->execute("set_password", {{"protocol", "vnc"}, {"password", password}},
                [this, run, go_on = std::move(go_on)](Result<Json> r) {
                  // The emulator may have exited while this reply was pending: then qmp_ is
                  // gone (or belongs to a later run) and the start was already answered.
                  if (run != run_) return;
                  if (!r) info_.reason = "VNC password not set: " + r.error().message();
                  go_on();
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
  const uint64_t run = run_;
  bool expected = stop_requested_ || guest_shutdown_;
  std::string reason = stop_requested_ ? "" : guest_shutdown_ ? "guest powered off" : "emulator exited unexpectedly";
  // An exit during a start answers the start (its QMP callbacks are stale now and dropped).
  Done start_done = std::exchange(starting_, nullptr);
  ctx_.broker.call({BrokerOp::kCleanup, name_, 0}, [this, run, expected, reason,
                                                    start_done = std::move(start_done)](Result<int> cleaned) mutable {
    if (start_done) {
      Error e = Error::make(ErrorCode::kSystem, "VM '" + name_.str() + "': the emulator exited during its start");
      set_status(VmStatus::kFailed, cleaned ? e.message() : "cleanup failed: " + cleaned.error().message());
      start_done(e);
      return finish_op();
    }
    // Operations are queued behind stop waiters, so a later run can only have begun if
    // nobody waits on this outcome: then it is history and must not overwrite that run.
    if (run != run_ && stop_waiters_.empty()) return;
    if (!cleaned) set_status(VmStatus::kFailed, "cleanup failed: " + cleaned.error().message());
    else set_status(expected ? VmStatus::kStopped : VmStatus::kFailed, reason);
    auto waiters = std::move(stop_waiters_);
    stop_waiters_.clear();
    for (auto& w : waiters) w(cleaned ? Result<void>() : Result<void>(cleaned.error()));
    stop_requested_ = false;
    if (!waiters.empty()) finish_op();
  });
}

void Supervisor::stop(std::chrono::seconds timeout, bool force, Done done) {
  enqueue([this, timeout, force, done = std::move(done)]() mutable {
    if (info_.status == VmStatus::kStopping && pidfd_) {
      stop_waiters_.push_back(std::move(done));  // already on its way out: answered at its exit
      return;
    }
    if (watch_failed_) {
      // An adopted VM whose pidfd could not be opened yet: its end could not be seen.
      done(Error::make(ErrorCode::kSystem, "VM '" + name_.str() + "' is not watched: " + info_.reason));
      return finish_op();
    }
    if (info_.status != VmStatus::kRunning || !pidfd_) {
      done({});  // stopping a stopped VM is not an error
      return finish_op();
    }
    set_status(VmStatus::kStopping, force ? "forced" : "");
    stop_requested_ = true;
    stop_waiters_.push_back(std::move(done));
    auto escalate_to_kill = [this, run = run_] {
      stop_timer_.expires_after(kKillGrace);
      stop_timer_.async_wait([this, run](boost::system::error_code ec) {
        if (!ec && run == run_) ctx_.broker.call({BrokerOp::kKill, name_, SIGKILL}, [](Result<int>) {});
      });
    };
    if (force || !qmp_) {
      if (qmp_) qmp_->execute("quit", nullptr, [](Result<Json>) {});
      else ctx_.broker.call({BrokerOp::kKill, name_, SIGTERM}, [](Result<int>) {});
      return escalate_to_kill();
    }
    deadline_ = std::chrono::steady_clock::now() + timeout;
    press_power_button(escalate_to_kill);
  });
}

// A guest that is still booting has not enabled its power button event yet and misses the
// press (QEMU latches the button only when the guest enabled it): press again every few
// seconds until the deadline, then quit.
void Supervisor::press_power_button(std::function<void()> escalate_to_kill) {
  if (qmp_) qmp_->execute("system_powerdown", nullptr, [](Result<Json>) {});
  auto now = std::chrono::steady_clock::now();
  if (now >= deadline_) {
    info_.reason = "did not power off in time; quitting";
    if (qmp_) qmp_->execute("quit", nullptr, [](Result<Json>) {});
    return escalate_to_kill();
  }
  stop_timer_.expires_after(std::min<std::chrono::steady_clock::duration>(kPowerButtonRepeat, deadline_ - now));
  stop_timer_.async_wait([this, run = run_, escalate_to_kill](boost::system::error_code ec) {
    if (!ec && run == run_) press_power_button(escalate_to_kill);
  });
}

void Supervisor::kill(int signal, Done done) {
  if (info_.status != VmStatus::kRunning && info_.status != VmStatus::kStopping)
    return done(Error::make(ErrorCode::kConflict, "VM '" + name_.str() + "' is not running"));
  stop_requested_ = true;
  ctx_.broker.call({BrokerOp::kKill, name_, signal}, [done = std::move(done)](Result<int> r) {
    done(r ? Result<void>() : Result<void>(r.error()));
  });
}

void Supervisor::adopt(const VmState& state) {
  // The state is known at once, so no listing shows a half-adopted VM as plainly stopped.
  // Only a certain "gone" is cleaned up; a pidfd that cannot be opened (EMFILE...) is
  // reported and retried by attach(), never read as the emulator's death.
  bool alive = !gone(watch_process(state));
  if (alive) set_status(VmStatus::kRunning, "adopted");
  else set_status(VmStatus::kStopping, "cleaning up: the emulator exited while vmlaunchd was down");
  enqueue([this, state, alive] {
    if (!alive) {
      ctx_.broker.call({BrokerOp::kCleanup, name_, 0}, [this](Result<int> r) {
        set_status(r ? VmStatus::kStopped : VmStatus::kFailed, r ? "" : r.error().message());
        finish_op();
      });
      return;
    }
    attach(state, false);  // nobody waits on an adoption
    finish_op();
  });
}

}  // namespace vl
