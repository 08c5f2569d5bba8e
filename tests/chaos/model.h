// What a round of the chaos suite allows: which failed answers are expected, and which states
// each VM may be in once the round settled. Pure functions of the round's facts, specified in
// model_test.cpp.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include "tests/chaos/invariants.h"
#include "tests/chaos/schedule.h"
#include "tests/chaos/vmctl_runner.h"

namespace vl::chaos {

/// One client operation as it ran.
struct Done {
  ClientOp op;
  VmctlResult result;
  std::map<std::string, VmOutcome> outcomes;  ///< per VM, for state-changing operations
};

/// One fault as it ran.
struct Struck {
  Fault fault;
  std::string vm;   ///< kQemuKill: the VM whose emulator was aimed at
  bool hit = true;  ///< kQemuKill: the signal reached a live emulator
};

/// What happened in a round, as far as the rules below care.
struct RoundFacts {
  bool daemon_killed = false, broker_killed = false, stop_all = false;
  std::set<std::string> qemu_killed;    ///< emulator hit from outside
  std::map<std::string, int> changers;  ///< state-changing operations per VM (stop --all aside)
};

inline RoundFacts round_facts(const std::vector<Done>& done, const std::vector<Struck>& struck,
                              const std::vector<std::string>& names) {
  RoundFacts f;
  for (const auto& s : struck) {
    f.daemon_killed |= s.fault.kind == FaultKind::kDaemonKill;
    f.broker_killed |= s.fault.kind == FaultKind::kBrokerKill;
    if (s.fault.kind == FaultKind::kQemuKill && s.hit) f.qemu_killed.insert(s.vm);
  }
  for (const auto& d : done) {
    if (d.op.kind == OpKind::kStopAll) f.stop_all = true;
    if (d.op.vm >= 0 && d.op.kind != OpKind::kStatus) ++f.changers[names[static_cast<size_t>(d.op.vm)]];
  }
  return f;
}

inline bool has(const std::string& s, const char* what) { return s.find(what) != std::string::npos; }

/// What vmctl says when the daemon is gone or goes away mid-call. vmctl(1) promises the first
/// two; the others are sd-bus's and the socket's own words for the same loss, which vmctl
/// passes through unchanged when the daemon dies while it connects or waits for a reply.
inline bool daemon_gone(const std::string& error) {
  for (const char* m : {"lost the connection to vmlaunchd", "vmlaunchd is not running", "Connection terminated",
                        "Connection reset by peer", "Transport endpoint is not connected", "Broken pipe"})
    if (has(error, m)) return true;
  return false;
}

/// Why a failed answer is expected (see chaos_test.cpp's header), or "" if it is not.
inline std::string expected_failure(const ClientOp& op, const std::string& vm, const std::string& error, const Rows& pre,
                                    const RoundFacts& f) {
  // Another client changed the same VM in this round (stop --all changes every VM).
  bool contended = (f.changers.count(vm) ? f.changers.at(vm) : 0) + (f.stop_all ? 1 : 0) > 1;
  std::string state = pre.count(vm) ? pre.at(vm).state : "";
  if (f.daemon_killed && daemon_gone(error)) return "daemon killed";
  if (f.broker_killed && has(error, "vmlaunch broker")) return "broker killed";
  if ((op.kind == OpKind::kStart || op.kind == OpKind::kRestart) && has(error, "is already running") &&
      ((op.kind == OpKind::kStart && state == "running") || contended || f.qemu_killed.count(vm) || f.daemon_killed))
    return "conflict: already running";
  if ((op.kind == OpKind::kKillTerm || op.kind == OpKind::kKillKill) && has(error, "is not running") &&
      (state != "running" || contended || f.qemu_killed.count(vm)))
    return "conflict: not running";
  return "";
}

/// The states a VM may be in once the round settled, and what its emulator pid must do.
struct Expectation {
  std::set<std::string> states;
  bool same_pid = false;  ///< the emulator that ran before still runs: anything else loses the VM
  bool new_pid = false;   ///< a restart answered ok: a new emulator
};

inline bool active(const std::string& state) { return state == "running" || state == "starting" || state == "stopping"; }

/// `in_doubt`: an operation of the previous round on this VM lost its answer to a kill, and may
/// still take effect (a power button pressed by a daemon that then died: the guest powers off).
inline Expectation expect_after(const std::string& name, const VmRow& before, const std::vector<Done>& done,
                                const RoundFacts& f, bool in_doubt) {
  Expectation e;
  int changers = f.changers.count(name) ? f.changers.at(name) : 0;
  // The one operation that changes the VM, if there is exactly one, and its answer.
  const Done* only = nullptr;
  VmOutcome answer;
  for (const auto& d : done) {
    // A `stop --all` cut short by a daemon kill may have reached any VM active when it began.
    bool cut = d.op.kind == OpKind::kStopAll && f.daemon_killed && d.result.exit_code != 0 && active(before.state);
    changers += d.op.kind == OpKind::kStopAll && (d.outcomes.count(name) || cut);
    if (d.op.kind != OpKind::kStatus && d.op.kind != OpKind::kList && d.outcomes.count(name)) {
      only = &d;
      answer = d.outcomes.at(name);
    }
  }
  bool hit = f.qemu_killed.count(name) > 0;
  if (changers == 0 && !hit && in_doubt) {
    e.states = {before.state, "stopped", "failed"};
  } else if (changers == 0 && !hit) {
    e.states = {before.state};
    if (before.state == "failed" && f.daemon_killed) e.states.insert("stopped");  // a new daemon forgets
    e.same_pid = before.state == "running";
  } else if (changers == 0) {
    e.states = {"failed"};
    if (f.daemon_killed) e.states.insert("stopped");  // died while the daemon was down
  } else if (changers == 1 && !hit && only && answer.ok) {
    // A successful answer is a commitment, whatever else dies later in the round.
    switch (only->op.kind) {
      case OpKind::kStart: e.states = {"running"}; break;
      case OpKind::kRestart:
        e.states = {"running"};
        e.new_pid = before.state == "running";
        break;
      default:
        e.states = {"stopped"};
        if (before.state == "failed") e.states.insert("failed");  // stopping a failed VM keeps its reason
        break;
    }
  } else if (changers == 1 && !hit && only && !f.daemon_killed && !f.broker_killed) {
    e.states = {before.state};  // refused (conflict): nothing changed
    e.same_pid = before.state == "running";
  } else {
    e.states = {"running", "stopped", before.state};
    if (hit || f.daemon_killed || f.broker_killed) e.states.insert("failed");
  }
  return e;
}

/// The VMs whose operation in this round lost its answer to a kill (see expect_after).
inline std::set<std::string> doubt_of(const Rows& pre, const std::vector<Done>& done, const RoundFacts& f) {
  std::set<std::string> doubt;
  for (const auto& d : done) {
    for (const auto& [name, o] : d.outcomes)
      if (!o.ok && ((f.daemon_killed && daemon_gone(o.error)) || (f.broker_killed && has(o.error, "vmlaunch broker"))))
        doubt.insert(name);
    if (d.op.kind == OpKind::kStopAll && f.daemon_killed && d.result.exit_code != 0)
      for (const auto& [name, row] : pre)
        if (active(row.state)) doubt.insert(name);
  }
  return doubt;
}

}  // namespace vl::chaos
