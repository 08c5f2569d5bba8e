#include "daemon/control_server.h"

#include <grp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <systemd/sd-bus.h>

#include <map>

#include "common/control_protocol.h"

namespace vl {

namespace asio = boost::asio;

namespace {

struct Peer {
  uid_t uid = static_cast<uid_t>(-1);
  std::vector<gid_t> groups;
};

// One client connection: an sd-bus server object on the accepted socket, pumped by Asio.
class BusConnection final : public std::enable_shared_from_this<BusConnection> {
 public:
  BusConnection(asio::io_context& io, int fd, Peer peer) : fd_(io, fd), timer_(io), peer_(std::move(peer)) {}
  ~BusConnection() {
    if (bus_) {
      registry().erase(bus_);
      sd_bus_flush_close_unref(bus_);
    }
    fd_.release();  // sd-bus owned and closed it
  }
  BusConnection(const BusConnection&) = delete;
  BusConnection& operator=(const BusConnection&) = delete;

  Result<void> start(const sd_bus_vtable* vtable, void* userdata);
  void pump();
  /// Pumps from the event loop, never from inside sd_bus_process (which must not recurse):
  /// for replies and signals queued by handlers.
  void schedule_pump() {
    asio::post(fd_.get_executor(), [self = shared_from_this()] { self->pump(); });
  }
  const Peer& peer() const { return peer_; }
  sd_bus* bus() const { return bus_; }

  static std::map<sd_bus*, std::weak_ptr<BusConnection>>& registry() {
    static std::map<sd_bus*, std::weak_ptr<BusConnection>> r;
    return r;
  }

