// The daemon's side of the broker protocol: requests queued and answered in order.
//
// One connection, opened on demand and kept. The broker may have gone since the last reply (a
// restart, its idle deadline, a newer connection replacing ours): a request that provably never
// reached it is sent again, once, on a new connection. "Never reached" is what the kernel
// says: the send failed (EPIPE, ECONNRESET, ENOTCONN), or the broker closed the connection
// with the request still unread in its queue (our recv sees ECONNRESET). When the broker
// closed the connection after reading a request (plain EOF), it may have acted on it: only an
// idempotent request (cleanup, reattach) is sent again; a start or kill fails with a message saying its
// outcome is unknown, so that no VM is ever started twice behind the caller's back.
#pragma once

#include "daemon/asio.h"
#include <deque>
#include <functional>
#include <memory>
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
  struct Pending {
    std::string message;
    BrokerOp op;
    Callback done;
    bool resent = false;  ///< the one retry on a new connection is used up
  };

  void send_next();
  void await_reply();
  /// The connection broke before an answer to the front request: retry it or fail it.
  void connection_lost(bool request_unread, const std::string& what);
  Result<void> connect();
  void fail_all(const Error& error);

  boost::asio::io_context& io_;
  std::string path_;
  std::unique_ptr<boost::asio::posix::stream_descriptor> socket_;
  std::deque<Pending> queue_;
  bool busy_ = false;
};

}  // namespace vl
