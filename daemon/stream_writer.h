// The client-to-VM direction of a channel: bytes written to the VM's socket in order, one
// write at a time, with a cap on what may wait (channel.h kMaxPendingWrite).
#pragma once

#include "daemon/asio.h"
#include <deque>
#include <functional>
#include <memory>
#include <vector>

#include "common/error.h"

namespace vl {

template <typename Socket>
class StreamWriter final {
 public:
  using Done = std::function<void(Result<void>)>;

  explicit StreamWriter(Socket& socket) : socket_(socket) {}
  StreamWriter(const StreamWriter&) = delete;
  StreamWriter& operator=(const StreamWriter&) = delete;

  /// Queues `bytes`; `done` once they are written, or with why not. A client that sends
  /// faster than the VM takes is refused beyond `max_pending` bytes, not buffered.
  void write(std::vector<uint8_t> bytes, Done done, size_t max_pending) {
    if (pending_ + bytes.size() > max_pending)
      return done(Error::make(ErrorCode::kConflict, "more than " + std::to_string(max_pending) +
                                                        " bytes are waiting to be written; wait for the replies"));
    pending_ += bytes.size();
    queue_.push_back({std::move(bytes), std::move(done)});
    if (queue_.size() == 1) next();
  }

  /// Fails what waits. Only once the socket is closed: a write in progress uses its bytes.
  void fail_all(const std::string& why) {
    auto queue = std::exchange(queue_, {});
    pending_ = 0;
    for (auto& item : queue) item.done(Error::make(ErrorCode::kConflict, why));
  }

 private:
  struct Item {
    std::vector<uint8_t> bytes;
    Done done;
  };

  // `alive` outlives this object in the handler: a writer destroyed mid-write is not touched.
  void next() {
    if (queue_.empty()) return;
    boost::asio::async_write(socket_, boost::asio::buffer(queue_.front().bytes),
                             [this, alive = std::weak_ptr<int>(alive_)](boost::system::error_code ec, size_t) {
                               if (alive.expired() || queue_.empty()) return;
                               Item item = std::move(queue_.front());
                               queue_.pop_front();
                               pending_ -= item.bytes.size();
                               if (ec) item.done(Error::make(ErrorCode::kSystem, "write to the VM: " + ec.message()));
                               else item.done({});
                               next();
                             });
  }

  Socket& socket_;
  std::deque<Item> queue_;
  size_t pending_ = 0;
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);
};

}  // namespace vl
