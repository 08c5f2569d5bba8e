#include "daemon/control_server.h"

#include <fcntl.h>

#include <grp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <systemd/sd-bus.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <map>
#include <utility>

#include "common/control_protocol.h"
#include "common/sys.h"
#include "common/vm_name.h"
#include "daemon/authorization.h"
#include "daemon/bus_connection.h"
#include "daemon/channel.h"
#include "daemon/console_hub.h"
#include "daemon/event_log.h"
#include "daemon/vnc_channel.h"

namespace vl {

namespace asio = boost::asio;

namespace {

constexpr auto kAcceptBackoff = std::chrono::milliseconds(100);
// Replies a client may leave unread and still be sent a serial log (method_read_serial_log).
constexpr uint64_t kMaxUnreadBeforeLog = 2;

// Peers that may call nothing still get one short session, so that vmctl can tell them which
// group to join; it is all such a session can buy. Its messages are capped at 4 KiB (a method
// call of this interface is a few hundred bytes), its whole input at 16 KiB, its life at 5 s;
// it receives no signals, and at most kMaxDeniedSessions exist at once, one per uid.
constexpr size_t kMaxDeniedSessions = 8;
constexpr BusLimits kDeniedLimits{4096, std::chrono::seconds(5), 16, 16 * 1024, std::chrono::seconds(5)};

struct ServerState {
  Manager* manager;
  asio::io_context* io;
  const HostConfig* config;
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
    if (auto conn = BusConnection::of(m)) conn->schedule_pump();
    sd_bus_message_unref(m);
  };
}

// A deferred reply of one string.
std::function<void(Result<std::string>)> reply_string_later(sd_bus_message* m) {
  sd_bus_message_ref(m);
  return [m](Result<std::string> text) {
    if (text) sd_bus_reply_method_return(m, "s", text->c_str());
    else reply_error(m, text.error());
    if (auto conn = BusConnection::of(m)) conn->schedule_pump();
    sd_bus_message_unref(m);
  };
}

// Every call passes here first, with the method's name from the message itself: what a role
// may call is one table (authorization.cpp), not a flag at each handler.
Result<void> authorize(sd_bus_message* m) {
  auto conn = BusConnection::of(m);
  if (!conn) return Error::make(ErrorCode::kInternal, "unknown connection");
  const Identity& who = conn->identity();
  const char* method = sd_bus_message_get_member(m);
  std::string_view name = method ? method : "";
  auto ok = permit(who, name);
  if (is_audited(who, name)) {
    // The VM, when the call names one: its first argument (the handler reads it again).
    std::string vm;
    const char* signature = sd_bus_message_get_signature(m, 1);
    const char* first = nullptr;
    if (signature && signature[0] == 's' && sd_bus_message_read(m, "s", &first) > 0) {
      vm = first;
      sd_bus_message_rewind(m, 1);
    }
    std::string how = who.transport + (who.from.empty() ? "" : " from " + who.from) + ", " + role_name(who.role);
    log_control_call(who.who, how, std::string(name), vm, ok.ok());
  }
  return ok;
}

#define AUTHORIZE(m)                                      \
  do {                                                    \
    if (auto ok = authorize(m); !ok)                      \
      return reply_error((m), ok.error());                \
  } while (0)

// A method return whose arguments `fill` appends.
int reply_with(sd_bus_message* m, const std::function<int(sd_bus_message*)>& fill) {
  sd_bus_message* reply = nullptr;
  int r = sd_bus_message_new_method_return(m, &reply);
  if (r >= 0) r = fill(reply);
  if (r >= 0) r = sd_bus_send(nullptr, reply, nullptr);
  sd_bus_message_unref(reply);
  return r;
}

int append_info(sd_bus_message* reply, const VmInfo& i) {
  return sd_bus_message_append(reply, "(sssuusibi)", i.name.c_str(), vm_status_name(i.status), i.reason.c_str(),
                               static_cast<uint32_t>(i.pid), static_cast<uint32_t>(i.uid), i.zone.c_str(),
                               i.vnc_display, static_cast<int>(i.autostart), i.start_order);
}

int method_list(sd_bus_message* m, void* userdata, sd_bus_error*) {
  auto* s = static_cast<ServerState*>(userdata);
  AUTHORIZE(m);
  return reply_with(m, [&](sd_bus_message* reply) {
    int r = sd_bus_message_open_container(reply, 'a', "(sssuusibi)");
    for (const VmInfo& info : s->manager->list())
      if (r >= 0) r = append_info(reply, info);
    return r >= 0 ? sd_bus_message_close_container(reply) : r;
  });
}

int method_status(sd_bus_message* m, void* userdata, sd_bus_error*) {
  auto* s = static_cast<ServerState*>(userdata);
  AUTHORIZE(m);
  const char* name = nullptr;
  if (int r = sd_bus_message_read(m, "s", &name); r < 0) return r;
  auto info = s->manager->status(name);
  if (!info) return reply_error(m, info.error());
  std::string taps;
  for (const auto& t : info->taps) taps += (taps.empty() ? "" : ",") + t;
  const std::pair<const char*, std::string> fields[] = {
      {"name", info->name}, {"state", vm_status_name(info->status)}, {"reason", info->reason},
      {"pid", std::to_string(info->pid)}, {"uid", std::to_string(info->uid)}, {"zone", info->zone},
      {"taps", taps}, {"vnc_display", info->vnc_display >= 0 ? std::to_string(info->vnc_display) : ""},
      {"vnc_listen", info->vnc_listen}, {"network", info->network}, {"plan", info->plan},
      {"conversions", std::to_string(info->conversions)}};
  return reply_with(m, [&](sd_bus_message* reply) {
    int r = sd_bus_message_open_container(reply, 'a', "{ss}");
    for (const auto& [k, v] : fields)
      if (r >= 0) r = sd_bus_message_append(reply, "{ss}", k, v.c_str());
    return r >= 0 ? sd_bus_message_close_container(reply) : r;
  });
}

int method_start(sd_bus_message* m, void* userdata, sd_bus_error*) {
  auto* s = static_cast<ServerState*>(userdata);
  AUTHORIZE(m);
  const char* name = nullptr;
  if (int r = sd_bus_message_read(m, "s", &name); r < 0) return r;
  s->manager->start(name, reply_later(m));
  return 1;
}

// Start with the passphrase of the VM's encrypted disks (`vmctl start --ask-passphrase`): the
// descriptor is kept, unread, until the launch takes it (method_take_passphrase).
int method_start_with_passphrase(sd_bus_message* m, void* userdata, sd_bus_error*) {
  auto* s = static_cast<ServerState*>(userdata);
  AUTHORIZE(m);
  const char* name = nullptr;
  int fd = -1;
  if (int r = sd_bus_message_read(m, "sh", &name, &fd); r < 0) return r;
  UniqueFd own(::fcntl(fd, F_DUPFD_CLOEXEC, 3));  // the message's copy goes with the message
  if (!own) return reply_error(m, Error::from_errno("keep the passphrase descriptor"));
  s->manager->start_with_passphrase(name, std::move(own), reply_later(m));
  return 1;
}

// From `vmlaunch-helper launch` (root only): the passphrase given with the start under way,
// passed on as the descriptor it came as.
int method_take_passphrase(sd_bus_message* m, void* userdata, sd_bus_error*) {
  auto* s = static_cast<ServerState*>(userdata);
  AUTHORIZE(m);
  const char* name = nullptr;
  if (int r = sd_bus_message_read(m, "s", &name); r < 0) return r;
  auto fd = s->manager->take_passphrase(name);
  if (!fd) return reply_error(m, fd.error());
  return sd_bus_reply_method_return(m, "h", fd->get());  // sd-bus sends its own dup; ours closes here
}

int method_stop(sd_bus_message* m, void* userdata, sd_bus_error*) {
  auto* s = static_cast<ServerState*>(userdata);
  AUTHORIZE(m);
  const char* name = nullptr;
  uint32_t timeout = 0;
  int force = 0;
  if (int r = sd_bus_message_read(m, "sub", &name, &timeout, &force); r < 0) return r;
  s->manager->stop(name, std::chrono::seconds(timeout), force != 0, reply_later(m));
  return 1;
}

// Stop with the way the guest is asked: "acpi" (the power button only) or "agent" (QEMU's
// guest agent only), like `virsh shutdown --mode`; Stop tries the agent, then the button.
int method_shutdown(sd_bus_message* m, void* userdata, sd_bus_error* error) {
  auto* s = static_cast<ServerState*>(userdata);
  AUTHORIZE(m);
  const char* name = nullptr;
  const char* mode = nullptr;
  uint32_t timeout = 0;
  if (int r = sd_bus_message_read(m, "sus", &name, &timeout, &mode); r < 0) return r;
  std::string_view how = mode;
  if (how != "acpi" && how != "agent")
    return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "stop mode %s is not 'acpi' or 'agent'",
                             vl::quote_for_message(how).c_str());
  s->manager->stop(name, std::chrono::seconds(timeout), false, reply_later(m),
                   how == "agent" ? StopMode::kAgent : StopMode::kAcpi);
  return 1;
}

