#include "daemon/broker_client.h"

#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>
#include <cstring>

#include "common/sys.h"

namespace vl {

namespace asio = boost::asio;

namespace {

// The errors with which the kernel says a message did not reach the peer.
bool not_delivered(int err) { return err == EPIPE || err == ECONNRESET || err == ENOTCONN; }

const char* op_name(BrokerOp op) {
  switch (op) {
    case BrokerOp::kStart: return "start";
    case BrokerOp::kKill: return "kill";
    case BrokerOp::kCleanup: return "cleanup";
    case BrokerOp::kReattach: return "reattach";
    case BrokerOp::kInspect: return "inspect";
  }
  return "request";
}

}  // namespace

BrokerClient::BrokerClient(asio::io_context& io, std::string socket_path) : io_(io), path_(std::move(socket_path)) {}

void BrokerClient::call(const BrokerRequest& request, Callback done) {
  call_for_reply(request, [done = std::move(done)](Result<BrokerReply> reply) {
    if (!reply) return done(std::move(reply).error());
    done(reply->pid);
  });
}

void BrokerClient::call_for_reply(const BrokerRequest& request, ReplyCallback done) {
  queue_.push_back({encode_broker_request(request), request.op, request.vm.str(), std::move(done)});
  dispatch();
}

bool BrokerClient::in_flight(const std::string& vm) const {
  return std::any_of(lanes_.begin(), lanes_.end(), [&](const auto& lane) { return lane->current && lane->current->vm == vm; });
}

BrokerClient::Lane* BrokerClient::free_lane() {
  // An open connection first: sequential requests share one connection.
  Lane* free = nullptr;
  for (auto& lane : lanes_)
    if (!lane->current && (!free || (lane->socket && !free->socket))) free = lane.get();
  if (!free && lanes_.size() < kBrokerConnections) free = lanes_.emplace_back(std::make_unique<Lane>()).get();
  return free;
}

void BrokerClient::dispatch() {
  // Oldest first. send() may end requests and run their callbacks, which may queue more: the
  // scan starts over after each send rather than trusting an iterator across it.
  for (auto it = queue_.begin(); it != queue_.end();) {
    if (in_flight(it->vm)) {
      ++it;
      continue;
    }
    Lane* free = free_lane();
    if (!free) return;  // all lanes busy: the next answer dispatches again
    free->current = std::move(*it);
    queue_.erase(it);
    send(*free);
    it = queue_.begin();
  }
}

void BrokerClient::finish(Lane& lane, Result<BrokerReply> result) {
  Pending done = std::move(*lane.current);
  lane.current.reset();
  done.done(std::move(result));  // may call(), which dispatches
  dispatch();
}

void BrokerClient::fail_all(Lane& lane, const Error& error) {
  lane.socket.reset();
  auto queue = std::move(queue_);
  queue_.clear();
  if (lane.current) {
    Pending failed = std::move(*lane.current);
    lane.current.reset();
    failed.done(error);
  }
  for (auto& pending : queue) pending.done(error);
  dispatch();  // whatever the callbacks asked for meanwhile
}

Result<void> BrokerClient::connect(Lane& lane) {
  // Connecting is a local, immediate operation; a missing broker is reported right away.
  UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  path_.copy(sa.sun_path, sizeof sa.sun_path - 1);
  if (!fd || ::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0)
    return Error::from_errno("connect to the vmlaunch broker at " + quote_for_message(path_, kQuotePathMax) + " (is 'vmlaunch-helper serve' running?)");
  lane.socket = std::make_unique<asio::posix::stream_descriptor>(io_, fd.release());
  return {};
}

void BrokerClient::connection_lost(Lane& lane, bool request_unread, const std::string& what) {
  lane.socket.reset();
  Pending& current = *lane.current;
  // Cleanup and reattach are idempotent by contract (helper/cleanup.h, helper/reattach.h), and
  // inspect changes nothing: sending them twice is harmless.
  bool retry = !current.resent && (request_unread || current.op == BrokerOp::kCleanup || current.op == BrokerOp::kReattach ||
                                   current.op == BrokerOp::kInspect);
  if (retry) {
    current.resent = true;
    return send(lane);
  }
  std::string message = request_unread ? what
                                       : "the vmlaunch broker closed the connection before answering '" +
                                             std::string(op_name(current.op)) + "' (its outcome is unknown; " +
                                             "check the VM's state)";
  finish(lane, Error::make(ErrorCode::kSystem, message));
}

void BrokerClient::send(Lane& lane) {
  if (!lane.socket) {
    if (auto connected = connect(lane); !connected) return fail_all(lane, connected.error());
  }
  const std::string& msg = lane.current->message;
  if (::send(lane.socket->native_handle(), msg.data(), msg.size(), MSG_NOSIGNAL) < 0) {
    int err = errno;
    if (not_delivered(err))  // a connection the broker closed since the last reply
      return connection_lost(lane, true, "send to the vmlaunch broker: " + std::string(std::strerror(err)));
    return fail_all(lane, Error::from_errno(err, "send to the vmlaunch broker"));
  }
  await_reply(lane);
}

void BrokerClient::await_reply(Lane& lane) {
  lane.socket->async_wait(asio::posix::stream_descriptor::wait_read, [this, &lane](boost::system::error_code ec) {
    if (ec) return fail_all(lane, Error::make(ErrorCode::kSystem, "broker connection: " + ec.message()));
    std::vector<char> buf(kMaxBrokerReply);
    ssize_t n = ::recv(lane.socket->native_handle(), buf.data(), buf.size(), MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return await_reply(lane);
    if (n < 0 && errno == ECONNRESET)  // closed with our request unread in its queue
      return connection_lost(lane, true, "the vmlaunch broker reset the connection");
    if (n <= 0) return connection_lost(lane, false, "");
    auto reply = parse_broker_reply(std::string_view(buf.data(), static_cast<size_t>(n)));
    if (!reply) return finish(lane, reply.error());
    if (!reply->ok) return finish(lane, reply->error);
    finish(lane, std::move(reply).value());
  });
}

}  // namespace vl
