// Watching the zone bridges: a deleted bridge is noticed, reported, and its VMs' taps put back
// when a bridge of that name returns.
//
// When a zone bridge is deleted the kernel removes all its ports. The VMs keep running (their
// emulators hold the taps), but their taps are ports of nothing, and a bridge created again
// under the same name gets none of them back. The daemon subscribes to the kernel's link
// events (rtnetlink group RTNLGRP_LINK, which needs no privilege) and, after each burst of
// events, compares every running VM's taps with its zone's bridge:
//
//   bridge missing or not a bridge  -> condition "detached: ...", nothing else to do
//   bridge present, a tap not on it -> condition "detached: ...", ask the broker to
//                                      `reattach NAME` (helper/reattach.h decides and acts)
//   every tap a port of the bridge  -> attached
//
// The VM's state stays `running` throughout: the guest runs; only its network is cut off.
// Events are triggers only: each check reads the whole link table afresh (one RTM_GETLINK
// dump), so a burst of events costs one check, and a lost event (the socket's buffer
// overflowed, ENOBUFS) costs nothing but the next check. The check also runs at daemon start,
// for a bridge lost or a tap detached while the daemon was down. One re-attach per VM is in
// flight at a time; after a failed one the VM waits kRetryDelay before the next try.
#pragma once

#include "daemon/asio.h"
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "common/config.h"
#include "common/error.h"
#include "common/vm_name.h"
#include "daemon/broker_client.h"

namespace vl {

/// One link as an RTM_NEWLINK / RTM_DELLINK message describes it.
struct LinkEvent {
  bool removed = false;  ///< RTM_DELLINK
  int ifindex = 0;
  std::string name;
  std::string kind;  ///< IFLA_INFO_KIND ("bridge", "tun", ...), empty if none
  int master = 0;    ///< IFLA_MASTER, 0 if none
};

/// Parses one datagram read from a NETLINK_ROUTE socket. Link messages become events; other
/// message types (NLMSG_DONE, NLMSG_NOOP, address or route messages) are skipped; a message
/// that claims more bytes than the datagram holds, or a link message without a name, is an
/// error. `done` (if given) is set when the datagram ends a dump (NLMSG_DONE).
Result<std::vector<LinkEvent>> parse_link_messages(std::span<const uint8_t> datagram, bool* done = nullptr);

/// The links that exist, by name.
using LinkTable = std::map<std::string, LinkEvent>;

/// How a running VM's taps stand against its zone bridge.
struct NetworkCheck {
  bool attached = false;
  bool reattach = false;   ///< the bridge is there and some tap is not its port
  std::string condition;   ///< "attached to bridge 'br-dmz'" or what is wrong
};
NetworkCheck check_network(const std::string& bridge, const std::vector<std::string>& taps, const LinkTable& links);

class LinkWatch final {
 public:
  /// A running VM as the watcher needs it.
  struct Vm {
    std::string name;
    std::string zone;
    std::vector<std::string> taps;
  };
  static constexpr auto kSettleDelay = std::chrono::milliseconds(200);
  static constexpr auto kRetryDelay = std::chrono::seconds(10);

  /// `running` lists the VMs that are running now; it is called on every check.
  LinkWatch(boost::asio::io_context& io, const HostConfig& config, BrokerClient& broker,
            std::function<std::vector<Vm>()> running);
  LinkWatch(const LinkWatch&) = delete;
  LinkWatch& operator=(const LinkWatch&) = delete;

  /// Subscribes to link events and schedules the first check.
  Result<void> start();
  /// Something changed on the daemon's side (a VM started or stopped): check soon.
  void poke();
  /// What the last check found for this VM: "attached to bridge ...", "detached: ...", or ""
  /// if it has not been checked (not running, or no check since it started).
  std::string network(const std::string& vm) const;

 private:
  void read_events();
  void schedule(std::chrono::steady_clock::duration delay);
  void check_all();
  void reattach(const std::string& vm);

  boost::asio::io_context& io_;
  const HostConfig& config_;
  BrokerClient& broker_;
  std::function<std::vector<Vm>()> running_;
  std::unique_ptr<boost::asio::posix::stream_descriptor> socket_;
  boost::asio::steady_timer timer_;
  bool scheduled_ = false;
  std::map<std::string, std::string> network_;  ///< VM -> condition of the last check
  std::set<std::string> in_flight_;             ///< VMs with a reattach request outstanding
  std::map<std::string, std::pair<std::chrono::steady_clock::time_point, std::string>> failed_;  ///< VM -> when, why
};

/// Reads the whole link table (one RTM_GETLINK dump on a fresh socket).
Result<LinkTable> dump_links();

}  // namespace vl
