// Polling with a deadline: the harness may poll what it cannot wait for; the product never does.
#pragma once

#include <chrono>
#include <thread>

namespace vl::test {

/// Polls `done` every 20 ms until it holds or `limit` has passed; returns whether it held.
template <typename Pred>
bool eventually(Pred done, std::chrono::milliseconds limit = std::chrono::seconds(60)) {
  auto until = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

}  // namespace vl::test
