// The daemon's side of the broker protocol: requests queued and answered in order.
#pragma once

#include "daemon/asio.h"
#include <deque>
#include <functional>
#include <string>

#include "common/broker_protocol.h"

namespace vl {

class BrokerClient final {
 public:
  using Callback = std::function<void(Result<int>)>;

  BrokerClient(boost::asio::io_context& io, std::string socket_path);
  BrokerClient(const BrokerClient&) = delete;
  BrokerClient& operator=(const BrokerClient&) = delete;

  /// Sends `request`; `done` gets the pid (start) or 0, or the broker's error.
  void call(const BrokerRequest& request, Callback done);

 private:
  void send_next();
  void fail_all(const Error& error);

  boost::asio::io_context& io_;
  std::string path_;
  std::unique_ptr<boost::asio::posix::stream_descriptor> socket_;
  std::deque<std::pair<std::string, Callback>> queue_;
  bool busy_ = false;
};

}  // namespace vl
