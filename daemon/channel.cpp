#include "daemon/channel.h"

#include <systemd/sd-bus.h>

#include <algorithm>
#include <cstring>

#include "common/control_protocol.h"
#include "daemon/bus_connection.h"

namespace vl {

bool Channel::send(std::span<const uint8_t> bytes) {
  auto conn = owner();
  if (!conn || conn->closed() || closed_) return true;  // nobody to wait for
  sd_bus_message* m = nullptr;
  int r = sd_bus_message_new_signal(conn->bus(), &m, kControlPath, kControlInterface, "ChannelData");
  if (r >= 0) r = sd_bus_message_append(m, "u", id_);
  if (r >= 0) r = sd_bus_message_append_array(m, 'y', bytes.data(), bytes.size());
  if (r >= 0) r = sd_bus_send(conn->bus(), m, nullptr);
  sd_bus_message_unref(m);
  conn->schedule_pump();
  if (r < 0) {
    close(std::string("cannot send to the client: ") + std::strerror(-r));
    return true;
  }
  return conn->queued_out() <= kChannelHighWater;
}

void Channel::when_writable(std::function<void()> ready) {
  if (auto conn = owner()) conn->when_drained(kChannelLowWater, std::move(ready));
}

void Channel::close(const std::string& reason) {
  if (closed_) return;
  closed_ = true;
  auto self = shared_from_this();  // the table may hold the last reference
  if (auto conn = owner(); conn && !conn->closed()) {
    sd_bus_emit_signal(conn->bus(), kControlPath, kControlInterface, "ChannelClosed", "us", id_, reason.c_str());
    conn->schedule_pump();
  }
  ChannelTable::remove(id_);
  on_close();
}

std::map<uint32_t, std::shared_ptr<Channel>>& ChannelTable::table() {
  static std::map<uint32_t, std::shared_ptr<Channel>> t;
  return t;
}

Result<uint32_t> ChannelTable::add(std::shared_ptr<Channel> channel) {
  static uint32_t next_id = 0;
  auto conn = channel->owner();
  if (!conn || conn->closed()) return Error::make(ErrorCode::kConflict, "the connection is closing");
  size_t mine = std::count_if(table().begin(), table().end(),
                              [&](const auto& e) { return e.second->owner() == conn; });
  if (mine >= kMaxChannelsPerConnection)
    return Error::make(ErrorCode::kConflict, "this connection has " + std::to_string(mine) +
                                                 " channels open, the most one may have");
  if (++next_id == 0) ++next_id;  // 0 is never an id
  channel->id_ = next_id;
  table()[next_id] = channel;
  conn->on_close([weak = std::weak_ptr<Channel>(channel)] {
    if (auto ch = weak.lock()) ch->close("the client left");
  });
  return channel->id_;
}

Result<std::shared_ptr<Channel>> ChannelTable::find(uint32_t id, const BusConnection* conn) {
  auto it = table().find(id);
  if (it == table().end() || it->second->owner().get() != conn)
    return Error::make(ErrorCode::kNotFound, "no channel " + std::to_string(id) + " on this connection");
  return it->second;
}

void ChannelTable::remove(uint32_t id) { table().erase(id); }

size_t ChannelTable::size() { return table().size(); }

void ChannelTable::close_all(const std::string& reason) {
  while (!table().empty()) table().begin()->second->close(reason);
}

}  // namespace vl
