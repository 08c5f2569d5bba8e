// The daemon's side of the broker protocol: requests queued, several in flight.
//
// Up to kBrokerConnections connections ("lanes"), opened on demand and kept, each with at most
// one request in flight (the protocol is one reply per request, in order, per connection): a
// request goes out on the first free lane, so starts of different VMs run concurrently in the
// broker, and a slow request (a kill waiting for an exit) holds only its own lane. Requests of
// one VM still go out one at a time, in the order they were made (a kill sent without waiting
// for its answer is handled before the cleanup that follows it, as on one connection): a
// request waits while another of its VM is in flight. On each lane: the broker may have gone since the last reply The broker may have gone since the last reply (a
// restart, its idle deadline, a newer connection replacing ours): a request that provably never
// reached it is sent again, once, on a new connection. "Never reached" is what the kernel
// says: the send failed (EPIPE, ECONNRESET, ENOTCONN), or the broker closed the connection
// with the request still unread in its queue (our recv sees ECONNRESET). When the broker
// closed the connection after reading a request (plain EOF), it may have acted on it: only an
// idempotent request (cleanup, reattach, inspect) is sent again; a start or kill fails with a message saying its
// outcome is unknown, so that no VM is ever started twice behind the caller's back.
#pragma once

#include "daemon/asio.h"
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/broker_protocol.h"

namespace vl {

class BrokerClient final {
 public:
  using Callback = std::function<void(Result<int>)>;
  using ReplyCallback = std::function<void(Result<BrokerReply>)>;

  BrokerClient(boost::asio::io_context& io, std::string socket_path);
  BrokerClient(const BrokerClient&) = delete;
  BrokerClient& operator=(const BrokerClient&) = delete;

  /// Sends `request`; `done` gets the pid (start) or 0, or the broker's error.
  void call(const BrokerRequest& request, Callback done);
  /// Sends `request`; `done` gets the whole successful reply (an inspect's facts), or the error.
  void call_for_reply(const BrokerRequest& request, ReplyCallback done);

 private:
  struct Pending {
    std::string message;
    BrokerOp op;
    std::string vm;
    ReplyCallback done;
    bool resent = false;  ///< the one retry on a new connection is used up
  };
  /// One connection and the request in flight on it, if any.
  struct Lane {
    std::unique_ptr<boost::asio::posix::stream_descriptor> socket;
    std::optional<Pending> current;
  };

  /// Hands queued requests to free lanes, opening lanes up to kBrokerConnections; a request
  /// whose VM has one in flight waits.
  void dispatch();
  bool in_flight(const std::string& vm) const;
  /// A lane without a request, preferring one whose connection is open; null if none is left.
  Lane* free_lane();
  void send(Lane& lane);
  void await_reply(Lane& lane);
  /// The lane's connection broke before an answer to its request: retry it or fail it.
  void connection_lost(Lane& lane, bool request_unread, const std::string& what);
  Result<void> connect(Lane& lane);
  /// Fails the lane's request and every queued one (the broker cannot be reached).
  void fail_all(Lane& lane, const Error& error);
  /// Ends the lane's request with `result`, then lets the lane take the next.
  void finish(Lane& lane, Result<BrokerReply> result);

  boost::asio::io_context& io_;
  std::string path_;
  std::deque<Pending> queue_;
  std::vector<std::unique_ptr<Lane>> lanes_;  ///< never shrinks: callbacks hold Lane pointers
};

}  // namespace vl