int method_restart(sd_bus_message* m, void* userdata, sd_bus_error*) {
  auto* s = static_cast<ServerState*>(userdata);
  AUTHORIZE(m);
  const char* name = nullptr;
  uint32_t timeout = 0;
  if (int r = sd_bus_message_read(m, "su", &name, &timeout); r < 0) return r;
  s->manager->restart(name, std::chrono::seconds(timeout), reply_later(m));
  return 1;
}

int method_kill(sd_bus_message* m, void* userdata, sd_bus_error*) {
  auto* s = static_cast<ServerState*>(userdata);
  AUTHORIZE(m);
  const char* name = nullptr;
  int32_t signal = 0;
  if (int r = sd_bus_message_read(m, "si", &name, &signal); r < 0) return r;
  s->manager->kill(name, signal, reply_later(m));
  return 1;
}

int method_plan(sd_bus_message* m, void* userdata, sd_bus_error*) {
  auto* s = static_cast<ServerState*>(userdata);
  AUTHORIZE(m);
  const char* name = nullptr;
  if (int r = sd_bus_message_read(m, "s", &name); r < 0) return r;
  s->manager->launch_plan(name, reply_string_later(m));
  return 1;
}

// `vmctl audit`: the findings as JSON (daemon/audit.h); names empty for every defined VM.
int method_audit(sd_bus_message* m, void* userdata, sd_bus_error*) {
  auto* s = static_cast<ServerState*>(userdata);
  AUTHORIZE(m);
  char** raw = nullptr;
  if (int r = sd_bus_message_read_strv(m, &raw); r < 0) return r;
  std::vector<std::string> names;
  for (char** p = raw; p && *p; ++p) names.emplace_back(*p);
  for (char** p = raw; p && *p; ++p) ::free(*p);
  ::free(raw);
  s->manager->audit(names, reply_string_later(m));
  return 1;
}

