// Plans ahead: every defined domain's libvirt conversion is computed in the background when
// the daemon starts and whenever its XML or its emulator changes, so that no start waits for
// libvirt (its QEMU capabilities probe alone costs ~2 s on a fresh conversion root).
//
// One pre-plan at a time, its converter at nice 19 (converter.h: ConvertPriority): a 2-core
// host running VMs gives it what is idle. A start that needs a plan whose conversion is under
// way waits for it (Planner::plan_async); one that finds it queued converts at once, and the
// pre-plan then finds the cache filled. Pre-planning never blocks the control socket: every
// conversion's output is read on the event loop.
//
// States per VM, on one screen:
//   (none) --enqueue--> queued --its turn--> converting --done--> ready | failed
//   ready/failed --enqueue (XML or emulator changed)--> queued
//   any --forget (definition removed)--> (none)
// A VM enqueued while converting is queued again behind the others: its XML changed under the
// conversion, whose result is for the old one. Outcomes of forgotten VMs are dropped by name,
// so a late result of a removed VM leaves no state behind.
#pragma once

#include <deque>
#include <functional>
#include <map>
#include <string>
#include <utility>

#include "common/domain.h"
#include "daemon/asio.h"
#include "daemon/planner.h"

namespace vl {

class Preplanner final {
 public:
  /// The parsed domain and raw XML of a defined VM, or why it has none.
  using Source = std::function<Result<std::pair<Domain, std::string>>(const std::string& vm)>;

  Preplanner(boost::asio::io_context& io, Planner& planner, Source source);
  Preplanner(const Preplanner&) = delete;
  Preplanner& operator=(const Preplanner&) = delete;

  /// Queues `vm` for planning (again), unless it is queued already.
  void enqueue(const std::string& vm);
  /// Drops `vm`'s queue entry and outcome: its definition is gone.
  void forget(const std::string& vm);

  /// For `status`: "" (never pre-planned), "queued", "converting", "ready" or "failed: WHY".
  std::string state(const std::string& vm) const;
  /// Why `vm`'s last pre-plan failed, or "" if it did not.
  std::string failure(const std::string& vm) const;

 private:
  enum class State { kQueued, kConverting, kReady, kFailed };
  struct Outcome {
    State state = State::kQueued;
    std::string error;
  };

  /// Starts the next queued pre-plan unless one runs.
  void pump();
  void finished(const std::string& vm, Result<void> result);

  boost::asio::io_context& io_;
  Planner& planner_;
  Source source_;
  std::deque<std::string> queue_;
  std::map<std::string, Outcome> outcomes_;
  bool busy_ = false;
};

}  // namespace vl
