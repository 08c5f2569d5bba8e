#include "vmctl/client.h"

#include <systemd/sd-bus.h>

#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>

#include "common/control_protocol.h"
#include "common/vm_name.h"

namespace vl::ctl {

namespace {

// A D-Bus error from the daemon back into an Error: its name carries the code.
Error from_bus_error(int r, const sd_bus_error& e, const std::string& what) {
  std::string name = e.name ? e.name : "";
  std::string message = e.message ? e.message : std::string(std::strerror(-r));
  // sd-bus answers the calls still pending on a connection that closed with this error of
  // its own making: the daemon went away mid-call, and the outcome is unknown.
  if (name == SD_BUS_ERROR_NO_REPLY && message == "Connection terminated")
    return Error::make(ErrorCode::kSystem, "lost the connection to vmlaunchd: " + message);
  ErrorCode code = ErrorCode::kSystem;
  for (ErrorCode c : {ErrorCode::kInvalid, ErrorCode::kUnsupported, ErrorCode::kNotFound, ErrorCode::kConflict,
                      ErrorCode::kDenied, ErrorCode::kInternal})
    if (name == control_error_name(c)) code = c;
  if (name.empty() && what.size()) message = what + ": " + message;
  return Error::make(code, message);
}

}  // namespace

Result<Client> Client::connect(const std::string& socket_path, const std::string& start_hint) {
  sd_bus* bus = nullptr;
  int r = sd_bus_new(&bus);
  std::string address = "unix:path=" + socket_path;
  if (r >= 0) r = sd_bus_set_address(bus, address.c_str());
  if (r >= 0) r = sd_bus_start(bus);
  if (r < 0) {
    sd_bus_unref(bus);
    // One sentence that says what to do; "Connection refused" would only repeat it.
    if (r == -ENOENT || r == -ECONNREFUSED)
      return Error::make(ErrorCode::kSystem, "vmlaunchd is not running (no daemon at " + socket_path + "); " + start_hint);
    if (r == -EACCES) return Error::from_errno(-r, "cannot open " + socket_path);
    return Error::from_errno(-r, "connect to vmlaunchd at " + socket_path);
  }
  return Client(bus);
}

Result<Client> Client::connect_ssh(const std::string& bus_address, const std::string& url) {
  sd_bus* bus = nullptr;
  int r = sd_bus_new(&bus);
  if (r >= 0) r = sd_bus_set_address(bus, bus_address.c_str());
  // The far daemon knows the caller from the connection (the ssh login, the certificate); a
  // local uid claimed in the handshake would mean nothing there.
  if (r >= 0) r = sd_bus_set_anonymous(bus, 1);
  if (r >= 0) r = sd_bus_start(bus);
  if (r < 0) {
    sd_bus_unref(bus);
    return Error::from_errno(-r, "connect to vmlaunchd on " + url);
  }
  // ssh runs while the first call is sent: a failed login shows as a closed connection then.
  // ssh has said why on stderr (authentication, host key, no vmctl on the far side).
  Client client(bus);
  client.transport_error_ = [url] {
    return "lost the connection to vmlaunchd on " + url + " (ssh failed, or found no vmlaunchd there)";
  };
  return client;
}

Result<Client> Client::over_fd(int fd, const std::string& url, std::function<std::string()> transport_error) {
  sd_bus* bus = nullptr;
  int r = sd_bus_new(&bus);
  if (r >= 0) r = sd_bus_set_fd(bus, fd, fd);
  if (r < 0) ::close(fd);
  if (r >= 0) r = sd_bus_set_anonymous(bus, 1);
  if (r >= 0) r = sd_bus_start(bus);
  if (r < 0) {
    sd_bus_unref(bus);
    std::string why = transport_error ? transport_error() : "";
    if (!why.empty()) return Error::make(ErrorCode::kDenied, why);
    return Error::from_errno(-r, "connect to vmlaunchd on " + url);
  }
  Client client(bus);
  client.transport_error_ = std::move(transport_error);
  return client;
}

// Only a connection that is gone has a transport story to tell; an answer of the daemon stays
// as it is.
Error Client::explain(Error e) const {
  if (!transport_error_ || sd_bus_is_open(bus_) > 0) return e;
  std::string why = transport_error_();
  return why.empty() ? e : Error::make(ErrorCode::kSystem, why);
}

// The callbacks of watch_channels and the signal matches that call them.
struct Client::Watch {
  std::function<void(uint32_t, std::span<const uint8_t>)> data;
  std::function<void(uint32_t, const std::string&)> closed;
  sd_bus_slot* data_slot = nullptr;
  sd_bus_slot* closed_slot = nullptr;
  ~Watch() {
    sd_bus_slot_unref(data_slot);
    sd_bus_slot_unref(closed_slot);
  }
};

Client::Client(sd_bus* bus) : bus_(bus) {}
Client::Client(Client&& other) noexcept
    : bus_(other.bus_), transport_error_(std::move(other.transport_error_)), watch_(std::move(other.watch_)) {
  other.bus_ = nullptr;
}
Client::~Client() {
  watch_.reset();
  if (bus_) sd_bus_flush_close_unref(bus_);
}

Result<std::vector<VmRow>> Client::list() {
  sd_bus_error error = SD_BUS_ERROR_NULL;
  sd_bus_message* reply = nullptr;
  int r = sd_bus_call_method(bus_, nullptr, kControlPath, kControlInterface, "List", &error, &reply, "");
  if (r < 0) {
    Error e = explain(from_bus_error(r, error, "list the VMs"));
    sd_bus_error_free(&error);
    return e;
  }
  std::vector<VmRow> rows;
  r = sd_bus_message_enter_container(reply, 'a', "(sssuusibi)");
  while (r > 0) {
    const char *name, *state, *reason, *zone;
    VmRow row;
    int autostart = 0;
    r = sd_bus_message_read(reply, "(sssuusibi)", &name, &state, &reason, &row.pid, &row.uid, &zone,
                            &row.vnc_display, &autostart, &row.start_order);
    if (r <= 0) break;
    row.name = name, row.state = state, row.reason = reason, row.zone = zone, row.autostart = autostart;
    rows.push_back(std::move(row));
  }
  sd_bus_message_unref(reply);
  if (r < 0) return Error::from_errno(-r, "read the list of VMs from vmlaunchd");
  return rows;
}

Result<std::vector<std::pair<std::string, std::string>>> Client::status(const std::string& vm) {
  sd_bus_error error = SD_BUS_ERROR_NULL;
  sd_bus_message* reply = nullptr;
  int r = sd_bus_call_method(bus_, nullptr, kControlPath, kControlInterface, "Status", &error, &reply, "s", vm.c_str());
  if (r < 0) {
    Error e = explain(from_bus_error(r, error, "ask for the status of VM " + quote_for_message(vm)));
    sd_bus_error_free(&error);
    return e;
  }
  std::vector<std::pair<std::string, std::string>> fields;
  r = sd_bus_message_enter_container(reply, 'a', "{ss}");
  while (r > 0) {
    const char *k, *v;
    r = sd_bus_message_read(reply, "{ss}", &k, &v);
    if (r > 0) fields.emplace_back(k, v);
  }
  sd_bus_message_unref(reply);
  if (r < 0) return Error::from_errno(-r, "read the status of VM " + quote_for_message(vm) + " from vmlaunchd");
  return fields;
}

Result<std::string> Client::launch_plan(const std::string& vm) {
  sd_bus_error error = SD_BUS_ERROR_NULL;
  sd_bus_message* reply = nullptr;
  int r = sd_bus_call_method(bus_, nullptr, kControlPath, kControlInterface, "GetLaunchPlan", &error, &reply, "s",
                             vm.c_str());
  if (r < 0) {
    Error e = explain(from_bus_error(r, error, "ask for the launch plan of VM " + quote_for_message(vm)));
    sd_bus_error_free(&error);
    return e;
  }
  const char* plan = nullptr;
  r = sd_bus_message_read(reply, "s", &plan);
  std::string out = r >= 0 && plan ? plan : "";
  sd_bus_message_unref(reply);
  return out;
}

namespace {

// Calls `method` with arguments appended by `append`, returns the reply (the caller unrefs).
Result<sd_bus_message*> call(sd_bus* bus, const char* method, const std::function<int(sd_bus_message*)>& append) {
  sd_bus_message* msg = nullptr;
  int r = sd_bus_message_new_method_call(bus, &msg, nullptr, kControlPath, kControlInterface, method);
  if (r >= 0) r = append(msg);
  sd_bus_error error = SD_BUS_ERROR_NULL;
  sd_bus_message* reply = nullptr;
  if (r >= 0) r = sd_bus_call(bus, msg, 0, &error, &reply);
  sd_bus_message_unref(msg);
  if (r < 0) {
    Error e = from_bus_error(r, error, method);
    sd_bus_error_free(&error);
    return e;
  }
  return reply;
}

Result<uint32_t> channel_of(Result<sd_bus_message*> reply, const char* method) {
  if (!reply) return std::move(reply).error();
  uint32_t id = 0;
  int r = sd_bus_message_read(*reply, "u", &id);
  sd_bus_message_unref(*reply);
  if (r < 0) return Error::from_errno(-r, std::string("read ") + method + " reply");
  return id;
}

int on_write_reply(sd_bus_message* m, void* userdata, sd_bus_error*) {
  std::unique_ptr<std::function<void(Result<void>)>> done(static_cast<std::function<void(Result<void>)>*>(userdata));
  const sd_bus_error* e = sd_bus_message_get_error(m);
  if (*done) (*done)(e ? Result<void>(from_bus_error(-EIO, *e, "")) : Result<void>());
  return 0;
}

}  // namespace

Result<std::string> Client::audit(const std::vector<std::string>& vms) {
  auto reply = call(bus_, "Audit", [&](sd_bus_message* m) {
    int r = sd_bus_message_open_container(m, 'a', "s");
    for (const std::string& vm : vms)
      if (r >= 0) r = sd_bus_message_append(m, "s", vm.c_str());
    return r >= 0 ? sd_bus_message_close_container(m) : r;
  });
  if (!reply) return std::move(reply).error();
  const char* report = nullptr;
  int r = sd_bus_message_read(*reply, "s", &report);
  std::string out = r >= 0 && report ? report : "";
  sd_bus_message_unref(*reply);
  if (r < 0) return Error::from_errno(-r, "read Audit reply");
  return out;
}

Result<std::string> Client::read_serial_log(const std::string& vm) {
  auto reply = call(bus_, "ReadSerialLog", [&](sd_bus_message* m) { return sd_bus_message_append(m, "s", vm.c_str()); });
  if (!reply) return std::move(reply).error();
  const void* data = nullptr;
  size_t size = 0;
  int r = sd_bus_message_read_array(*reply, 'y', &data, &size);
  std::string out = r >= 0 ? std::string(static_cast<const char*>(data), size) : "";
  sd_bus_message_unref(*reply);
  if (r < 0) return Error::from_errno(-r, "read ReadSerialLog reply");
  return out;
}

Result<uint32_t> Client::open_console(const std::string& vm, bool write) {
  return channel_of(call(bus_, "OpenConsole", [&](sd_bus_message* m) {
    return sd_bus_message_append(m, "sb", vm.c_str(), static_cast<int>(write));
  }), "OpenConsole");
}

Result<uint32_t> Client::open_vnc(const std::string& vm) {
  return channel_of(call(bus_, "OpenVnc", [&](sd_bus_message* m) { return sd_bus_message_append(m, "s", vm.c_str()); }),
                    "OpenVnc");
}

Result<void> Client::channel_write(uint32_t channel, std::span<const uint8_t> bytes,
                                   std::function<void(Result<void>)> done) {
  sd_bus_message* msg = nullptr;
  int r = sd_bus_message_new_method_call(bus_, &msg, nullptr, kControlPath, kControlInterface, "ChannelWrite");
  if (r >= 0) r = sd_bus_message_append(msg, "u", channel);
  if (r >= 0) r = sd_bus_message_append_array(msg, 'y', bytes.data(), bytes.size());
  auto* state = new std::function<void(Result<void>)>(std::move(done));
  // Answered once the VM took the bytes, however long that is.
  if (r >= 0) r = sd_bus_call_async(bus_, nullptr, msg, on_write_reply, state, UINT64_MAX - 1);
  sd_bus_message_unref(msg);
  if (r < 0) {
    delete state;
    return Error::from_errno(-r, "send ChannelWrite");
  }
  return {};
}

Result<void> Client::close_channel(uint32_t channel) {
  sd_bus_message* msg = nullptr;
  int r = sd_bus_message_new_method_call(bus_, &msg, nullptr, kControlPath, kControlInterface, "CloseChannel");
  if (r >= 0) r = sd_bus_message_append(msg, "u", channel);
  if (r >= 0) r = sd_bus_send(bus_, msg, nullptr);
  sd_bus_message_unref(msg);
  if (r < 0) return Error::from_errno(-r, "send CloseChannel");
  return {};
}

Result<void> Client::watch_channels(std::function<void(uint32_t, std::span<const uint8_t>)> data,
                                    std::function<void(uint32_t, const std::string&)> closed) {
  auto watch = std::make_unique<Watch>();
  watch->data = std::move(data);
  watch->closed = std::move(closed);
  auto on_data = [](sd_bus_message* m, void* userdata, sd_bus_error*) -> int {
    auto* w = static_cast<Watch*>(userdata);
    uint32_t id = 0;
    const void* bytes = nullptr;
    size_t size = 0;
    if (sd_bus_message_read(m, "u", &id) >= 0 && sd_bus_message_read_array(m, 'y', &bytes, &size) >= 0)
      w->data(id, {static_cast<const uint8_t*>(bytes), size});
    return 0;
  };
  auto on_closed = [](sd_bus_message* m, void* userdata, sd_bus_error*) -> int {
    auto* w = static_cast<Watch*>(userdata);
    uint32_t id = 0;
    const char* reason = nullptr;
    if (sd_bus_message_read(m, "us", &id, &reason) >= 0) w->closed(id, reason);
    return 0;
  };
  int r = sd_bus_match_signal(bus_, &watch->data_slot, nullptr, kControlPath, kControlInterface, "ChannelData", on_data,
                              watch.get());
  if (r >= 0)
    r = sd_bus_match_signal(bus_, &watch->closed_slot, nullptr, kControlPath, kControlInterface, "ChannelClosed",
                            on_closed, watch.get());
  if (r < 0) return Error::from_errno(-r, "watch channels");
  watch_ = std::move(watch);
  return {};
}

pollfd Client::poll_fd() const {
  int events = sd_bus_get_events(bus_);
  return {sd_bus_get_fd(bus_), static_cast<short>(events < 0 ? POLLIN : events), 0};
}

int Client::poll_timeout_ms() const {
  uint64_t at = UINT64_MAX;
  if (sd_bus_get_timeout(bus_, &at) < 0 || at == UINT64_MAX) return -1;
  timespec now{};
  ::clock_gettime(CLOCK_MONOTONIC, &now);
  uint64_t now_us = static_cast<uint64_t>(now.tv_sec) * 1000000 + static_cast<uint64_t>(now.tv_nsec) / 1000;
  return at <= now_us ? 0 : static_cast<int>(std::min<uint64_t>((at - now_us + 999) / 1000, INT32_MAX));
}

Result<void> Client::process() {
  for (;;) {
    int r = sd_bus_process(bus_, nullptr);
    if (r < 0) return Error::from_errno(-r, "lost the connection to vmlaunchd");
    if (r == 0) return {};
  }
}

void Client::flush() { sd_bus_flush(bus_); }

namespace {

struct BatchState {
  std::vector<Result<void>>* results;
  size_t index;
  unsigned* in_flight;
  const std::function<void(const std::string&, const std::string&, const std::string&)>* progress;
  std::string vm;
};

int on_reply(sd_bus_message* m, void* userdata, sd_bus_error*) {
  auto* s = static_cast<BatchState*>(userdata);
  const sd_bus_error* e = sd_bus_message_get_error(m);
  if (e) (*s->results)[s->index] = from_bus_error(-EIO, *e, "");
  else (*s->results)[s->index] = Result<void>();
  --*s->in_flight;
  delete s;
  return 0;
}

int on_state(sd_bus_message* m, void* userdata, sd_bus_error*) {
  auto* progress = static_cast<const std::function<void(const std::string&, const std::string&, const std::string&)>*>(userdata);
  const char *vm, *state, *reason;
  if (sd_bus_message_read(m, "sss", &vm, &state, &reason) >= 0 && *progress) (*progress)(vm, state, reason);
  return 0;
}

}  // namespace

std::vector<Result<void>> Client::run_batch(
    const std::vector<BatchCall>& calls, unsigned parallel,
    const std::function<void(const std::string&, const std::string&, const std::string&)>& progress) {
  std::vector<Result<void>> results(calls.size(), Error::make(ErrorCode::kInternal, "not run"));
  sd_bus_slot* match = nullptr;
  sd_bus_match_signal(bus_, &match, nullptr, kControlPath, kControlInterface, "StateChanged", on_state,
                      const_cast<void*>(static_cast<const void*>(&progress)));
  unsigned in_flight = 0;
  size_t next = 0;
  // Calls wait as long as the operation takes (a graceful stop may take minutes).
  constexpr uint64_t kNoTimeout = UINT64_MAX - 1;
  while (next < calls.size() || in_flight > 0) {
    while (next < calls.size() && in_flight < std::max(parallel, 1u)) {
      const BatchCall& c = calls[next];
      sd_bus_message* msg = nullptr;
      bool with_passphrase = c.method == "Start" && c.passphrase >= 0;
      int r = sd_bus_message_new_method_call(bus_, &msg, nullptr, kControlPath, kControlInterface,
                                             with_passphrase ? "StartWithPassphrase" : c.method.c_str());
      if (r >= 0) r = sd_bus_message_append(msg, "s", c.vm.c_str());
      if (r >= 0 && with_passphrase) r = sd_bus_message_append(msg, "h", c.passphrase);
      if (r >= 0 && c.method == "Stop") r = sd_bus_message_append(msg, "ub", c.timeout, static_cast<int>(c.force));
      if (r >= 0 && c.method == "Shutdown") r = sd_bus_message_append(msg, "us", c.timeout, c.mode.c_str());
      if (r >= 0 && c.method == "Restart") r = sd_bus_message_append(msg, "u", c.timeout);
      if (r >= 0 && c.method == "Kill") r = sd_bus_message_append(msg, "i", c.signal);
      auto* state = new BatchState{&results, next, &in_flight, &progress, c.vm};
      if (r >= 0) r = sd_bus_call_async(bus_, nullptr, msg, on_reply, state, kNoTimeout);
      sd_bus_message_unref(msg);
      if (r < 0) {
        delete state;
        results[next] = Error::from_errno(-r, "send the request for VM " + quote_for_message(c.vm) + " to vmlaunchd");
      } else {
        ++in_flight;
      }
      ++next;
    }
    int r = sd_bus_process(bus_, nullptr);
    if (r < 0) {
      for (size_t i = 0; i < calls.size(); ++i)
        if (!results[i] && results[i].error().code == ErrorCode::kInternal)
          results[i] = explain(Error::from_errno(-r, "lost the connection to vmlaunchd"));
      break;
    }
    if (r == 0) sd_bus_wait(bus_, UINT64_MAX);
  }
  sd_bus_slot_unref(match);
  for (auto& r : results)
    if (!r && r.error().code == ErrorCode::kSystem) r = explain(r.error());
  return results;
}

}  // namespace vl::ctl
