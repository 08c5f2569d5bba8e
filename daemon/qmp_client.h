// An asynchronous QMP client: replies matched by id, events delivered as they come.
#pragma once

#include "daemon/asio.h"
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

  explicit QmpClient(boost::asio::io_context& io) : socket_(io) {}
  QmpClient(const QmpClient&) = delete;
  QmpClient& operator=(const QmpClient&) = delete;

  /// Connects, reads the greeting and negotiates capabilities.
  void connect(const std::string& path, std::function<void(Result<void>)> ready);
  /// Runs a command; `done` gets its "return" value or its "error" as an Error.
  void execute(const std::string& command, Json arguments, ReplyHandler done);
  void close();

  std::function<void(const Json& event)> on_event;

  /// message[key] if it is a string, else "" (QMP input comes from the guest's emulator and is
  /// not trusted to have the documented types).
  static std::string string_field(const Json& message, const char* key);
  static bool bool_field(const Json& message, const char* key);
  std::function<void()> on_closed;

 private:
  void read_next();
  void dispatch(const Json& message);
  void fail_pending(const std::string& why);

  boost::asio::local::stream_protocol::socket socket_;
  boost::asio::streambuf buffer_;
  std::map<uint64_t, ReplyHandler> pending_;
  std::function<void(Result<void>)> greeting_;
  uint64_t next_id_ = 1;
  bool closed_ = false;
};

}  // namespace vl
