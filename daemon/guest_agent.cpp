#include "daemon/guest_agent.h"

#include <nlohmann/json.hpp>

#include <memory>
#include <random>

namespace vl {

namespace {

using boost::asio::local::stream_protocol;
using Json = nlohmann::json;

// One exchange; owns its socket and timer, and answers `done` exactly once.
class ShutdownRequest final : public std::enable_shared_from_this<ShutdownRequest> {
 public:
  ShutdownRequest(boost::asio::io_context& io, std::string path, std::chrono::milliseconds timeout,
                  std::function<void(Result<void>)> done)
      : socket_(io), timer_(io), buffer_(kMaxGuestAgentLine), path_(std::move(path)), timeout_(timeout),
        done_(std::move(done)) {
    std::random_device random;
    sync_id_ = std::uniform_int_distribution<int64_t>(1, (int64_t{1} << 52))(random);
  }

  void start() {
    timer_.expires_after(timeout_);
    timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
      if (ec) return;
      self->finish(Error::make(ErrorCode::kSystem, "the guest agent did not answer within " +
                                                        std::to_string(self->timeout_.count() / 1000) +
                                                        " s (is qemu-guest-agent running in the guest?)"));
    });
    socket_.async_connect(stream_protocol::endpoint(path_), [self = shared_from_this()](boost::system::error_code ec) {
      if (ec == boost::system::errc::no_such_file_or_directory)
        return self->finish(Error::unsupported("the domain has no guest agent channel (<channel type='unix'> with <target "
                                               "type='virtio' name='org.qemu.guest_agent.0'/>)"));
      if (ec) return self->finish(Error::make(ErrorCode::kSystem, "connect to the guest agent socket: " + ec.message()));
      Json sync = {{"execute", "guest-sync"}, {"arguments", {{"id", self->sync_id_}}}};
      self->write("\xff" + sync.dump() + "\n", [self] { self->read_reply(); });
    });
  }

 private:
  void write(std::string text, std::function<void()> next) {
    auto data = std::make_shared<std::string>(std::move(text));
    boost::asio::async_write(socket_, boost::asio::buffer(*data),
                             [self = shared_from_this(), data, next = std::move(next)](boost::system::error_code ec, size_t) {
                               if (ec) return self->finish(Error::make(ErrorCode::kSystem, "write to the guest agent: " + ec.message()));
                               next();
                             });
  }

  void read_reply() {
    boost::asio::async_read_until(socket_, buffer_, '\n', [self = shared_from_this()](boost::system::error_code ec, size_t n) {
      if (ec == boost::asio::error::not_found)
        return self->finish(Error::invalid("the guest agent sent a line longer than " +
                                           std::to_string(kMaxGuestAgentLine) + " bytes"));
      if (ec) return self->finish(Error::make(ErrorCode::kSystem, "read from the guest agent: " + ec.message()));
      std::string line(boost::asio::buffers_begin(self->buffer_.data()), boost::asio::buffers_begin(self->buffer_.data()) + n);
      self->buffer_.consume(n);
      // The agent may echo the flush byte; a reply to an earlier client's sync is skipped.
      size_t start = line.find_first_not_of('\xff');
      Json reply = Json::parse(start == std::string::npos ? "" : line.substr(start), nullptr, false);
      if (reply.is_object() && reply.contains("return") && reply["return"] == self->sync_id_) {
        Json shutdown = {{"execute", "guest-shutdown"}, {"arguments", {{"mode", "powerdown"}}}};
        return self->write(shutdown.dump() + "\n", [self] { self->finish({}); });
      }
      self->read_reply();
    });
  }

  void finish(Result<void> result) {
    if (!done_) return;
    auto done = std::move(done_);
    done_ = nullptr;
    timer_.cancel();
    boost::system::error_code ignored;
    socket_.close(ignored);
    done(std::move(result));
  }

  stream_protocol::socket socket_;
  boost::asio::steady_timer timer_;
  boost::asio::streambuf buffer_;
  std::string path_;
  std::chrono::milliseconds timeout_;
  std::function<void(Result<void>)> done_;
  int64_t sync_id_ = 0;
};

}  // namespace

void request_guest_shutdown(boost::asio::io_context& io, const std::string& path, std::chrono::milliseconds timeout,
                            std::function<void(Result<void>)> done) {
  std::make_shared<ShutdownRequest>(io, path, timeout, std::move(done))->start();
}

}  // namespace vl
