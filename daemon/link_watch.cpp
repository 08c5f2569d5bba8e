#include "daemon/link_watch.h"

#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <sys/socket.h>

#include <cstdio>
#include <cstring>

#include "common/sys.h"
#include "common/unique_fd.h"

namespace vl {

namespace asio = boost::asio;

namespace {

// A datagram of the link table dump or the event group; the kernel's link messages are a few
// KB at most, and a dump datagram is capped by the page size the kernel uses for it.
constexpr size_t kDatagramBytes = 64 * 1024;

// Reads a header out of the datagram by copy: the buffer has no alignment guarantee.
template <typename T>
T read_at(std::span<const uint8_t> data, size_t offset) {
  T value;
  std::memcpy(&value, data.data() + offset, sizeof value);
  return value;
}

std::string attr_string(std::span<const uint8_t> payload) {
  std::string s(reinterpret_cast<const char*>(payload.data()), payload.size());
  return s.substr(0, s.find('\0'));
}

// The attributes in [offset, end): calls `visit(type, payload)` for each.
template <typename Visit>
Result<void> for_each_attr(std::span<const uint8_t> data, size_t offset, size_t end, Visit visit) {
  while (offset + sizeof(rtattr) <= end) {
    auto attr = read_at<rtattr>(data, offset);
    if (attr.rta_len < sizeof(rtattr) || offset + attr.rta_len > end) return Error::invalid("netlink attribute overruns its message");
    visit(attr.rta_type & NLA_TYPE_MASK, data.subspan(offset + RTA_LENGTH(0), attr.rta_len - RTA_LENGTH(0)));
    offset += RTA_ALIGN(attr.rta_len);
  }
  return {};
}

Result<LinkEvent> parse_link(std::span<const uint8_t> data, size_t offset, size_t end, bool removed) {
  if (offset + NLMSG_ALIGN(sizeof(ifinfomsg)) > end) return Error::invalid("netlink link message too short");
  auto info = read_at<ifinfomsg>(data, offset);
  LinkEvent event{removed, info.ifi_index, "", "", 0};
  std::span<const uint8_t> linkinfo;
  auto link_attr = [&](int type, std::span<const uint8_t> p) {
    if (type == IFLA_IFNAME) event.name = attr_string(p);
    else if (type == IFLA_MASTER && p.size() >= 4) event.master = static_cast<int>(read_at<uint32_t>(p, 0));
    else if (type == IFLA_LINKINFO) linkinfo = p;
  };
  auto info_attr = [&](int type, std::span<const uint8_t> p) {
    if (type == IFLA_INFO_KIND) event.kind = attr_string(p);
  };
  VL_CHECK(for_each_attr(data, offset + NLMSG_ALIGN(sizeof(ifinfomsg)), end, link_attr));
  if (!linkinfo.empty()) VL_CHECK(for_each_attr(linkinfo, 0, linkinfo.size(), info_attr));
  if (event.name.empty()) return Error::invalid("netlink link message without a name");
  return event;
}

}  // namespace

Result<std::vector<LinkEvent>> parse_link_messages(std::span<const uint8_t> data, bool* done) {
  std::vector<LinkEvent> events;
  size_t offset = 0;
  while (offset + sizeof(nlmsghdr) <= data.size()) {
    auto header = read_at<nlmsghdr>(data, offset);
    if (header.nlmsg_len < sizeof(nlmsghdr) || header.nlmsg_len > data.size() - offset)
      return Error::invalid("netlink message overruns its datagram");
    size_t end = offset + header.nlmsg_len;
    if (header.nlmsg_type == NLMSG_DONE && done) *done = true;
    if (header.nlmsg_type == NLMSG_ERROR && header.nlmsg_len >= NLMSG_LENGTH(sizeof(nlmsgerr))) {
      auto err = read_at<nlmsgerr>(data, offset + NLMSG_HDRLEN);
      if (err.error != 0) return Error::from_errno(-err.error, "netlink request");
    }
    if (header.nlmsg_type == RTM_NEWLINK || header.nlmsg_type == RTM_DELLINK)
      events.push_back(VL_TRY(parse_link(data, offset + NLMSG_HDRLEN, end, header.nlmsg_type == RTM_DELLINK)));
    offset += NLMSG_ALIGN(header.nlmsg_len);
  }
  return events;
}

NetworkCheck check_network(const std::string& bridge, const std::vector<std::string>& taps, const LinkTable& links) {
  auto br = links.find(bridge);
  if (br == links.end()) return {false, false, "detached: bridge " + quote_for_message(bridge) + " is gone"};
  if (br->second.kind != "bridge") return {false, false, "detached: " + quote_for_message(bridge) + " is not a bridge"};
  for (const std::string& tap : taps) {
    auto t = links.find(tap);
    // A tap vanishes only with its emulator: the supervisor reports that, not this.
    if (t == links.end()) continue;
    if (t->second.master != br->second.ifindex)
      return {false, true, "detached: tap " + quote_for_message(tap) + " is not a port of bridge " + quote_for_message(bridge)};
  }
  return {true, false, "attached to bridge " + quote_for_message(bridge)};
}

Result<LinkTable> dump_links() {
  UniqueFd fd = VL_TRY(sys::check_fd(::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE), "netlink socket"));
  struct {
    nlmsghdr header;
    ifinfomsg body;
  } request{};
  request.header.nlmsg_len = sizeof request;
  request.header.nlmsg_type = RTM_GETLINK;
  request.header.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  request.header.nlmsg_seq = 1;
  request.body.ifi_family = AF_UNSPEC;
  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  VL_TRY(sys::check(static_cast<int>(::sendto(fd.get(), &request, sizeof request, 0, reinterpret_cast<sockaddr*>(&kernel), sizeof kernel)),
                    "send the link dump request"));
  LinkTable links;
  std::vector<uint8_t> buf(kDatagramBytes);
  // The kernel answers a dump at once, datagram after datagram, ending with NLMSG_DONE.
  for (bool done = false; !done;) {
    ssize_t n = sys::retry_eintr([&] { return ::recv(fd.get(), buf.data(), buf.size(), 0); });
    if (n < 0) return Error::from_errno("read the link dump");
    if (n == 0) return Error::make(ErrorCode::kSystem, "link dump ended early");
    for (LinkEvent& e : VL_TRY(parse_link_messages(std::span(buf.data(), static_cast<size_t>(n)), &done)))
      links[e.name] = std::move(e);
  }
  return links;
}

