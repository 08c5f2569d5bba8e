#include "daemon/vnc_channel.h"

#include <array>

#include "daemon/stream_writer.h"

namespace vl {

namespace asio = boost::asio;

namespace {

class VncChannel final : public Channel {
 public:
  VncChannel(asio::io_context& io, std::weak_ptr<BusConnection> owner, std::string vm)
      : Channel(std::move(owner)), socket_(io), writer_(socket_), deadline_(io), vm_(std::move(vm)) {}

  // The channel is in the table already (its owner's cap counts it); one that does not connect
  // leaves it again without a ChannelClosed, its id never having been told.
  void connect(const asio::ip::tcp::endpoint& endpoint, ChannelOpened done) {
    auto self = std::static_pointer_cast<VncChannel>(shared_from_this());
    deadline_.expires_after(kVncConnectDeadline);
    deadline_.async_wait([weak = std::weak_ptr<VncChannel>(self)](boost::system::error_code ec) {
      auto ch = weak.lock();
      if (ec || !ch) return;
      ch->timed_out_ = true;
      boost::system::error_code ignored;
      ch->socket_.close(ignored);  // the connect ends with operation_aborted
    });
    socket_.async_connect(endpoint, [self, endpoint, done = std::move(done)](boost::system::error_code ec) {
      self->deadline_.cancel();
      if (!ec && self->closed()) ec = asio::error::operation_aborted;  // its owner left meanwhile
      if (ec) {
        std::string why = self->timed_out_ ? "no answer within " + std::to_string(kVncConnectDeadline.count()) +
                                                 " s (its emulator is stopped or busy)"
                          : self->closed() ? std::string("the client left")
                                           : ec.message();
        ChannelTable::remove(self->id());
        return done(Error::make(ErrorCode::kConflict, "connect to the VNC server of VM '" + self->vm_ + "' at " +
                                                          endpoint.address().to_string() + ":" +
                                                          std::to_string(endpoint.port()) + ": " + why));
      }
      self->read_next();
      done(std::shared_ptr<Channel>(self));
    });
  }

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
  asio::steady_timer deadline_;  ///< for the connect
  bool timed_out_ = false;
  std::string vm_;
  std::array<uint8_t, kChannelChunk> buf_{};
};

}  // namespace

void open_vnc_channel(asio::io_context& io, const std::string& vm, const std::string& address, uint16_t port,
                      std::weak_ptr<BusConnection> owner, ChannelOpened done) {
  boost::system::error_code ec;
  std::string host = address.empty() || address == "0.0.0.0" ? "127.0.0.1" : address == "::" ? "::1" : address;
  auto ip = asio::ip::make_address(host, ec);
  if (ec) return done(Error::make(ErrorCode::kUnsupported, "VM '" + vm + "' has VNC on '" + address + "', not an IP address"));
  auto channel = std::make_shared<VncChannel>(io, std::move(owner), vm);
  if (auto added = ChannelTable::add(channel); !added) return done(added.error());
  channel->connect({ip, port}, std::move(done));
}

}  // namespace vl