 private:
  asio::posix::stream_descriptor fd_;
  asio::steady_timer timer_;
  Peer peer_;
  sd_bus* bus_ = nullptr;
  bool waiting_read_ = false, waiting_write_ = false;
};

Result<void> BusConnection::start(const sd_bus_vtable* vtable, void* userdata) {
  int fd = fd_.native_handle();
  sd_id128_t id;
  int r = sd_id128_randomize(&id);
  if (r >= 0) r = sd_bus_new(&bus_);
  if (r >= 0) r = sd_bus_set_fd(bus_, fd, fd);
  if (r >= 0) r = sd_bus_set_server(bus_, 1, id);
  if (r >= 0) r = sd_bus_set_anonymous(bus_, 1);
  if (r >= 0) r = sd_bus_add_object_vtable(bus_, nullptr, kControlPath, kControlInterface, vtable, userdata);
  if (r >= 0) r = sd_bus_start(bus_);
  if (r < 0) return Error::from_errno(-r, "set up control connection");
  registry()[bus_] = weak_from_this();
  return {};
}

void BusConnection::pump() {
  for (;;) {
    int r = sd_bus_process(bus_, nullptr);
    if (r < 0) {  // the client went away (or broke the protocol): drop the connection
      registry().erase(bus_);
      fd_.cancel();
      timer_.cancel();
      return;
    }
    if (r == 0) break;
  }
  int events = sd_bus_get_events(bus_);
  auto self = shared_from_this();
  if ((events & POLLIN) && !waiting_read_) {
    waiting_read_ = true;
    fd_.async_wait(asio::posix::stream_descriptor::wait_read, [self](boost::system::error_code ec) {
      self->waiting_read_ = false;
      if (!ec) self->pump();
    });
  }
  if ((events & POLLOUT) && !waiting_write_) {
    waiting_write_ = true;
    fd_.async_wait(asio::posix::stream_descriptor::wait_write, [self](boost::system::error_code ec) {
      self->waiting_write_ = false;
      if (!ec) self->pump();
    });
  }
  uint64_t usec = UINT64_MAX;
  if (sd_bus_get_timeout(bus_, &usec) >= 0 && usec != UINT64_MAX) {
    timer_.expires_at(std::chrono::steady_clock::time_point(std::chrono::microseconds(usec)));
    timer_.async_wait([self](boost::system::error_code ec) {
      if (!ec) self->pump();
    });
  }
}

std::shared_ptr<BusConnection> connection_of(sd_bus_message* m) {
  auto& reg = BusConnection::registry();
  auto it = reg.find(sd_bus_message_get_bus(m));
  return it == reg.end() ? nullptr : it->second.lock();
}

struct ServerState {
  Manager* manager;
  gid_t admin_gid;
  std::string admin_group;
};

int reply_error(sd_bus_message* m, const Error& e) {
  return sd_bus_reply_method_errorf(m, control_error_name(e.code).c_str(), "%s", e.message().c_str());
}

// Deferred replies: the method returns at once, the reply goes out when the operation ends.
Supervisor::Done reply_later(sd_bus_message* m) {
  sd_bus_message_ref(m);
  return [m](Result<void> r) {
    if (r) sd_bus_reply_method_return(m, "");
    else reply_error(m, r.error());
    if (auto conn = connection_of(m)) conn->schedule_pump();
    sd_bus_message_unref(m);
  };
}

Result<void> authorize(sd_bus_message* m, const ServerState& s, bool root_only) {
  auto conn = connection_of(m);
  if (!conn) return Error::make(ErrorCode::kInternal, "unknown connection");
  const Peer& peer = conn->peer();
  if (peer.uid == 0) return {};
  if (root_only) return Error::make(ErrorCode::kDenied, "permission denied: only root may ask for launch plans");
  if (std::find(peer.groups.begin(), peer.groups.end(), s.admin_gid) != peer.groups.end()) return {};
  return Error::make(ErrorCode::kDenied, "permission denied: uid " + std::to_string(peer.uid) +
                                              " is neither root nor in group '" + s.admin_group + "'");
}

#define AUTHORIZE(m, s, root_only)                             \
  do {                                                         \
    if (auto ok = authorize((m), *(s), (root_only)); !ok)      \
      return reply_error((m), ok.error());                     \
  } while (0)

int append_info(sd_bus_message* reply, const VmInfo& i) {
  return sd_bus_message_append(reply, "(sssuusibi)", i.name.c_str(), vm_status_name(i.status), i.reason.c_str(),
                               static_cast<uint32_t>(i.pid), static_cast<uint32_t>(i.uid), i.zone.c_str(),
                               i.vnc_display, static_cast<int>(i.autostart), i.start_order);
}

int method_list(sd_bus_message* m, void* userdata, sd_bus_error*) {
  auto* s = static_cast<ServerState*>(userdata);
  AUTHORIZE(m, s, false);
  sd_bus_message* reply = nullptr;
  int r = sd_bus_message_new_method_return(m, &reply);
  if (r >= 0) r = sd_bus_message_open_container(reply, 'a', "(sssuusibi)");
  for (const VmInfo& info : s->manager->list())
    if (r >= 0) r = append_info(reply, info);
  if (r >= 0) r = sd_bus_message_close_container(reply);
  if (r >= 0) r = sd_bus_send(nullptr, reply, nullptr);
  sd_bus_message_unref(reply);
  return r;
}

int method_status(sd_bus_message* m, void* userdata, sd_bus_error*) {
  auto* s = static_cast<ServerState*>(userdata);
  AUTHORIZE(m, s, false);
  const char* name = nullptr;
  if (int r = sd_bus_message_read(m, "s", &name); r < 0) return r;
  auto info = s->manager->status(name);
  if (!info) return reply_error(m, info.error());
  std::string taps;
  for (const auto& t : info->taps) taps += (taps.empty() ? "" : ",") + t;
  sd_bus_message* reply = nullptr;
  int r = sd_bus_message_new_method_return(m, &reply);
  if (r >= 0) r = sd_bus_message_open_container(reply, 'a', "{ss}");
  const std::pair<const char*, std::string> fields[] = {
      {"name", info->name}, {"state", vm_status_name(info->status)}, {"reason", info->reason},
      {"pid", std::to_string(info->pid)}, {"uid", std::to_string(info->uid)}, {"zone", info->zone},
      {"taps", taps}, {"vnc_display", info->vnc_display >= 0 ? std::to_string(info->vnc_display) : ""},
      {"vnc_listen", info->vnc_listen}};
  for (const auto& [k, v] : fields)
    if (r >= 0) r = sd_bus_message_append(reply, "{ss}", k, v.c_str());
  if (r >= 0) r = sd_bus_message_close_container(reply);
  if (r >= 0) r = sd_bus_send(nullptr, reply, nullptr);
  sd_bus_message_unref(reply);
  return r;
}

int method_start(sd_bus_message* m, void* userdata, sd_bus_error*) {
  auto* s = static_cast<ServerState*>(userdata);
  AUTHORIZE(m, s, false);
  const char* name = nullptr;
  if (int r = sd_bus_message_read(m, "s", &name); r < 0) return r;
  s->manager->start(name, reply_later(m));
  return 1;
}

int method_stop(sd_bus_message* m, void* userdata, sd_bus_error*) {
  auto* s = static_cast<ServerState*>(userdata);
  AUTHORIZE(m, s, false);
  const char* name = nullptr;
  uint32_t timeout = 0;
  int force = 0;
  if (int r = sd_bus_message_read(m, "sub", &name, &timeout, &force); r < 0) return r;
  s->manager->stop(name, std::chrono::seconds(timeout), force != 0, reply_later(m));
  return 1;
}

int method_restart(sd_bus_message* m, void* userdata, sd_bus_error*) {
  auto* s = static_cast<ServerState*>(userdata);
  AUTHORIZE(m, s, false);
  const char* name = nullptr;
  uint32_t timeout = 0;
  if (int r = sd_bus_message_read(m, "su", &name, &timeout); r < 0) return r;
  s->manager->restart(name, std::chrono::seconds(timeout), reply_later(m));
  return 1;
}

int method_kill(sd_bus_message* m, void* userdata, sd_bus_error*) {
  auto* s = static_cast<ServerState*>(userdata);
  AUTHORIZE(m, s, false);
  const char* name = nullptr;
  int32_t signal = 0;
  if (int r = sd_bus_message_read(m, "si", &name, &signal); r < 0) return r;
  s->manager->kill(name, signal, reply_later(m));
  return 1;
}

int method_plan(sd_bus_message* m, void* userdata, sd_bus_error*) {
  auto* s = static_cast<ServerState*>(userdata);
  AUTHORIZE(m, s, true);
  const char* name = nullptr;
  if (int r = sd_bus_message_read(m, "s", &name); r < 0) return r;
  sd_bus_message_ref(m);
  s->manager->launch_plan(name, [m](Result<std::string> plan) {
    if (plan) sd_bus_reply_method_return(m, "s", plan->c_str());
    else reply_error(m, plan.error());
    if (auto conn = connection_of(m)) conn->schedule_pump();
    sd_bus_message_unref(m);
  });
  return 1;
}

// Every method is "unprivileged" for sd-bus: the checks above replace its capability test,
// which knows nothing of the admin group.
const sd_bus_vtable kVtable[] = {
    SD_BUS_VTABLE_START(0),
    SD_BUS_METHOD_WITH_ARGS("List", SD_BUS_NO_ARGS, SD_BUS_RESULT("a(sssuusibi)", vms), method_list,
                            SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_ARGS("Status", SD_BUS_ARGS("s", name), SD_BUS_RESULT("a{ss}", fields), method_status,
                            SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_ARGS("Start", SD_BUS_ARGS("s", name), SD_BUS_NO_RESULT, method_start,
                            SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_ARGS("Stop", SD_BUS_ARGS("s", name, "u", timeout, "b", force), SD_BUS_NO_RESULT,
                            method_stop, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_ARGS("Restart", SD_BUS_ARGS("s", name, "u", timeout), SD_BUS_NO_RESULT, method_restart,
                            SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_ARGS("Kill", SD_BUS_ARGS("s", name, "i", signal), SD_BUS_NO_RESULT, method_kill,
                            SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_ARGS("GetLaunchPlan", SD_BUS_ARGS("s", name), SD_BUS_RESULT("s", plan), method_plan,
                            SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_SIGNAL_WITH_ARGS("StateChanged", SD_BUS_ARGS("s", name, "s", state, "s", reason), 0),
    SD_BUS_VTABLE_END};

Peer peer_of(int fd) {
  Peer peer;
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
    peer.uid = cred.uid;
    peer.groups.push_back(cred.gid);
  }
  gid_t groups[256];
  len = sizeof groups;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) == 0)
    peer.groups.insert(peer.groups.end(), groups, groups + len / sizeof(gid_t));
  return peer;
}

std::unique_ptr<ServerState> g_state;

}  // namespace

ControlServer::ControlServer(asio::io_context& io, const HostConfig& config, Manager& manager)
    : io_(io), config_(config), manager_(manager) {
  if (const group* g = ::getgrnam(config.admin_group.c_str())) admin_gid_ = g->gr_gid;
  g_state = std::make_unique<ServerState>(ServerState{&manager_, admin_gid_, config.admin_group});
  manager_.on_state_changed = [](const VmInfo& info) {
    std::vector<std::shared_ptr<BusConnection>> live;
    for (auto& [bus, weak] : BusConnection::registry())
      if (auto conn = weak.lock()) live.push_back(std::move(conn));
    for (const auto& conn : live) {
      sd_bus_emit_signal(conn->bus(), kControlPath, kControlInterface, "StateChanged", "sss", info.name.c_str(),
                         vm_status_name(info.status), info.reason.c_str());
      conn->schedule_pump();
    }
  };
}

ControlServer::~ControlServer() { close(); }

Result<void> ControlServer::listen() {
  std::string path = config_.control_socket();
  ::unlink(path.c_str());
  boost::system::error_code ec;
  acceptor_ = std::make_unique<asio::local::stream_protocol::acceptor>(io_);
  acceptor_->open(asio::local::stream_protocol(), ec);
  if (!ec) acceptor_->bind(asio::local::stream_protocol::endpoint(path), ec);
  if (!ec) acceptor_->listen(64, ec);
  if (ec) return Error::make(ErrorCode::kSystem, "listen on control socket '" + path + "': " + ec.message());
  ::chmod(path.c_str(), 0666);
  accept_next();
  return {};
}

void ControlServer::close() {
  if (!acceptor_) return;
  boost::system::error_code ignored;
  acceptor_->close(ignored);
  acceptor_.reset();
}

void ControlServer::accept_next() {
  acceptor_->async_accept([this](boost::system::error_code ec, asio::local::stream_protocol::socket socket) {
    if (ec == asio::error::operation_aborted) return;
    if (!ec) {
      int fd = socket.release();
      auto conn = std::make_shared<BusConnection>(io_, fd, peer_of(fd));
      if (conn->start(kVtable, g_state.get())) conn->pump();
    }
    if (acceptor_) accept_next();
  });
}

}  // namespace vl
