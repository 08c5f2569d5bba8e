#include "daemon/console_hub.h"

#include <sys/socket.h>

#include <cerrno>
#include <vector>

namespace vl {

namespace asio = boost::asio;

// One client's view of the console: writes go through the hub, which knows whether this
// channel is the writer.
class ConsoleHub::ConsoleChannel final : public Channel {
 public:
  ConsoleChannel(std::weak_ptr<BusConnection> owner, std::shared_ptr<ConsoleHub> hub)
      : Channel(std::move(owner)), hub_(std::move(hub)) {}
  void write(std::vector<uint8_t> bytes, Done done) override {
    if (!hub_) return done(Error::make(ErrorCode::kConflict, "the console is closed"));
    hub_->write(this, std::move(bytes), std::move(done));
  }

 private:
  void on_close() override {
    if (auto hub = std::exchange(hub_, nullptr)) hub->detach(this);
  }
  std::shared_ptr<ConsoleHub> hub_;
};

std::map<std::string, std::weak_ptr<ConsoleHub>>& ConsoleHub::hubs() {
  static std::map<std::string, std::weak_ptr<ConsoleHub>> h;
  return h;
}

ConsoleHub::~ConsoleHub() {
  auto it = hubs().find(vm_);
  if (it != hubs().end() && it->second.expired()) hubs().erase(it);
}

Result<std::shared_ptr<Channel>> ConsoleHub::open(asio::io_context& io, const std::string& vm,
                                                  const std::string& socket_path, std::weak_ptr<BusConnection> owner,
                                                  bool writer, const std::string& who) {
  std::shared_ptr<ConsoleHub> hub = hubs()[vm].lock();
  if (hub && writer && hub->writer_channel_)
    return Error::make(ErrorCode::kConflict, "the console of VM '" + vm + "' is in use by " + hub->writer_who_ +
                                                 " (channel " + std::to_string(hub->writer_channel_->id()) +
                                                 "); attach with --read-only to watch it");
  if (!hub) {
    hub = std::make_shared<ConsoleHub>(io, vm);
    boost::system::error_code ec;
    // Non-blocking: a local socket's connect completes at once or fails with EAGAIN when the
    // listener's backlog is full. QEMU accepts only while nobody is connected and not at all
    // while its emulator is stopped, and connections this hub closed wait in that backlog
    // until it does: a blocking connect would hold the daemon's only event loop meanwhile.
    // Asio's own connect would wait for a non-blocking one to finish: the call is made here.
    asio::local::stream_protocol::endpoint endpoint(socket_path);
    hub->socket_.open(asio::local::stream_protocol(), ec);
    if (!ec) hub->socket_.non_blocking(true, ec);
    if (!ec && ::connect(hub->socket_.native_handle(), endpoint.data(), static_cast<socklen_t>(endpoint.size())) < 0)
      ec.assign(errno, boost::system::system_category());
    if (ec == boost::system::errc::no_such_file_or_directory || ec == boost::system::errc::connection_refused)
      return Error::make(ErrorCode::kNotFound, "VM '" + vm + "' has no serial console now (it is not running, "
                                                   "or its domain XML has no <serial>)");
    if (ec == boost::asio::error::would_block || ec == boost::asio::error::try_again)
      return Error::make(ErrorCode::kConflict, "the serial console of VM '" + vm + "' accepts no connection now "
                                                   "(its emulator is stopped or busy); try again later");
    if (ec) return Error::make(ErrorCode::kSystem, "connect to the console of VM '" + vm + "': " + ec.message());
    hubs()[vm] = hub;
  }
  auto channel = std::make_shared<ConsoleChannel>(std::move(owner), hub);
  VL_CHECK(ChannelTable::add(channel));
  hub->attach(channel.get());
  if (writer) {
    hub->writer_channel_ = channel.get();
    hub->writer_who_ = who;
  }
  return std::shared_ptr<Channel>(channel);
}

void ConsoleHub::attach(Channel* channel) {
  channels_.insert(channel);
  if (channels_.size() == 1) read_next();
}

void ConsoleHub::detach(Channel* channel) {
  channels_.erase(channel);
  if (writer_channel_ == channel) {
    writer_channel_ = nullptr;
    writer_who_.clear();
  }
  if (channels_.empty()) {
    // QEMU listens again once the daemon goes; the guest's output reaches only the log.
    boost::system::error_code ignored;
    socket_.close(ignored);
    writer_.fail_all("the console was closed");
    hubs().erase(vm_);
    return;
  }
  waiting_.erase(channel);
  resume_if_drained();
}

void ConsoleHub::write(Channel* from, std::vector<uint8_t> bytes, Channel::Done done) {
  if (from != writer_channel_)
    return done(Error::make(ErrorCode::kDenied, "this console channel is read-only"));
  writer_.write(std::move(bytes), std::move(done), kMaxPendingWrite);
}

void ConsoleHub::read_next() {
  if (reading_ || !socket_.is_open()) return;
  reading_ = true;
  socket_.async_read_some(asio::buffer(buf_), [self = shared_from_this()](boost::system::error_code ec, size_t n) {
    self->reading_ = false;
    if (self->channels_.empty()) return;  // detached meanwhile; the socket is closed
    if (ec) return self->end("the serial console of VM '" + self->vm_ + "' closed (the VM stopped)");
    // Copied: a send that fails closes its channel, which detaches it from the set.
    std::vector<Channel*> channels(self->channels_.begin(), self->channels_.end());
    for (Channel* ch : channels) {
      if (ch->send({self->buf_.data(), n})) continue;
      self->waiting_.insert(ch);
      ch->when_writable([weak = std::weak_ptr<ConsoleHub>(self), ch] {
        auto hub = weak.lock();
        if (!hub || !hub->waiting_.erase(ch)) return;
        hub->resume_if_drained();
      });
    }
    self->resume_if_drained();
  });
}

void ConsoleHub::resume_if_drained() {
  if (waiting_.empty() && !channels_.empty()) read_next();
}

void ConsoleHub::end(const std::string& reason) {
  auto self = shared_from_this();  // the last channel's close may release the hub
  std::vector<Channel*> channels(channels_.begin(), channels_.end());
  for (Channel* ch : channels) ch->close(reason);
}

}  // namespace vl
