// The chaos suite's schedule: everything it will do, drawn up front from one seed.
//
// A run is a sequence of rounds. In a round up to `clients` vmctl operations run at once, each
// from its own client, and at most a few faults (SIGKILL of the daemon, of the broker, or of an
// emulator from outside) strike at a drawn delay while they run. A round ends when every client
// has its answer; the driver then waits until no VM is in a transitional state before the next.
// Only the timing inside a round is left to the machine, so a seed reproduces the same
// operations on the same VMs in the same order.
#pragma once

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace vl::chaos {

struct Params {
  uint64_t seed = 0;
  int ops = 300;          ///< client operations (faults come on top)
  int vms = 6;
  int clients = 3;        ///< concurrent vmctl clients per round, at most
  int daemon_kills = 10;
  int broker_kills = 10;
  int qemu_kills = 20;
  int check_every = 10;   ///< kernel invariants after every this many operations
  bool vnc = false;       ///< VNC with autoport on every VM
  int burst = 0;          ///< finally: this many more VMs started by one vmctl call
  bool keep_going = false;  ///< continue after a failed check (to collect more findings)
  bool warm = true;       ///< compute every plan before the first round (a warm cache, as on a host)
};

enum class OpKind { kStart, kStop, kStopForce, kKillTerm, kKillKill, kRestart, kStatus, kList, kStopAll };
enum class FaultKind { kDaemonKill, kBrokerKill, kQemuKill };

inline const char* op_name(OpKind k) {
  switch (k) {
    case OpKind::kStart: return "start";
    case OpKind::kStop: return "stop";
    case OpKind::kStopForce: return "stop --force";
    case OpKind::kKillTerm: return "kill --signal TERM";
    case OpKind::kKillKill: return "kill --signal KILL";
    case OpKind::kRestart: return "restart";
    case OpKind::kStatus: return "status";
    case OpKind::kList: return "list";
    case OpKind::kStopAll: return "stop --all";
  }
  return "?";
}

inline const char* fault_name(FaultKind k) {
  switch (k) {
    case FaultKind::kDaemonKill: return "SIGKILL daemon + restart";
    case FaultKind::kBrokerKill: return "SIGKILL broker + restart";
    case FaultKind::kQemuKill: return "SIGKILL emulator";
  }
  return "?";
}

/// Operations that name no VM.
inline bool is_global(OpKind k) { return k == OpKind::kList || k == OpKind::kStopAll; }

struct ClientOp {
  OpKind kind;
  int vm = -1;  ///< index into the VM names; -1 for list and stop --all
};

struct Fault {
  FaultKind kind;
  int delay_ms = 0;   ///< after the round's clients were started
  uint32_t pick = 0;  ///< kQemuKill: chooses among the VMs running when the round begins
};

struct Round {
  std::vector<ClientOp> ops;
  std::vector<Fault> faults;  ///< in order of delay
};

/// Draws the whole run from params.seed. Operation mix (weights): start 26, stop 9,
/// stop --force 9, kill TERM 5, kill KILL 5, restart 10, status 14, list 14, stop --all 2.
/// Within a round every operation names a different VM, except that one in seven is
/// deliberately sent to a VM another client of the round operates on (contention).
inline std::vector<Round> make_schedule(const Params& p) {
  std::mt19937_64 rng(p.seed);
  auto below = [&](int n) { return static_cast<int>(rng() % static_cast<uint64_t>(n)); };
  struct Weighted {
    OpKind kind;
    int weight;
  };
  static constexpr Weighted kMix[] = {{OpKind::kStart, 26},    {OpKind::kStop, 9},     {OpKind::kStopForce, 9},
                                      {OpKind::kKillTerm, 5},  {OpKind::kKillKill, 5}, {OpKind::kRestart, 10},
                                      {OpKind::kStatus, 14},   {OpKind::kList, 14},    {OpKind::kStopAll, 2}};
  int total_weight = 0;
  for (const auto& w : kMix) total_weight += w.weight;
  auto draw_kind = [&] {
    int r = below(total_weight);
    for (const auto& w : kMix) {
      if (r < w.weight) return w.kind;
      r -= w.weight;
    }
    return OpKind::kStatus;
  };

  std::vector<Round> rounds;
  int left = p.ops;
  while (left > 0) {
    Round round;
    int n = std::min(left, 1 + below(std::max(1, p.clients)));
    std::vector<int> used;
    for (int i = 0; i < n; ++i) {
      ClientOp op{draw_kind()};
      if (!is_global(op.kind)) {
        if (!used.empty() && (below(7) == 0 || static_cast<int>(used.size()) >= p.vms)) {
          op.vm = used[static_cast<size_t>(below(static_cast<int>(used.size())))];
        } else {
          do op.vm = below(p.vms);
          while (std::find(used.begin(), used.end(), op.vm) != used.end());
          used.push_back(op.vm);
        }
      }
      round.ops.push_back(op);
    }
    left -= n;
    rounds.push_back(std::move(round));
  }

  // Faults go to distinct rounds while there are enough of them.
  std::vector<Fault> faults;
  for (int i = 0; i < p.daemon_kills; ++i) faults.push_back({FaultKind::kDaemonKill});
  for (int i = 0; i < p.broker_kills; ++i) faults.push_back({FaultKind::kBrokerKill});
  for (int i = 0; i < p.qemu_kills; ++i) faults.push_back({FaultKind::kQemuKill});
  std::vector<size_t> slots(rounds.size());
  for (size_t i = 0; i < slots.size(); ++i) slots[i] = i;
  std::shuffle(slots.begin(), slots.end(), rng);
  for (size_t i = 0; i < faults.size() && !rounds.empty(); ++i) {
    Fault f = faults[i];
    // Early strikes hit operations in flight (a start under TCG takes a few hundred ms); late
    // ones mostly hit an idle system, which must survive too.
    f.delay_ms = below(4) == 0 ? 400 + below(1600) : below(400);
    f.pick = static_cast<uint32_t>(rng());
    rounds[slots[i % slots.size()]].faults.push_back(f);
  }
  for (auto& r : rounds)
    std::sort(r.faults.begin(), r.faults.end(), [](const Fault& a, const Fault& b) { return a.delay_ms < b.delay_ms; });
  return rounds;
}

}  // namespace vl::chaos
