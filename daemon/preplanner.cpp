#include "daemon/preplanner.h"

#include <algorithm>

#include "daemon/event_log.h"

namespace vl {

Preplanner::Preplanner(boost::asio::io_context& io, Planner& planner, Source source)
    : io_(io), planner_(planner), source_(std::move(source)) {}

void Preplanner::enqueue(const std::string& vm) {
  if (std::find(queue_.begin(), queue_.end(), vm) == queue_.end()) queue_.push_back(vm);
  Outcome& outcome = outcomes_[vm];
  if (outcome.state != State::kConverting) outcome = Outcome{};
  pump();
}

void Preplanner::forget(const std::string& vm) {
  queue_.erase(std::remove(queue_.begin(), queue_.end(), vm), queue_.end());
  outcomes_.erase(vm);
}

std::string Preplanner::state(const std::string& vm) const {
  auto it = outcomes_.find(vm);
  if (it == outcomes_.end()) return "";
  // Queued again while converting: the conversion under way is for an older XML.
  if (std::find(queue_.begin(), queue_.end(), vm) != queue_.end()) return "queued";
  switch (it->second.state) {
    case State::kQueued: return "queued";
    case State::kConverting: return "converting";
    case State::kReady: return "ready";
    case State::kFailed: return "failed: " + it->second.error;
  }
  return "";
}

std::string Preplanner::failure(const std::string& vm) const {
  auto it = outcomes_.find(vm);
  return it != outcomes_.end() && it->second.state == State::kFailed ? it->second.error : "";
}

void Preplanner::pump() {
  while (!busy_ && !queue_.empty()) {
    std::string vm = std::move(queue_.front());
    queue_.pop_front();
    auto defined = source_(vm);
    if (!defined) {
      // Not definable now (unparsable, refused file): `list` says why already; a fix is a
      // write, which queues it again.
      finished(vm, defined.error());
      continue;
    }
    busy_ = true;
    outcomes_[vm].state = State::kConverting;
    auto& [domain, xml] = *defined;
    // prepare_async may answer at once (a cache hit): `busy_` is cleared in finished() and
    // this loop goes on with the next VM.
    planner_.prepare_async(io_, domain, std::move(xml), [this, vm](Result<void> result) {
      busy_ = false;
      finished(vm, std::move(result));
      // Not from inside prepare_async's own call: the next conversion starts from the loop.
      boost::asio::post(io_, [this] { pump(); });
    });
  }
}

void Preplanner::finished(const std::string& vm, Result<void> result) {
  auto it = outcomes_.find(vm);
  if (it == outcomes_.end()) return;  // forgotten meanwhile: its definition is gone
  if (std::find(queue_.begin(), queue_.end(), vm) != queue_.end()) return;  // queued again: stale result
  if (result) {
    it->second = Outcome{State::kReady, ""};
    return;
  }
  it->second = Outcome{State::kFailed, result.error().message()};
  log_vm_event(vm, LogLevel::kWarning, "cannot be planned ahead of its start: " + result.error().message());
}

}  // namespace vl
