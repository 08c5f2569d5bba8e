#include "helper/reattach.h"

#include "common/vm_state.h"
#include "helper/bridge_port.h"
#include "helper/locks.h"
#include "helper/log.h"
#include "helper/netlink.h"
#include "helper/nft_filter.h"
#include "helper/runtime_dir.h"
#include "helper/uid_map.h"

namespace vl::helper {

namespace {

// The VM's state as launched, if its emulator still runs; the tap list must be the VM's own
// names in NIC order (the state file is root's, but nothing here trusts a name it did not make).
Result<VmState> running_state(const HostConfig& config, const VmName& vm) {
  auto state = read_vm_state(config, vm);
  Error not_running = Error::make(ErrorCode::kNotFound, "VM '" + vm.str() + "' is not running");
  if (!state) return is_missing(state.error()) ? not_running : std::move(state).error();
  if (!process_matches(state->pid, state->start_time)) return not_running;
  if (state->taps.size() > VmName::kMaxNics || state->macs.size() != state->taps.size())
    return Error::invalid("state of VM '" + vm.str() + "' lists " + std::to_string(state->taps.size()) + " taps and " +
                          std::to_string(state->macs.size()) + " MACs");
  for (size_t i = 0; i < state->taps.size(); ++i)
    if (state->taps[i] != vm.tap_name(static_cast<unsigned>(i)))
      return Error::invalid("state of VM '" + vm.str() + "' names tap " + quote_for_message(state->taps[i], kQuotePathMax) + " for NIC " + std::to_string(i));
  return std::move(state).value();
}

Result<LinkInfo> zone_bridge(const HostConfig& config, Netlink& nl, const VmState& state) {
  const Zone* zone = config.zone_named(state.zone);
  if (!zone) return Error::make(ErrorCode::kNotFound, "zone " + quote_for_message(state.zone, kQuotePathMax) + " of VM " + quote_for_message(state.vm, kQuotePathMax) + " is not declared in " + config.source);
  auto link = VL_TRY(nl.find(zone->bridge));
  if (!link) return Error::make(ErrorCode::kNotFound, "zone bridge " + quote_for_message(zone->bridge) + " does not exist");
  // Anyone with CAP_NET_ADMIN can create a dummy or veth under the bridge's name; a VM's tap
  // goes to a bridge only.
  if (link->kind != "bridge")
    return Error::make(ErrorCode::kDenied, "interface " + quote_for_message(zone->bridge) + " is not a bridge; not attaching VM " + quote_for_message(state.vm, kQuotePathMax) + " to it");
  return *link;
}

// The tap `name`, if it is the VM's: a tun/tap owned by the VM's uid (see cleanup.cpp, which
// removes taps by the same rule).
Result<LinkInfo> vm_tap(Netlink& nl, const std::string& name, uid_t uid) {
  auto link = VL_TRY(nl.find(name));
  if (!link) return Error::make(ErrorCode::kNotFound, "tap " + quote_for_message(name) + " does not exist");
  std::optional<uid_t> owner;
  if (link->kind == "tun") owner = VL_TRY(nl.tun_owner(link->ifindex, name));
  if (owner != uid)
    return Error::make(ErrorCode::kDenied, "interface " + quote_for_message(name) + " is not a tap of uid " + std::to_string(uid));
  return *link;
}

}  // namespace

Result<void> reattach_vm(const HostConfig& config, const VmName& vm) {
  // A cleanup of this VM removing the filter must not interleave with this (locks.h). Other
  // VMs' removals cannot drop the table under it: its chain keeps the table in use.
  UniqueFd lock = VL_TRY(lock_vm(config, vm));
  VmState state = VL_TRY(running_state(config, vm));
  auto uid = VL_TRY(assigned_uid(config, vm));
  if (!uid) return Error::make(ErrorCode::kNotFound, "VM '" + vm.str() + "' has no uid");
  Netlink nl = VL_TRY(Netlink::open());
  LinkInfo bridge = VL_TRY(zone_bridge(config, nl, state));
  // The filter matches taps by name and normally survives the bridge; if it is gone, a port
  // would pass forged frames, so there is no port.
  if (!VL_TRY(vm_filter_exists(vm.str())))
    return Error::make(ErrorCode::kDenied, "the anti-spoofing filter of VM '" + vm.str() + "' is missing; not attaching its taps (restart the VM)");
  const std::string& bridge_name = config.zone_named(state.zone)->bridge;
  for (size_t i = 0; i < state.taps.size(); ++i) {
    const std::string& tap = state.taps[i];
    LinkInfo link = VL_TRY(vm_tap(nl, tap, *uid));
    if (link.master == bridge.ifindex) continue;
    if (link.master != 0)
      return Error::make(ErrorCode::kDenied, "tap " + quote_for_message(tap) + " is a port of another interface (ifindex " +
                                                 std::to_string(link.master) + "); leaving it");
    MacAddress mac = VL_TRY(MacAddress::parse(state.macs[i]));
    // PRIV: the VM's own tap (owner checked above), set down so that it is a disabled port,
    // learning nothing, until attach_vm_port has turned learning off and set it up again.
    VL_CHECK(nl.set_down(tap));
    if (auto attached = attach_vm_port(nl, bridge_name, tap, mac); !attached) {
      // Undo: out of the bridge again (ifindex 0 releases), and down: no half-made port.
      if (auto released = nl.enslave(0, link.ifindex, "release tap " + quote_for_message(tap)); !released) log_error(released.error());
      return std::move(attached).error();
    }
    log_info("tap " + quote_for_message(tap) + " re-attached to bridge " + quote_for_message(bridge_name) + " of zone '" + state.zone +
             "' (learning off, static FDB entry " + mac.str() + ") and up");
  }
  return {};
}

}  // namespace vl::helper