LinkWatch::LinkWatch(asio::io_context& io, const HostConfig& config, BrokerClient& broker,
                     std::function<std::vector<Vm>()> running)
    : io_(io), config_(config), broker_(broker), running_(std::move(running)), timer_(io) {}

Result<void> LinkWatch::start() {
  UniqueFd fd = VL_TRY(sys::check_fd(::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_ROUTE),
                                     "netlink socket"));
  sockaddr_nl local{};
  local.nl_family = AF_NETLINK;
  local.nl_groups = RTMGRP_LINK;
  VL_TRY(sys::check(::bind(fd.get(), reinterpret_cast<sockaddr*>(&local), sizeof local), "subscribe to link events"));
  socket_ = std::make_unique<asio::posix::stream_descriptor>(io_, fd.release());
  read_events();
  schedule(std::chrono::milliseconds(0));  // a bridge lost while the daemon was down
  return {};
}

void LinkWatch::read_events() {
  socket_->async_wait(asio::posix::stream_descriptor::wait_read, [this](boost::system::error_code ec) {
    if (ec) {
      std::fprintf(stderr, "vmlaunchd: link events: %s; zone bridges are no longer watched\n", ec.message().c_str());
      return;
    }
    std::vector<uint8_t> buf(kDatagramBytes);
    // Drain what is queued; which links changed does not matter, only that something did.
    for (;;) {
      ssize_t n = ::recv(socket_->native_handle(), buf.data(), buf.size(), MSG_DONTWAIT);
      if (n > 0) {
        if (!parse_link_messages(std::span(buf.data(), static_cast<size_t>(n))))
          std::fprintf(stderr, "vmlaunchd: malformed link event, ignoring\n");
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      break;  // EAGAIN: drained; ENOBUFS: events were lost, and the check below sees their result
    }
    schedule(kSettleDelay);
    read_events();
  });
}

void LinkWatch::poke() { schedule(kSettleDelay); }

void LinkWatch::schedule(std::chrono::steady_clock::duration delay) {
  if (scheduled_) return;  // one check after a burst, however long
  scheduled_ = true;
  timer_.expires_after(delay);
  timer_.async_wait([this](boost::system::error_code ec) {
    scheduled_ = false;
    if (!ec) check_all();
  });
}

std::string LinkWatch::network(const std::string& vm) const {
  auto it = network_.find(vm);
  return it == network_.end() ? "" : it->second;
}

void LinkWatch::check_all() {
  std::vector<Vm> vms = running_();
  network_.clear();
  if (vms.empty()) return;
  auto links = dump_links();
  if (!links) {
    std::fprintf(stderr, "vmlaunchd: %s; retrying\n", links.error().wrap("read the link table").message().c_str());
    return schedule(kRetryDelay);
  }
  auto now = std::chrono::steady_clock::now();
  for (const Vm& vm : vms) {
    const Zone* zone = config_.zone_named(vm.zone);
    if (!zone || vm.taps.empty()) continue;
    NetworkCheck check = check_network(zone->bridge, vm.taps, *links);
    std::string& network = network_[vm.name];
    network = check.condition;
    if (check.attached) failed_.erase(vm.name);
    if (!check.reattach) continue;
    if (in_flight_.count(vm.name)) {
      network += "; re-attaching";
      continue;
    }
    if (auto f = failed_.find(vm.name); f != failed_.end() && now - f->second.first < kRetryDelay) {
      network += "; re-attach failed: " + f->second.second;
      schedule(kRetryDelay - (now - f->second.first));
      continue;
    }
    network += "; re-attaching";
    reattach(vm.name);
  }
}

void LinkWatch::reattach(const std::string& vm) {
  auto name = VmName::parse(vm);
  if (!name) return;
  in_flight_.insert(vm);
  std::fprintf(stderr, "vmlaunchd: %s: %s; asking the broker to re-attach it\n", vm.c_str(), network_[vm].c_str());
  broker_.call({BrokerOp::kReattach, *name, 0}, [this, vm](Result<int> done) {
    in_flight_.erase(vm);
    if (done) {
      failed_.erase(vm);
      std::fprintf(stderr, "vmlaunchd: %s: taps re-attached\n", vm.c_str());
    } else {
      failed_[vm] = {std::chrono::steady_clock::now(), done.error().message()};
      std::fprintf(stderr, "vmlaunchd: %s: re-attach failed: %s\n", vm.c_str(), done.error().message().c_str());
    }
    schedule(kSettleDelay);
  });
}

}  // namespace vl