// From `vmlaunch-helper supervise` in a kvm-vm@ unit's ExecStartPost (root only): the unit's
// emulator was exec'd; answered once the guest runs, or with why it does not (the unit then
// fails). The unit becomes active only with this answer (architecture.md, systemd mode).
int method_launched(sd_bus_message* m, void* userdata, sd_bus_error*) {
  auto* s = static_cast<ServerState*>(userdata);
  AUTHORIZE(m);
  const char* name = nullptr;
  if (int r = sd_bus_message_read(m, "s", &name); r < 0) return r;
  s->manager->launched(name, reply_later(m));
  return 1;
}

// From `vmlaunch-helper launch` in a kvm-vm@ unit (root only): the launch failed, with this
// error; the start waiting for the unit fails with it.
int method_launch_failed(sd_bus_message* m, void* userdata, sd_bus_error*) {
  auto* s = static_cast<ServerState*>(userdata);
  AUTHORIZE(m);
  const char* name = nullptr;
  const char* message = nullptr;
  if (int r = sd_bus_message_read(m, "ss", &name, &message); r < 0) return r;
  s->manager->launch_failed(name, message);
  return sd_bus_reply_method_return(m, "");
}

int reply_channel(sd_bus_message* m, Result<std::shared_ptr<Channel>> channel) {
  if (!channel) return reply_error(m, channel.error());
  return sd_bus_reply_method_return(m, "u", (*channel)->id());
}

