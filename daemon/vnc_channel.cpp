#include "daemon/vnc_channel.h"

#include <array>

#include "daemon/stream_writer.h"

namespace vl {

namespace asio = boost::asio;

namespace {

class VncChannel final : public Channel {
 public:
  VncChannel(asio::io_context& io, std::weak_ptr<BusConnection> owner, std::string vm)
      : Channel(std::move(owner)), socket_(io), writer_(socket_), vm_(std::move(vm)) {}

  asio::ip::tcp::socket& socket() { return socket_; }

  void write(std::vector<uint8_t> bytes, Done done) override {
    writer_.write(std::move(bytes), std::move(done), kMaxPendingWrite);
  }

  // One read at a time; after a chunk the client's queue decides whether the next read waits.
  void read_next() {
    socket_.async_read_some(asio::buffer(buf_), [self = std::static_pointer_cast<VncChannel>(shared_from_this())](
                                                    boost::system::error_code ec, size_t n) {
      if (self->closed()) return;
      if (ec) return self->close("the VNC server of VM '" + self->vm_ + "' closed the connection");
      if (self->send({self->buf_.data(), n})) return self->read_next();
      self->when_writable([weak = std::weak_ptr<VncChannel>(self)] {
        if (auto ch = weak.lock(); ch && !ch->closed()) ch->read_next();
      });
    });
  }

 private:
  void on_close() override {
    boost::system::error_code ignored;
    socket_.close(ignored);
    writer_.fail_all("the channel is closed");
  }

  asio::ip::tcp::socket socket_;
  StreamWriter<asio::ip::tcp::socket> writer_;
  std::string vm_;
  std::array<uint8_t, kChannelChunk> buf_{};
};

}  // namespace

Result<std::shared_ptr<Channel>> open_vnc_channel(asio::io_context& io, const std::string& vm, const std::string& address,
                                                  uint16_t port, std::weak_ptr<BusConnection> owner) {
  boost::system::error_code ec;
  std::string host = address.empty() || address == "0.0.0.0" ? "127.0.0.1" : address == "::" ? "::1" : address;
  auto ip = asio::ip::make_address(host, ec);
  if (ec) return Error::make(ErrorCode::kUnsupported, "VM '" + vm + "' has VNC on '" + address + "', not an IP address");
  auto channel = std::make_shared<VncChannel>(io, std::move(owner), vm);
  // An address of this host: connecting does not wait on the network.
  channel->socket().connect({ip, port}, ec);
  if (ec)
    return Error::make(ErrorCode::kSystem, "connect to the VNC server of VM '" + vm + "' at " + host + ":" +
                                               std::to_string(port) + ": " + ec.message());
  VL_CHECK(ChannelTable::add(channel));
  channel->read_next();
  return std::shared_ptr<Channel>(channel);
}

}  // namespace vl
