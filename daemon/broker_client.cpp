#include "daemon/broker_client.h"

#include <sys/socket.h>
#include <sys/un.h>

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
  }
  return "request";
}

}  // namespace

BrokerClient::BrokerClient(asio::io_context& io, std::string socket_path) : io_(io), path_(std::move(socket_path)) {}

void BrokerClient::call(const BrokerRequest& request, Callback done) {
  queue_.push_back({encode_broker_request(request), request.op, std::move(done)});
  if (!busy_) send_next();
}

void BrokerClient::fail_all(const Error& error) {
  auto queue = std::move(queue_);
  queue_.clear();
  socket_.reset();
  busy_ = false;
  for (auto& pending : queue) pending.done(error);
}

Result<void> BrokerClient::connect() {
  // Connecting is a local, immediate operation; a missing broker is reported right away.
  UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  path_.copy(sa.sun_path, sizeof sa.sun_path - 1);
  if (!fd || ::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0)
    return Error::from_errno("connect to the vmlaunch broker at " + quote_for_message(path_, kQuotePathMax) + " (is 'vmlaunch-helper serve' running?)");
  socket_ = std::make_unique<asio::posix::stream_descriptor>(io_, fd.release());
  return {};
}

void BrokerClient::connection_lost(bool request_unread, const std::string& what) {
  socket_.reset();
  Pending& front = queue_.front();
  // Cleanup and reattach are idempotent by contract (helper/cleanup.h, helper/reattach.h):
  // sending them twice is harmless.
  bool retry = !front.resent && (request_unread || front.op == BrokerOp::kCleanup || front.op == BrokerOp::kReattach);
  if (retry) {
    front.resent = true;
    return send_next();
  }
  Pending failed = std::move(front);
  queue_.pop_front();
  std::string message = request_unread ? what
                                       : "the vmlaunch broker closed the connection before answering '" +
                                             std::string(op_name(failed.op)) + "' (its outcome is unknown; " +
                                             "check the VM's state)";
  failed.done(Error::make(ErrorCode::kSystem, message));
  send_next();  // the requests behind it were never sent: they go out on a new connection
}

void BrokerClient::send_next() {
  if (queue_.empty()) {
    busy_ = false;
    return;
  }
  busy_ = true;
  if (!socket_) {
    if (auto connected = connect(); !connected) return fail_all(connected.error());
  }
  const std::string& msg = queue_.front().message;
  if (::send(socket_->native_handle(), msg.data(), msg.size(), MSG_NOSIGNAL) < 0) {
    int err = errno;
    if (not_delivered(err))  // a connection the broker closed since the last reply
      return connection_lost(true, "send to the vmlaunch broker: " + std::string(std::strerror(err)));
    return fail_all(Error::from_errno(err, "send to the vmlaunch broker"));
  }
  await_reply();
}

void BrokerClient::await_reply() {
  socket_->async_wait(asio::posix::stream_descriptor::wait_read, [this](boost::system::error_code ec) {
    if (ec) return fail_all(Error::make(ErrorCode::kSystem, "broker connection: " + ec.message()));
    char buf[kMaxBrokerMessage];
    ssize_t n = ::recv(socket_->native_handle(), buf, sizeof buf, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return await_reply();
    if (n < 0 && errno == ECONNRESET)  // closed with our request unread in its queue
      return connection_lost(true, "the vmlaunch broker reset the connection");
    if (n <= 0) return connection_lost(false, "");
    Pending answered = std::move(queue_.front());
    queue_.pop_front();
    auto reply = parse_broker_reply(std::string_view(buf, static_cast<size_t>(n)));
    if (!reply) answered.done(reply.error());
    else if (!reply->ok) answered.done(reply->error);
    else answered.done(reply->pid);
    send_next();
  });
}

}  // namespace vl
