#include "helper/cleanup.h"

#include <signal.h>

#include "helper/disk_owner.h"
#include "helper/launch.h"
#include "helper/log.h"
#include "helper/netlink.h"
#include "helper/nft_filter.h"
#include "helper/runtime_dir.h"

namespace vl::helper {

namespace {

// The state names a process that is still the VM's emulator (same pid, same start time).
bool emulator_running(const VmState& state) { return process_matches(state.pid, state.start_time); }

Result<void> remove_taps(const VmName& vm) {
  Netlink nl = VL_TRY(Netlink::open());
  for (unsigned nic = 0; nic < VmName::kMaxNics; ++nic) {
    std::string tap = vm.tap_name(nic);
    auto link = VL_TRY(nl.find(tap));
    if (!link) continue;
    if (link->kind != "tun") {
      log_warning("interface '" + tap + "' is not a tap; leaving it alone");
      continue;
    }
    VL_CHECK(nl.remove(tap));
    log_info("removed tap '" + tap + "'");
  }
  return {};
}

}  // namespace

Result<void> cleanup_vm(const HostConfig& config, const VmName& vm) {
  log_set_vm(vm.str());
  auto lock = lock_helper(config);
  if (!lock) return log_error(std::move(lock).error());
  if (auto state = read_vm_state(config, vm); state && emulator_running(*state))
    return log_error(Error::make(ErrorCode::kConflict, "VM '" + vm.str() + "' is still running (pid " +
                                                           std::to_string(state->pid) + "); stop it first"));
  Result<void> first_failure;
  auto attempt = [&](Result<void> r) {
    if (!r) {
      log_error(r.error());
      if (first_failure) first_failure = std::move(r).error();
    }
  };
  attempt(remove_vm_filter(vm.str()));
  attempt(remove_taps(vm));
  attempt(remove_udev_rule(config, vm));
  attempt(restore_disks(config, vm));
  attempt(remove_runtime_dir(config, vm));
  if (first_failure) log_info("cleaned up");
  return first_failure;
}

}  // namespace vl::helper
