// Channels: byte streams between one control connection and a VM (its serial console or its
// VNC server), carried as D-Bus messages so that they pass wherever the control protocol does
// (the local socket, or a transport that relays its bytes). No descriptor is passed.
//
// Bytes to the client go out as the signal ChannelData(u channel, ay data), emitted on the
// owning connection only; ChannelClosed(u channel, s reason) ends a channel. Bytes from the
// client arrive with ChannelWrite (control_protocol.h).
//
// Flow control: a channel sends what its source gave it, then, if the owning connection has
// more than kChannelHighWater messages queued that the client has not read, its source stops
// reading until the queue is down to kChannelLowWater (BusConnection::when_drained). Messages
// queue in the daemon only once the kernel's send buffer of the client's socket is full (sd-bus
// asks for 8 MiB). So a slow client costs the daemon at most about kChannelHighWater chunks of
// kChannelChunk bytes per connection beyond that buffer, and the VM's side waits (QEMU stops draining the guest's UART, or its
// VNC server its updates) rather than the daemon buffering.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/error.h"

namespace vl {

class BusConnection;

inline constexpr size_t kChannelChunk = 16 * 1024;      ///< bytes per ChannelData signal, at most
inline constexpr uint64_t kChannelHighWater = 64;       ///< queued messages that pause a source
inline constexpr uint64_t kChannelLowWater = 16;        ///< ... and that resume it
inline constexpr size_t kMaxChannelsPerConnection = 16;
inline constexpr size_t kMaxPendingWrite = 256 * 1024;  ///< client bytes not yet written to the VM

class Channel : public std::enable_shared_from_this<Channel> {
 public:
  using Done = std::function<void(Result<void>)>;

  virtual ~Channel() = default;
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;

  uint32_t id() const { return id_; }
  /// The connection that opened it, if it is still there.
  std::shared_ptr<BusConnection> owner() const { return owner_.lock(); }
  bool closed() const { return closed_; }

  /// Sends `bytes` (at most kChannelChunk) to the owner. False if the owner's queue is now
  /// above the high-water mark: the source must wait for when_writable().
  bool send(std::span<const uint8_t> bytes);
  /// Calls `ready` once the owner's queue is down to the low-water mark (never if it leaves).
  void when_writable(std::function<void()> ready);
  /// Ends the channel: ChannelClosed(reason) to the owner if it is still there, removed from
  /// the table, its endpoint told (on_close). Idempotent.
  void close(const std::string& reason);

  /// Bytes from the client for the VM; `done` once written, or with why not.
  virtual void write(std::vector<uint8_t> bytes, Done done) = 0;

 protected:
  explicit Channel(std::weak_ptr<BusConnection> owner) : owner_(std::move(owner)) {}
  /// The channel ended (closed by either side, or its owner left): release the VM's side.
  virtual void on_close() = 0;

 private:
  friend class ChannelTable;
  std::weak_ptr<BusConnection> owner_;
  uint32_t id_ = 0;
  bool closed_ = false;
};

/// Every open channel, by id. Ids are never reused while the daemon runs; a connection may
/// use only the channels it opened.
class ChannelTable final {
 public:
  /// Registers `channel` for its owner; kConflict past kMaxChannelsPerConnection. Closes the
  /// channel when its owner leaves.
  static Result<uint32_t> add(std::shared_ptr<Channel> channel);
  /// The channel `id` if `conn` owns it; kNotFound otherwise (another's is not told apart
  /// from a missing one).
  static Result<std::shared_ptr<Channel>> find(uint32_t id, const BusConnection* conn);
  static void remove(uint32_t id);
  static size_t size();
  /// Closes every channel (the daemon is stopping): their sockets must go before the event
  /// loop does.
  static void close_all(const std::string& reason);

 private:
  static std::map<uint32_t, std::shared_ptr<Channel>>& table();
};

}  // namespace vl
