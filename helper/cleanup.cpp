#include "helper/cleanup.h"

#include <net/if.h>
#include <unistd.h>

#include <functional>
#include <optional>
#include <set>

#include "helper/console_filter.h"
#include "helper/disk_owner.h"
#include "helper/fault.h"
#include "helper/launch.h"
#include "helper/locks.h"
#include "helper/log.h"
#include "helper/machine.h"
#include "helper/netlink.h"
#include "helper/nft_filter.h"
#include "helper/runtime_dir.h"
#include "helper/uid_map.h"
#include "helper/uid_reaper.h"
#include "helper/vnc_socket.h"
#include "helper/vnc_tls.h"

namespace vl::helper {

namespace {

constexpr auto kKillTimeout = std::chrono::seconds(10);

// Cleanup acts only for a name vmlaunch has something of: a domain, a runtime directory or a
// disk journal. Anything else called NAME-N on the host is none of its business.
Result<bool> vm_is_known(const HostConfig& config, const VmName& vm) {
  if (::access(config.domain_xml_path(vm).c_str(), F_OK) == 0 || ::access(config.disk_journal_path(vm).c_str(), F_OK) == 0)
    return true;
  return runtime_dir_exists(config, vm);
}

// Removes the VM's taps: devices called NAME-N (or listed in its state) that are tun/taps owned
// by the VM's uid. A name alone proves nothing: the VM's taps vanish with its last process, and
// another tap may have taken the name since. Owned by the uid, a tap can only be the VM's.
//
// The converse does not hold: the tun driver lets any holder of a tap's fd change its owner
// (TUNSETOWNER asks for no capability), so the VM's uid can give its tap to another uid whose
// process keeps it open, and the tap then outlives the VM's processes as a port of the zone
// bridge. Such an interface is left alone, but while one called like the VM's tap is a port of
// a bridge, the VM's filter stays (this step fails): removing it would let that port send
// forged frames.
Result<void> remove_taps(const VmName& vm, std::optional<uid_t> uid, const std::vector<std::string>& listed) {
  Netlink nl = VL_TRY(Netlink::open());
  std::set<std::string> names(listed.begin(), listed.end());
  for (unsigned nic = 0; nic < VmName::kMaxNics; ++nic) names.insert(vm.tap_name(nic));
  std::vector<std::string> foreign_ports;
  for (const std::string& tap : names) {
    if (!is_valid_ifname(tap)) continue;
    auto link = VL_TRY(nl.find(tap));
    if (!link) continue;
    std::optional<uid_t> owner;
    if (link->kind == "tun") owner = VL_TRY(nl.tun_owner(link->ifindex, tap));
    if (!uid || owner != uid) {
      std::string whose = owner ? "a tap of uid " + std::to_string(*owner) : std::string("a tap without an owner");
      std::string vm_uid = uid ? "the VM's uid " + std::to_string(*uid) : std::string("the VM's (it never had a uid)");
      log_warning("interface " + quote_for_message(tap) + " is " + (link->kind != "tun" ? "not a tap" : whose + ", not of " + vm_uid) +
                  "; leaving it alone");
      if (link->master != 0) {
        char bridge[IF_NAMESIZE] = "?";
        (void)::if_indextoname(static_cast<unsigned>(link->master), bridge);
        foreign_ports.push_back(quote_for_message(tap) + " is still a port of bridge " + quote_for_message(bridge));
      }
      continue;
    }
    // PRIV: a tun/tap owned by the VM's uid (root-owned uid map), found by ifindex just now.
    VL_CHECK(nl.remove_index(link->ifindex, tap));
    log_info("removed tap " + quote_for_message(tap));
  }
  if (!foreign_ports.empty() && VL_TRY(vm_filter_exists(vm.str()))) {
    std::string which;
    for (const std::string& p : foreign_ports) which += (which.empty() ? "" : ", ") + p;
    return Error::make(ErrorCode::kConflict, "interface " + which + "; keeping the anti-spoofing filter of VM '" + vm.str() +
                                                 "' (take it off the bridge or delete it, then run cleanup again)");
  }
  return {};
}

}  // namespace

Result<void> cleanup_vm(const HostConfig& config, const VmName& vm) {
  log_set_vm(vm.str());
  // A launch of this VM still under way finishes (or fails) first; other VMs go on (locks.h).
  auto lock = lock_vm(config, vm);
  if (!lock) return log_error(std::move(lock).error());
  auto known = vm_is_known(config, vm);
  if (!known) return log_error(std::move(known).error());
  if (!*known) {
    log_info("nothing to clean up: no domain, runtime directory or disk journal");
    return {};
  }
  // The state says which process was the emulator. A malformed one names nothing; the uid
  // reaper below still ends every process the VM had.
  std::optional<VmState> state;
  if (auto read = read_vm_state(config, vm)) {
    state = std::move(read).value();
  } else if (read.error().code == ErrorCode::kInvalid) {
    log_warning(read.error().message() + ", ignoring");
  } else if (!is_missing(read.error())) {
    return log_error(std::move(read).error());
  }
  // A running emulator is refused, not killed: cleanup undoes a launch whose emulator has
  // exited (ExecStopPost, the daemon after the pidfd fired), so one still running means the
  // caller is mistaken, and killing a VM is for `kill`. Any other process of the uid is a
  // leftover, and is killed below.
  // The one exception: the emulator of a launch the daemon was never told about (launch.h),
  // paused before `cont` with nobody to resume or stop it. It runs as the VM's uid, so the
  // kill-processes step below ends it with the rest.
  if (state && process_matches(state->pid, state->start_time)) {
    if (!launch_unconfirmed(config, vm, *state))
      return log_error(Error::make(ErrorCode::kConflict, "VM '" + vm.str() + "' is still running (pid " +
                                                             std::to_string(state->pid) + "); stop it first"));
    log_warning("the emulator (pid " + std::to_string(state->pid) +
                ") is of a launch whose outcome never reached vmlaunchd; ending it");
  }
  // The uid comes from the root-owned map, never from the state file.
  auto uid = assigned_uid(config, vm);
  if (!uid) return log_error(std::move(uid).error());

  // Released in the reverse of the launch order. The first steps stop at the first failure:
  // nothing is released while a process of the VM's uid lives, and the filter stays while any
  // of its taps does (a tap without its filter passes forged frames). The rest depend only on
  // the processes being gone: each is tried, and the first failure reported. A cleanup that
  // failed part way can run again: what remains (runtime directory, disk journal, domain)
  // keeps the VM known.
  std::vector<std::string> listed = state ? state->taps : std::vector<std::string>();
  using Step = std::pair<const char*, std::function<Result<void>()>>;
  const Step ordered[] = {
      {"kill-processes", [&] { return *uid ? kill_uid_processes(**uid, "VM '" + vm.str() + "'", kKillTimeout) : Result<void>(); }},
      {"remove-taps", [&] { return remove_taps(vm, *uid, listed); }},
      // The tables are shared: removing the last VM's objects drops the table (locks.h).
      {"remove-filter", [&] { return with_shared_lock(config, [&] { return remove_vm_filter(vm.str()); }); }},
  };
  const Step independent[] = {
      // An earlier version's rule, for an emulator it started (console_filter.h).
      {"remove-console-filter", [&] { return with_shared_lock(config, [&] { return remove_console_filter(vm.str()); }); }},
      {"remove-vnc-socket", [&] { return remove_vnc_socket_dir(config, vm); }},
      {"remove-udev-rule", [&] { return remove_udev_rule(config, vm); }},
      {"remove-vnc-tls", [&] { return remove_vnc_credentials(config, vm); }},
      {"restore-disks", [&] { return restore_disks(config, vm); }},
      {"remove-runtime-dir", [&] { return remove_runtime_dir(config, vm); }},
      {"remove-launch-record", [&] {
         confirm_launch(config, vm);
         return Result<void>();
       }},
      {"unregister-machine", [&] {
         unregister_machine(vm);  // tolerated: machined may be absent, or have dropped it
         return Result<void>();
       }},
  };
  auto run = [](const Step& step) -> Result<void> {
    VL_CHECK(maybe_fail(step.first));
    return step.second();
  };
  for (const Step& step : ordered)
    if (auto done = run(step); !done) return log_error(std::move(done).error().wrap("cleanup stopped at step " + quote_for_message(std::string(step.first))));
  Result<void> first_failure;
  for (const Step& step : independent) {
    auto done = run(step);
    if (done) continue;
    log_error(done.error());
    if (first_failure) first_failure = std::move(done).error();
  }
  if (first_failure) log_info("cleaned up");
  return first_failure;
}

}  // namespace vl::helper
