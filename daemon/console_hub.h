// A VM's serial console, shared by the channels attached to it (channel.h).
//
// QEMU serves the console socket (RUNTIME/vms/NAME/console.sock, helper/runtime_dir.h) to one
// client at a time, so the daemon is that client while anyone is attached, and fans the
// guest's output out to every attached channel. At most one channel writes; the others only
// read. The hub connects when the first channel attaches and disconnects when the last one
// leaves (QEMU then listens again); what the guest prints in between reaches only the serial
// log (helper/serial_log.h).
//
// Flow control: after each chunk the hub stops reading the socket while any attached client
// has more than kChannelHighWater messages unread, until all are down to kChannelLowWater.
// QEMU then stops draining the guest's UART: a slow reader slows the console, it does not
// grow the daemon.
#pragma once

#include "daemon/asio.h"
#include <array>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "common/error.h"
#include "daemon/channel.h"
#include "daemon/stream_writer.h"

namespace vl {

class ConsoleHub final : public std::enable_shared_from_this<ConsoleHub> {
 public:
  using Socket = boost::asio::local::stream_protocol::socket;

  /// Opens a console channel of `vm` for `owner`: connects to `socket_path` unless the hub is
  /// connected already. `writer`: the channel may write, if no other does (kConflict naming
  /// the holder otherwise); `who` names this client in such a message to others.
  static Result<std::shared_ptr<Channel>> open(boost::asio::io_context& io, const std::string& vm,
                                               const std::string& socket_path, std::weak_ptr<BusConnection> owner,
                                               bool writer, const std::string& who);

  explicit ConsoleHub(boost::asio::io_context& io, std::string vm) : socket_(io), writer_(socket_), vm_(std::move(vm)) {}
  ~ConsoleHub();
  ConsoleHub(const ConsoleHub&) = delete;
  ConsoleHub& operator=(const ConsoleHub&) = delete;

  /// The hubs that are connected, by VM name.
  static std::map<std::string, std::weak_ptr<ConsoleHub>>& hubs();

 private:
  class ConsoleChannel;

  void attach(Channel* channel);
  void detach(Channel* channel);
  void write(Channel* from, std::vector<uint8_t> bytes, Channel::Done done);
  void read_next();
  void resume_if_drained();
  void end(const std::string& reason);

  Socket socket_;
  StreamWriter<Socket> writer_;
  std::string vm_;
  std::set<Channel*> channels_;  ///< attached; each detaches itself when it closes
  std::set<Channel*> waiting_;   ///< attached clients whose queue is above the low-water mark
  Channel* writer_channel_ = nullptr;
  std::string writer_who_;
  bool reading_ = false;
  std::array<uint8_t, kChannelChunk> buf_{};
};

}  // namespace vl
