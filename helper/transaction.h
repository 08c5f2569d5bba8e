// Runs privileged steps in order and undoes the completed ones, in reverse, if a later step
// fails or the transaction is abandoned.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "common/error.h"
#include "helper/fault.h"
#include "helper/log.h"

namespace vl::helper {

class Transaction final {
 public:
  Transaction() = default;
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;
  ~Transaction() { rollback(); }

  /// Runs `action`; on success remembers `undo` for a rollback. A failed step's error is the
  /// action's own, which names the object it failed on.
  Result<void> step(const std::string& name, const std::function<Result<void>()>& action,
                    std::function<void()> undo) {
    if (auto injected = maybe_fail(name); !injected) return std::move(injected).error();
    if (auto done = action(); !done) return std::move(done).error();
    undo_.push_back({name, std::move(undo)});
    return {};
  }

  /// Keeps everything done so far: nothing will be undone.
  void commit() { undo_.clear(); }

  /// Undoes the completed steps, newest first. Undo actions log their own failures.
  void rollback() {
    while (!undo_.empty()) {
      auto [name, undo] = std::move(undo_.back());
      undo_.pop_back();
      log_info("rolling back step '" + name + "'");
      if (undo) undo();
    }
  }

 private:
  struct Done {
    std::string name;
    std::function<void()> undo;
  };
  std::vector<Done> undo_;
};

}  // namespace vl::helper
