#include "helper/machine.h"

#include <net/if.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-daemon.h>

#include <memory>

#include "common/error.h"
#include "helper/log.h"

namespace vl::helper {

namespace {

using Bus = std::unique_ptr<sd_bus, sd_bus*(*)(sd_bus*)>;

Bus system_bus() {
  sd_bus* raw = nullptr;
  if (sd_booted() <= 0 || sd_bus_open_system(&raw) < 0) return Bus(nullptr, sd_bus_flush_close_unref);
  return Bus(raw, sd_bus_flush_close_unref);
}

}  // namespace

void register_machine(const VmName& vm, pid_t leader, const std::vector<std::string>& taps) {
  Bus bus = system_bus();
  if (!bus) return log_warning("not registering VM with systemd-machined: no system bus, ignoring");
  sd_bus_message* m = nullptr;
  int r = sd_bus_message_new_method_call(bus.get(), &m, "org.freedesktop.machine1", "/org/freedesktop/machine1",
                                         "org.freedesktop.machine1.Manager", "RegisterMachineWithNetwork");
  std::unique_ptr<sd_bus_message, sd_bus_message*(*)(sd_bus_message*)> request(m, sd_bus_message_unref);
  // name, id (empty: machined derives none), service, class, leader, root directory
  if (r >= 0) r = sd_bus_message_append(m, "s", vm.str().c_str());
  if (r >= 0) r = sd_bus_message_append_array(m, 'y', nullptr, 0);
  if (r >= 0) r = sd_bus_message_append(m, "ssus", "vmlaunch", "vm", static_cast<uint32_t>(leader), "");
  if (r >= 0) r = sd_bus_message_open_container(m, 'a', "i");
  for (const std::string& tap : taps)
    if (r >= 0) r = sd_bus_message_append(m, "i", static_cast<int32_t>(::if_nametoindex(tap.c_str())));
  if (r >= 0) r = sd_bus_message_close_container(m);
  if (r < 0) return log_warning(Error::from_errno(-r, "build RegisterMachineWithNetwork").message() + ", ignoring");
  sd_bus_error error = SD_BUS_ERROR_NULL;
  r = sd_bus_call(bus.get(), m, 0, &error, nullptr);
  if (r < 0)
    log_warning("registering with systemd-machined failed: " +
                std::string(error.message ? error.message : Error::from_errno(-r, "RegisterMachineWithNetwork").message()) +
                ", ignoring");
  else
    log_info("registered with systemd-machined as machine '" + vm.str() + "' (class vm, leader pid " + std::to_string(leader) + ")");
  sd_bus_error_free(&error);
}

void unregister_machine(const VmName& vm) {
  Bus bus = system_bus();
  if (!bus) return;
  sd_bus_error error = SD_BUS_ERROR_NULL;
  // Answers NoSuchMachine when machined already dropped it with its unit: nothing to say.
  (void)sd_bus_call_method(bus.get(), "org.freedesktop.machine1", "/org/freedesktop/machine1",
                           "org.freedesktop.machine1.Manager", "UnregisterMachine", &error, nullptr, "s", vm.str().c_str());
  sd_bus_error_free(&error);
}

}  // namespace vl::helper
