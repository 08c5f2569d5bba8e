#include "daemon/vnc_channel.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <array>

#include "common/unique_fd.h"
#include "common/vm_name.h"
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
  // `socket` is an O_PATH fd of the checked socket, connected to through /proc/self/fd: the
  // name the check saw cannot be swapped for another between the check and the connect.
  void connect(UniqueFd socket, std::string path, ChannelOpened done) {
    auto self = std::static_pointer_cast<VncChannel>(shared_from_this());
    deadline_.expires_after(kVncConnectDeadline);
    deadline_.async_wait([weak = std::weak_ptr<VncChannel>(self)](boost::system::error_code ec) {
      auto ch = weak.lock();
      if (ec || !ch) return;
      ch->timed_out_ = true;
      boost::system::error_code ignored;
      ch->socket_.close(ignored);  // the connect ends with operation_aborted
    });
    path_fd_ = std::move(socket);
    asio::local::stream_protocol::endpoint endpoint("/proc/self/fd/" + std::to_string(path_fd_.get()));
    socket_.async_connect(endpoint, [self, path = std::move(path), done = std::move(done)](boost::system::error_code ec) {
      self->deadline_.cancel();
      self->path_fd_.reset();
      if (!ec && self->closed()) ec = asio::error::operation_aborted;  // its owner left meanwhile
      if (ec) {
        // A Unix listener whose backlog is full refuses at once (EAGAIN, or ENOBUFS as Linux
        // reports it here) where TCP would have kept retrying: the same cause either way.
        bool full = ec == asio::error::try_again || ec == asio::error::would_block || ec == asio::error::no_buffer_space;
        std::string why = self->timed_out_ ? "no answer within " + std::to_string(kVncConnectDeadline.count()) +
                                                 " s (its emulator is stopped or busy)"
                          : self->closed() ? std::string("the client left")
                          : full           ? std::string("it accepts no connection now (its emulator is stopped or busy)")
                                           : ec.message();
        ChannelTable::remove(self->id());
        return done(Error::make(ErrorCode::kConflict, "connect to the VNC server of VM '" + self->vm_ + "' at " +
                                                          quote_for_message(path, kQuotePathMax) + ": " + why));
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

  asio::local::stream_protocol::socket socket_;
  StreamWriter<asio::local::stream_protocol::socket> writer_;
  asio::steady_timer deadline_;  ///< for the connect
  UniqueFd path_fd_;             ///< the checked socket, until the connect ends
  bool timed_out_ = false;
  std::string vm_;
  std::array<uint8_t, kChannelChunk> buf_{};
};

}  // namespace

void open_vnc_channel(asio::io_context& io, const std::string& vm, const std::string& path, uid_t vm_uid,
                      std::weak_ptr<BusConnection> owner, ChannelOpened done) {
  // The directory is the emulator's own (its uid may put anything there): the socket must not
  // be a symlink, which would make the daemon connect, with its group, wherever the emulator
  // points it (another VM's monitor socket, say), and must be the emulator's.
  UniqueFd fd(::open(path.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
  if (!fd) return done(Error::from_errno("open the VNC socket of VM '" + vm + "' at " + quote_for_message(path, kQuotePathMax)));
  struct stat st {};
  if (::fstat(fd.get(), &st) < 0) return done(Error::from_errno("stat the VNC socket of VM '" + vm + "'"));
  if (!S_ISSOCK(st.st_mode) || st.st_uid != vm_uid)
    return done(Error::make(ErrorCode::kDenied, quote_for_message(path, kQuotePathMax) + " is not a socket of VM '" + vm +
                                                    "' (uid " + std::to_string(vm_uid) + ")"));
  auto channel = std::make_shared<VncChannel>(io, std::move(owner), vm);
  if (auto added = ChannelTable::add(channel); !added) return done(added.error());
  channel->connect(std::move(fd), path, std::move(done));
}

}  // namespace vl
