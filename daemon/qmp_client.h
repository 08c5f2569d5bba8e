// An asynchronous QMP client: replies matched by id, events delivered as they come.
//
// The emulator at the other end runs as the VM's uid and is not trusted (a guest may own it):
// every read is bounded (kMaxLine) and every exchange has a deadline (connect through greeting,
// then each command). A monitor that breaks either is given up: the exchange fails, everything
// pending fails with it, the socket is closed and on_closed fires, so the supervisor can kill
// the emulator through the broker instead of waiting on it forever.
#pragma once

#include "daemon/asio.h"
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "common/error.h"

namespace vl {

class QmpClient final : public std::enable_shared_from_this<QmpClient> {
 public:
  using Json = nlohmann::json;
  using ReplyHandler = std::function<void(Result<Json>)>;

  /// The longest line (one message) accepted from the monitor. QEMU's largest replies
  /// (query-qmp-schema) are about 200 KiB.
  static constexpr size_t kMaxLine = size_t{1} << 20;
  /// The default deadline of an exchange: QMP commands vmlaunch sends answer in milliseconds
  /// (system_powerdown and quit answer at once; the shutdown itself is an event).
  static constexpr std::chrono::milliseconds kDefaultTimeout{10'000};

  explicit QmpClient(boost::asio::io_context& io) : socket_(io), buffer_(kMaxLine) {}
  QmpClient(const QmpClient&) = delete;
  QmpClient& operator=(const QmpClient&) = delete;

  /// The deadline for connect + greeting and for each command run without an explicit one.
  void set_timeout(std::chrono::milliseconds timeout) { timeout_ = timeout; }
  /// Connects, reads the greeting and negotiates capabilities, each within the timeout.
  void connect(const std::string& path, std::function<void(Result<void>)> ready);
  /// Runs a command; `done` gets its "return" value or its "error" as an Error. With no reply
  /// within the timeout, `done` gets an error naming the command and the time waited (no errno:
  /// the cause is known), and the connection closes.
  void execute(const std::string& command, Json arguments, ReplyHandler done);
  /// The same with this command's own deadline (for commands that legitimately take longer).
  void execute(const std::string& command, Json arguments, std::chrono::milliseconds timeout, ReplyHandler done);
  void close();

  std::function<void(const Json& event)> on_event;

  /// message[key] if it is a string, else "" (QMP input comes from the guest's emulator and is
  /// not trusted to have the documented types).
  static std::string string_field(const Json& message, const char* key);
  static bool bool_field(const Json& message, const char* key);
  /// Fires once when the connection ends: the monitor closed it, broke the protocol limits,
  /// or missed a deadline.
  std::function<void()> on_closed;

 private:
  struct Pending {
    std::string command;
    ReplyHandler done;
    std::shared_ptr<boost::asio::steady_timer> deadline;
  };

  void read_next();
  void dispatch(const Json& message);
  void fail_pending(const std::string& why);
  void expire(uint64_t id, std::chrono::milliseconds timeout);
  /// Ends the connection once: closes the socket, fails everything pending, fires on_closed.
  void give_up(const std::string& why);

  boost::asio::local::stream_protocol::socket socket_;
  boost::asio::streambuf buffer_;  ///< max_size kMaxLine: a longer line fails the read
  std::map<uint64_t, Pending> pending_;
  std::function<void(Result<void>)> greeting_;
  std::shared_ptr<boost::asio::steady_timer> greeting_deadline_;
  std::chrono::milliseconds timeout_ = kDefaultTimeout;
  uint64_t next_id_ = 1;
  bool closed_ = false;
  bool gave_up_ = false;
};

}  // namespace vl
