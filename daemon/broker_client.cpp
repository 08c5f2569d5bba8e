#include "daemon/broker_client.h"

#include <sys/socket.h>
#include <sys/un.h>

#include "common/sys.h"

namespace vl {

namespace asio = boost::asio;

BrokerClient::BrokerClient(asio::io_context& io, std::string socket_path) : io_(io), path_(std::move(socket_path)) {}

void BrokerClient::call(const BrokerRequest& request, Callback done) {
  queue_.emplace_back(encode_broker_request(request), std::move(done));
  if (!busy_) send_next();
}

void BrokerClient::fail_all(const Error& error) {
  auto queue = std::move(queue_);
  queue_.clear();
  socket_.reset();
  busy_ = false;
  for (auto& [msg, done] : queue) done(error);
}

void BrokerClient::send_next() {
  if (queue_.empty()) {
    busy_ = false;
    return;
  }
  busy_ = true;
  if (!socket_) {
    // Connecting is a local, immediate operation; a missing broker is reported right away.
    UniqueFd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    path_.copy(sa.sun_path, sizeof sa.sun_path - 1);
    if (!fd || ::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0) {
      fail_all(Error::from_errno("connect to the vmlaunch broker at '" + path_ + "' (is 'vmlaunch-helper serve' running?)"));
      return;
    }
    socket_ = std::make_unique<asio::posix::stream_descriptor>(io_, fd.release());
  }
  const std::string& msg = queue_.front().first;
  if (::send(socket_->native_handle(), msg.data(), msg.size(), MSG_NOSIGNAL) < 0) {
    fail_all(Error::from_errno("send to the vmlaunch broker"));
    return;
  }
  socket_->async_wait(asio::posix::stream_descriptor::wait_read, [this](boost::system::error_code ec) {
    if (ec) return fail_all(Error::make(ErrorCode::kSystem, "broker connection: " + ec.message()));
    char buf[kMaxBrokerMessage];
    ssize_t n = ::recv(socket_->native_handle(), buf, sizeof buf, 0);
    if (n <= 0) return fail_all(Error::make(ErrorCode::kSystem, "the vmlaunch broker closed the connection"));
    auto [msg, done] = std::move(queue_.front());
    queue_.pop_front();
    auto reply = parse_broker_reply(std::string_view(buf, static_cast<size_t>(n)));
    if (!reply) done(reply.error());
    else if (!reply->ok) done(reply->error);
    else done(reply->pid);
    send_next();
  });
}

}  // namespace vl