// Consoles and VNC are for root and the admin group (AUTHORIZE): they reach into the guest.
int method_open_console(sd_bus_message* m, void* userdata, sd_bus_error*) {
  auto* s = static_cast<ServerState*>(userdata);
  AUTHORIZE(m);
  const char* name = nullptr;
  int write = 0;
  if (int r = sd_bus_message_read(m, "sb", &name, &write); r < 0) return r;
  auto vm = VmName::parse(name);
  if (!vm) return reply_error(m, vm.error());
  auto conn = BusConnection::of(m);
  return reply_channel(m, ConsoleHub::open(*s->io, vm->str(), s->config->vm_runtime_dir(*vm) + "/console.sock", conn,
                                           write != 0, conn->identity().who));
}

int method_open_vnc(sd_bus_message* m, void* userdata, sd_bus_error*) {
  auto* s = static_cast<ServerState*>(userdata);
  AUTHORIZE(m);
  const char* name = nullptr;
  if (int r = sd_bus_message_read(m, "s", &name); r < 0) return r;
  auto info = s->manager->status(name);
  if (!info) return reply_error(m, info.error());
  if (info->status != VmStatus::kRunning)
    return reply_error(m, Error::make(ErrorCode::kConflict, "VM '" + info->name + "' is " + vm_status_name(info->status)));
  if (info->vnc_display < 0)
    return reply_error(m, Error::make(ErrorCode::kNotFound, "VM '" + info->name + "' has no VNC display"));
  // Answered once connected: the connect may wait on a stopped emulator, the daemon does not.
  sd_bus_message_ref(m);
  auto vm = VmName::parse(info->name);
  if (!vm) return reply_error(m, vm.error());
  open_vnc_channel(*s->io, info->name, s->config->vnc_socket_path(*vm), info->uid, BusConnection::of(m), [m](Result<std::shared_ptr<Channel>> channel) {
                     reply_channel(m, std::move(channel));
                     if (auto conn = BusConnection::of(m)) conn->schedule_pump();
                     sd_bus_message_unref(m);
                   });
  return 1;
}

int method_channel_write(sd_bus_message* m, void*, sd_bus_error*) {
  AUTHORIZE(m);
  uint32_t id = 0;
  const void* data = nullptr;
  size_t size = 0;
  if (int r = sd_bus_message_read(m, "u", &id); r < 0) return r;
  if (int r = sd_bus_message_read_array(m, 'y', &data, &size); r < 0) return r;
  auto channel = ChannelTable::find(id, BusConnection::of(m).get());
  if (!channel) return reply_error(m, channel.error());
  const auto* bytes = static_cast<const uint8_t*>(data);
  (*channel)->write(std::vector<uint8_t>(bytes, bytes + size), reply_later(m));
  return 1;
}

int method_close_channel(sd_bus_message* m, void*, sd_bus_error*) {
  AUTHORIZE(m);
  uint32_t id = 0;
  if (int r = sd_bus_message_read(m, "u", &id); r < 0) return r;
  auto channel = ChannelTable::find(id, BusConnection::of(m).get());
  if (!channel) return reply_error(m, channel.error());
  (*channel)->close("closed by the client");
  return sd_bus_reply_method_return(m, "");
}

