#include "helper/plan_client.h"

#include <fcntl.h>
#include <systemd/sd-bus.h>

#include <memory>

#include "common/control_protocol.h"

namespace vl::helper {

namespace {

using Bus = std::unique_ptr<sd_bus, sd_bus*(*)(sd_bus*)>;

// Longer than any start may take in the daemon (its start deadline, 30 s, after a conversion
// of a few seconds): sd-bus's default of 25 s would cut a slow but healthy start short.
constexpr uint64_t kCallTimeoutUsec = 120ull * 1000 * 1000;

Result<Bus> connect_daemon(const HostConfig& config, const std::string& why) {
  sd_bus* raw = nullptr;
  if (int r = sd_bus_new(&raw); r < 0) return Error::from_errno(-r, "connect to vmlaunchd " + why);
  Bus bus(raw, sd_bus_flush_close_unref);
  std::string address = "unix:path=" + config.control_socket();
  if (int r = sd_bus_set_address(bus.get(), address.c_str()); r < 0) return Error::from_errno(-r, "connect to vmlaunchd " + why);
  if (int r = sd_bus_start(bus.get()); r < 0)
    return Error::from_errno(-r, "connect to vmlaunchd at " + quote_for_message(config.control_socket(), kQuotePathMax) + " " + why);
  return bus;
}

// One method call; the reply (if wanted) is handed to the caller. `what` completes "vmlaunchd
// ..." in an error, in the operator's words (no method names).
Result<void> call(sd_bus* bus, const std::string& what, sd_bus_message* m, sd_bus_message** reply) {
  sd_bus_error error = SD_BUS_ERROR_NULL;
  int r = sd_bus_call(bus, m, kCallTimeoutUsec, &error, reply);
  if (r < 0) {
    // The daemon's refusal is a sentence for the operator, carrying its own error code; the
    // errno sd-bus derives from it (EIO for any of vmlaunch's errors) would add a stray
    // ": Input/output error".
    std::string message = error.message ? error.message : "";
    std::string name = error.name ? error.name : "";
    sd_bus_error_free(&error);
    if (!message.empty() && name.rfind("org.vmlaunch.Error.", 0) == 0) {
      ErrorCode code = ErrorCode::kSystem;
      for (ErrorCode c : {ErrorCode::kInvalid, ErrorCode::kUnsupported, ErrorCode::kNotFound, ErrorCode::kConflict,
                          ErrorCode::kDenied, ErrorCode::kInternal})
        if (name == control_error_name(c)) code = c;
      return Error::make(code, "vmlaunchd " + what + ": " + message);
    }
    return Error::from_errno(-r, "vmlaunchd " + what + (message.empty() ? "" : " (" + message + ")"));
  }
  return {};
}

Result<sd_bus_message*> new_call(sd_bus* bus, const char* method, const char* what) {
  sd_bus_message* m = nullptr;
  if (int r = sd_bus_message_new_method_call(bus, &m, nullptr, kControlPath, kControlInterface, method); r < 0)
    return Error::from_errno(-r, std::string("build the request to vmlaunchd (") + what + ")");
  return m;
}

}  // namespace

Result<std::string> fetch_plan_from_daemon(const HostConfig& config, const VmName& vm) {
  Bus bus = VL_TRY(connect_daemon(config, "for the launch plan"));
  sd_bus_message* m = VL_TRY(new_call(bus.get(), "GetLaunchPlan", "the launch plan"));
  std::unique_ptr<sd_bus_message, sd_bus_message*(*)(sd_bus_message*)> request(m, sd_bus_message_unref);
  if (int r = sd_bus_message_append(m, "s", vm.str().c_str()); r < 0) return Error::from_errno(-r, "build the request to vmlaunchd (the launch plan)");
  sd_bus_message* reply = nullptr;
  VL_CHECK(call(bus.get(), "cannot plan VM '" + vm.str() + "'", m, &reply));
  const char* json = nullptr;
  int r = sd_bus_message_read(reply, "s", &json);
  std::string plan = r >= 0 && json ? json : "";
  sd_bus_message_unref(reply);
  if (r < 0) return Error::from_errno(-r, "read the launch plan from vmlaunchd");
  return plan;
}

Result<UniqueFd> take_passphrase_from_daemon(const HostConfig& config, const VmName& vm) {
  Bus bus = VL_TRY(connect_daemon(config, "for the passphrase given at start"));
  sd_bus_message* m = VL_TRY(new_call(bus.get(), "TakePassphrase", "the passphrase"));
  std::unique_ptr<sd_bus_message, sd_bus_message*(*)(sd_bus_message*)> request(m, sd_bus_message_unref);
  if (int r = sd_bus_message_append(m, "s", vm.str().c_str()); r < 0) return Error::from_errno(-r, "build the request to vmlaunchd (the passphrase)");
  sd_bus_message* reply = nullptr;
  auto taken = call(bus.get(), "has no passphrase for VM '" + vm.str() + "'", m, &reply);
  if (!taken && taken.error().code == ErrorCode::kNotFound) return UniqueFd();  // none given: the key file
  VL_CHECK(taken);
  int fd = -1;
  int r = sd_bus_message_read(reply, "h", &fd);
  // The message owns its descriptor: keep a copy of our own.
  UniqueFd own(r >= 0 ? ::fcntl(fd, F_DUPFD_CLOEXEC, 3) : -1);
  int dup_errno = errno;
  sd_bus_message_unref(reply);
  if (r < 0) return Error::from_errno(-r, "read the passphrase from vmlaunchd");
  if (!own) return Error::from_errno(dup_errno, "keep the passphrase descriptor from vmlaunchd");
  return own;
}

Result<void> report_launched(const HostConfig& config, const VmName& vm) {
  Bus bus = VL_TRY(connect_daemon(config, "to hand over VM '" + vm.str() + "'"));
  sd_bus_message* m = VL_TRY(new_call(bus.get(), "Launched", "the hand-over"));
  std::unique_ptr<sd_bus_message, sd_bus_message*(*)(sd_bus_message*)> request(m, sd_bus_message_unref);
  if (int r = sd_bus_message_append(m, "s", vm.str().c_str()); r < 0) return Error::from_errno(-r, "build the request to vmlaunchd (the hand-over)");
  return call(bus.get(), "did not take over VM '" + vm.str() + "'", m, nullptr);
}

void report_launch_failed(const HostConfig& config, const VmName& vm, const Error& error) {
  auto bus = connect_daemon(config, "to report the failed launch");
  if (!bus) return;
  auto m = new_call(bus->get(), "LaunchFailed", "the failed launch");
  if (!m) return;
  std::unique_ptr<sd_bus_message, sd_bus_message*(*)(sd_bus_message*)> request(*m, sd_bus_message_unref);
  if (sd_bus_message_append(*m, "ss", vm.str().c_str(), error.message().c_str()) < 0) return;
  (void)call(bus->get(), "was not told of the failed launch of VM '" + vm.str() + "'", *m, nullptr);
}

}  // namespace vl::helper
