#include "helper/plan_client.h"

#include <systemd/sd-bus.h>

#include <memory>

#include "common/control_protocol.h"

namespace vl::helper {

Result<std::string> fetch_plan_from_daemon(const HostConfig& config, const VmName& vm) {
  sd_bus* raw = nullptr;
  if (int r = sd_bus_new(&raw); r < 0) return Error::from_errno(-r, "sd_bus_new");
  std::unique_ptr<sd_bus, sd_bus*(*)(sd_bus*)> bus(raw, sd_bus_flush_close_unref);
  std::string address = "unix:path=" + config.control_socket();
  if (int r = sd_bus_set_address(bus.get(), address.c_str()); r < 0) return Error::from_errno(-r, "set bus address");
  if (int r = sd_bus_start(bus.get()); r < 0)
    return Error::from_errno(-r, "connect to vmlaunchd at '" + config.control_socket() + "' for the launch plan");
  sd_bus_error error = SD_BUS_ERROR_NULL;
  sd_bus_message* reply = nullptr;
  int r = sd_bus_call_method(bus.get(), nullptr, kControlPath, kControlInterface, "GetLaunchPlan", &error, &reply,
                             "s", vm.str().c_str());
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
      return Error::make(code, "vmlaunchd cannot plan VM '" + vm.str() + "': " + message);
    }
    return Error::from_errno(-r, "ask vmlaunchd for the launch plan of VM '" + vm.str() + "'" +
                                     (message.empty() ? "" : " (" + message + ")"));
  }
  const char* json = nullptr;
  r = sd_bus_message_read(reply, "s", &json);
  std::string plan = r >= 0 && json ? json : "";
  sd_bus_message_unref(reply);
  if (r < 0) return Error::from_errno(-r, "read GetLaunchPlan reply");
  return plan;
}

}  // namespace vl::helper