// Both parts of the serial log (helper/serial_log.h), the older first: at most twice
// kSerialLogPartBytes. The files are the daemon group's to read; the VM need not be running.
// The one reply that large: a connection's cap counts messages (BusLimits::max_queued_out), so
// while replies wait unread for this client, another log is refused instead of queued, or a
// client that sends calls and reads nothing would have the daemon hold gigabytes for it.
int method_read_serial_log(sd_bus_message* m, void* userdata, sd_bus_error*) {
  auto* s = static_cast<ServerState*>(userdata);
  AUTHORIZE(m);
  const char* name = nullptr;
  if (int r = sd_bus_message_read(m, "s", &name); r < 0) return r;
  auto vm = VmName::parse(name);
  if (!vm) return reply_error(m, vm.error());
  if (auto conn = BusConnection::of(m); conn && conn->queued_out() > kMaxUnreadBeforeLog)
    return reply_error(m, Error::make(ErrorCode::kConflict, std::to_string(conn->queued_out()) +
                                                                " replies wait unread on this connection; read them "
                                                                "before asking for another serial log"));
  std::string path = s->config->serial_log_path(*vm);
  auto previous = sys::read_file(path + ".1", kSerialLogPartBytes + 1);
  auto current = sys::read_file(path, kSerialLogPartBytes + 1);
  if (!current && !previous)
    return reply_error(m, Error::make(ErrorCode::kNotFound, "no serial log of VM '" + vm->str() + "' at '" + path +
                                                                "': " + current.error().message()));
  std::string text = (previous ? *previous : "") + (current ? *current : "");
  return reply_with(m, [&](sd_bus_message* reply) { return sd_bus_message_append_array(reply, 'y', text.data(), text.size()); });
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
    SD_BUS_METHOD_WITH_ARGS("StartWithPassphrase", SD_BUS_ARGS("s", name, "h", passphrase), SD_BUS_NO_RESULT,
                            method_start_with_passphrase, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_ARGS("TakePassphrase", SD_BUS_ARGS("s", name), SD_BUS_RESULT("h", passphrase),
                            method_take_passphrase, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_ARGS("Stop", SD_BUS_ARGS("s", name, "u", timeout, "b", force), SD_BUS_NO_RESULT,
                            method_stop, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_ARGS("Shutdown", SD_BUS_ARGS("s", name, "u", timeout, "s", mode), SD_BUS_NO_RESULT,
                            method_shutdown, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_ARGS("Restart", SD_BUS_ARGS("s", name, "u", timeout), SD_BUS_NO_RESULT, method_restart,
                            SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_ARGS("Kill", SD_BUS_ARGS("s", name, "i", signal), SD_BUS_NO_RESULT, method_kill,
                            SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_ARGS("GetLaunchPlan", SD_BUS_ARGS("s", name), SD_BUS_RESULT("s", plan), method_plan,
                            SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_ARGS("Audit", SD_BUS_ARGS("as", names), SD_BUS_RESULT("s", report), method_audit,
                            SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_ARGS("Launched", SD_BUS_ARGS("s", name), SD_BUS_NO_RESULT, method_launched,
                            SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_ARGS("LaunchFailed", SD_BUS_ARGS("s", name, "s", message), SD_BUS_NO_RESULT,
                            method_launch_failed, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_ARGS("OpenConsole", SD_BUS_ARGS("s", name, "b", write), SD_BUS_RESULT("u", channel),
                            method_open_console, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_ARGS("OpenVnc", SD_BUS_ARGS("s", name), SD_BUS_RESULT("u", channel), method_open_vnc,
                            SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_ARGS("ChannelWrite", SD_BUS_ARGS("u", channel, "ay", data), SD_BUS_NO_RESULT,
                            method_channel_write, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_ARGS("CloseChannel", SD_BUS_ARGS("u", channel), SD_BUS_NO_RESULT, method_close_channel,
                            SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_ARGS("ReadSerialLog", SD_BUS_ARGS("s", name), SD_BUS_RESULT("ay", log),
                            method_read_serial_log, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_SIGNAL_WITH_ARGS("StateChanged", SD_BUS_ARGS("s", name, "s", state, "s", reason), 0),
    SD_BUS_SIGNAL_WITH_ARGS("ChannelData", SD_BUS_ARGS("u", channel, "ay", data), 0),
    SD_BUS_SIGNAL_WITH_ARGS("ChannelClosed", SD_BUS_ARGS("u", channel, "s", reason), 0),
    SD_BUS_VTABLE_END};

std::unique_ptr<ServerState> g_state;

}  // namespace

ControlServer::ControlServer(asio::io_context& io, const HostConfig& config, Manager& manager)
    : io_(io), config_(config), manager_(manager), accept_backoff_(io) {
  roles_.admin_group = config.admin_group;
  roles_.readonly_group = config.readonly_group;
  if (const group* g = ::getgrnam(config.admin_group.c_str())) roles_.admin_gid = g->gr_gid;
  if (config.readonly_group.empty()) {
  } else if (const group* g = ::getgrnam(config.readonly_group.c_str())) {
    roles_.readonly_gid = g->gr_gid;
  } else {
    std::fprintf(stderr, "vmlaunchd: The read-only group '%s' (control.readonly_group) does not exist, ignoring\n",
                 config.readonly_group.c_str());
  }
  g_state = std::make_unique<ServerState>(ServerState{&manager_, &io_, &config_});
  // Signals go to those who may see the state (List, Status): every role but none.
  manager_.on_state_changed = [](const VmInfo& info) {
    std::vector<std::shared_ptr<BusConnection>> live;
    for (auto& [bus, weak] : BusConnection::registry())
      if (auto conn = weak.lock(); conn && conn->identity().role >= Role::kReadOnly) live.push_back(std::move(conn));
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
  ChannelTable::close_all("vmlaunchd is stopping");
  if (!acceptor_) return;
  boost::system::error_code ignored;
  acceptor_->close(ignored);
  acceptor_.reset();
  accept_backoff_.cancel();
}

namespace {

// Errors that say "no resources for a new connection now": the connection stays in the
// backlog, so the listener stays readable and an immediate retry fails the same way.
bool out_of_resources(const boost::system::error_code& ec) {
  return ec == asio::error::no_descriptors || ec == boost::system::errc::too_many_files_open_in_system ||
         ec == asio::error::no_buffer_space || ec == asio::error::no_memory;
}

}  // namespace

void ControlServer::accept_next() {
  acceptor_->async_accept([this](boost::system::error_code ec, asio::local::stream_protocol::socket socket) {
    if (ec == asio::error::operation_aborted) return;
    if (out_of_resources(ec)) {
      if (!std::exchange(accept_starved_, true))
        std::fprintf(stderr, "vmlaunchd: Failed to accept a control connection: %s; retrying every %lld ms\n",
                     ec.message().c_str(), static_cast<long long>(kAcceptBackoff.count()));
      accept_backoff_.expires_after(kAcceptBackoff);
      accept_backoff_.async_wait([this](boost::system::error_code wait_ec) {
        if (!wait_ec && acceptor_) accept_next();
      });
      return;
    }
    if (!ec && std::exchange(accept_starved_, false))
      std::fprintf(stderr, "vmlaunchd: accepting control connections again\n");
    if (!ec) admit_local(UniqueFd(socket.release()));
    if (acceptor_) accept_next();
  });
}

void ControlServer::admit_local(UniqueFd fd) {
  Peer peer = peer_of(fd.get());
  Identity who = local_identity(peer.uid, peer.groups, roles_);
  who.from = ssh_relay_claim(peer.abstract_name);  // for the log only (authorization.h)
  admit(std::move(fd), std::move(who));
}

// Who may connect is decided here, from the identity, before a byte is read: root always;
// callers with a role up to the connection limits (their sessions are bounded per message);
// anyone else only into a short denied session, while few exist. A refused connection is
// closed unread.
void ControlServer::admit(UniqueFd fd, Identity who) {
  const ControlLimits& caps = config_.control;
  const bool allowed = who.role >= Role::kReadOnly;
  size_t same_class = 0, same_peer = 0;
  for (auto& [bus, weak] : BusConnection::registry()) {
    auto conn = weak.lock();
    if (!conn || conn->identity().role == Role::kRoot || (conn->identity().role >= Role::kReadOnly) != allowed) continue;
    ++same_class;
    same_peer += conn->identity().who == who.who;
  }
  std::string refused;
  if (who.role == Role::kRoot) {
  } else if (allowed && same_class >= caps.max_connections) {
    refused = std::to_string(caps.max_connections) + " connections are open (control.max_connections)";
  } else if (allowed && same_peer >= caps.max_connections_per_uid) {
    refused = who.who + " has " + std::to_string(same_peer) + " connections open (control.max_connections_per_uid)";
  } else if (!allowed && (same_class >= kMaxDeniedSessions || same_peer >= 1)) {
    refused = "too many connections from callers without a role";
  }
  if (!refused.empty()) {
    if (!std::exchange(refusing_, true))
      std::fprintf(stderr, "vmlaunchd: Refusing control connections: %s\n", refused.c_str());
    return;  // closed unread
  }
  if (std::exchange(refusing_, false)) std::fprintf(stderr, "vmlaunchd: admitting control connections again\n");
  BusLimits limits = kDeniedLimits;
  if (allowed) {
    limits = BusLimits{};
    limits.max_message = size_t{caps.max_message_kib} * 1024;
    limits.message_deadline = std::chrono::seconds(caps.message_timeout);
  }
  auto conn = std::make_shared<BusConnection>(io_, std::move(fd), std::move(who), limits);
  if (auto ok = conn->start(kVtable, g_state.get()); !ok)
    std::fprintf(stderr, "vmlaunchd: Failed to serve a control connection: %s, ignoring\n", ok.error().message().c_str());
  else
    conn->pump();
}

}  // namespace vl
