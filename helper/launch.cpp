#include "helper/launch.h"

#include <fcntl.h>
#include <grp.h>
#include <sys/file.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <cstdlib>
#include <ctime>

#include "common/argv_policy.h"
#include "common/domain.h"
#include "common/domain_file.h"
#include "common/plan.h"
#include "common/sys.h"
#include "common/vm_state.h"
#include "helper/bridge_port.h"
#include "helper/disk_owner.h"
#include "helper/disk_secret.h"
#include "helper/exec.h"
#include "helper/jail.h"
#include "helper/log.h"
#include "helper/locks.h"
#include "helper/log_relay.h"
#include "helper/machine.h"
#include "helper/netlink.h"
#include "helper/nft_filter.h"
#include "helper/nvram.h"
#include "helper/plan_client.h"
#include "helper/runtime_dir.h"
#include "helper/serial_log.h"
#include "helper/tap.h"
#include "helper/transaction.h"
#include "helper/uid_map.h"
#include "helper/vnc_socket.h"
#include "helper/vnc_tls.h"

namespace vl::helper {

namespace {

// Everything the launch needs, read and validated before the first change (Firecracker's Env).
struct LaunchEnv {
  const HostConfig& config;
  Domain domain;
  Plan plan;
  std::string zone;
  std::vector<unsigned> bridge_mtus;
  gid_t daemon_gid = 0;
  gid_t vm_group = 0;
  std::optional<VncCredentials> vnc_tls;  ///< read when [vnc] tls is on and the VM has VNC
  UniqueFd disk_secret;  ///< the encrypted disks' passphrase (disk_secret.h), if the VM has any
};

Result<gid_t> group_id(const std::string& name, const char* role) {
  const group* g = ::getgrnam(name.c_str());
  if (!g) return Error::make(ErrorCode::kNotFound, std::string(role) + " group " + quote_for_message(name) + " does not exist");
  return g->gr_gid;
}

Result<void> check_plan(const Plan& plan, const Domain& domain) {
  if (plan.vm != domain.name.str()) return Error::invalid("plan is for VM " + quote_for_message(plan.vm) + ", not '" + domain.name.str() + "'");
  if (plan.emulator != domain.emulator)
    return Error::make(ErrorCode::kDenied, "plan runs " + quote_for_message(plan.emulator, kQuotePathMax) + ", the domain XML says " + quote_for_message(domain.emulator, kQuotePathMax));
  size_t monitors = 0, agents = 0, serials = 0, disk_secrets = 0;
  std::vector<bool> nic_seen(domain.nics.size(), false);
  for (const FdSlot& slot : plan.fds) {
    if (slot.kind == FdSlot::Kind::kMonitor) {
      ++monitors;
      continue;
    }
    if (slot.kind == FdSlot::Kind::kAgent) {
      ++agents;
      continue;
    }
    if (slot.kind == FdSlot::Kind::kSerial || slot.kind == FdSlot::Kind::kSerialLog) {
      ++serials;
      continue;
    }
    if (slot.kind == FdSlot::Kind::kDiskSecret) {
      ++disk_secrets;
      continue;
    }
    if (slot.nic < 0 || static_cast<size_t>(slot.nic) >= domain.nics.size() || nic_seen[slot.nic])
      return Error::invalid("plan has a tap fd for interface " + std::to_string(slot.nic) + " that the domain lacks");
    nic_seen[slot.nic] = true;
  }
  if (monitors != 1) return Error::invalid("plan must have exactly one monitor fd");
  if (agents != (domain.guest_agent ? 1u : 0u))
    return Error::invalid(domain.guest_agent ? "plan must have exactly one guest agent fd"
                                             : "plan has a guest agent fd, but the domain XML declares no agent channel");
  for (size_t i = 0; i < nic_seen.size(); ++i)
    if (!nic_seen[i]) return Error::invalid("plan has no tap fd for interface " + std::to_string(i));
  // The serial log is root's record of what the guest printed: a plan may not leave it out.
  if (serials != (domain.serial_ptys > 0 ? 2u : 0u))
    return Error::invalid(domain.serial_ptys > 0 ? "plan must have the serial console fd and its log pipe"
                                                 : "plan has serial console fds, but the domain XML declares no serial port");
  // The passphrase goes to an emulator whose XML asks for it, and to no other.
  if (disk_secrets != (has_encrypted_disk(domain.disks) ? 1u : 0u))
    return Error::invalid(has_encrypted_disk(domain.disks) ? "plan must have exactly one disk secret fd"
                                                           : "plan has a disk secret fd, but the domain XML encrypts no disk");
  // The argv is the daemon's proposal; what root executes is decided here (argv_policy.h).
  return check_plan_argv(plan, domain);
}

Result<std::string> check_zones(const HostConfig& config, const Domain& domain) {
  std::string zone = domain.meta.zone;
  if (!zone.empty() && !config.zone_named(zone))
    return Error::make(ErrorCode::kNotFound, "zone " + quote_for_message(zone) + " of VM '" + domain.name.str() + "' is not declared in " + config.source);
  for (const Nic& nic : domain.nics) {
    const Zone* z = config.zone_of_bridge(nic.bridge);
    if (!z) return Error::make(ErrorCode::kDenied, "bridge " + quote_for_message(nic.bridge) + " is not the bridge of any zone in " + config.source);
    if (!zone.empty() && z->name != zone)
      return Error::make(ErrorCode::kDenied, "bridge " + quote_for_message(nic.bridge) + " belongs to zone " + quote_for_message(z->name) + ", but VM '" +
                                                 domain.name.str() + "' is in zone " + quote_for_message(zone));
    if (zone.empty()) zone = z->name;
    else if (z->name != zone)
      return Error::make(ErrorCode::kDenied, "VM '" + domain.name.str() + "' has interfaces in zones " + quote_for_message(zone) + " and " + quote_for_message(z->name));
  }
  return zone;
}

Result<std::vector<unsigned>> check_bridges(const Domain& domain) {
  Netlink nl = VL_TRY(Netlink::open());
  std::vector<unsigned> mtus;
  for (const Nic& nic : domain.nics) {
    auto link = VL_TRY(nl.find(nic.bridge));
    if (!link) return Error::make(ErrorCode::kNotFound, "zone bridge " + quote_for_message(nic.bridge) + " does not exist");
    if (link->kind != "bridge") return Error::make(ErrorCode::kDenied, "interface " + quote_for_message(nic.bridge) + " is not a bridge");
    mtus.push_back(link->mtu);
  }
  return mtus;
}

// A MAC may belong to one running VM only, or one VM could impersonate another past the
// filter. Every launch records its MACs in a claim file (runtime_dir.h) under the shared-state
// lock, before its emulator exists; a claim counts while its process (the launch, then the
// emulator it became) lives. The state file stands in for a claim written by an older helper.
// Only live VMs count, and their root-owned files are few and small: the cost does not grow
// with the number of defined VMs.
Result<void> check_macs_unique(const HostConfig& config, const Domain& domain) {
  // Read through the checked runtime directory (runtime_dir.h): only root's own files.
  for (const VmName& name : VL_TRY(list_runtime_dirs(config))) {
    if (name == domain.name) continue;
    auto other = read_vm_claim(config, name);
    if (!other) other = read_vm_state(config, name);
    if (!other || !process_matches(other->pid, other->start_time)) continue;
    for (const Nic& mine : domain.nics)
      for (const std::string& theirs : other->macs)
        if (mine.mac.str() == theirs)
          return Error::make(ErrorCode::kConflict, "MAC " + theirs + " is in use by running VM " + quote_for_message(other->vm));
  }
  return {};
}

Result<LaunchEnv> read_and_validate(const HostConfig& config, const VmName& vm, const std::string& plan_json,
                                    bool passphrase_from_daemon) {
  // Refuses a definition that anyone but root could change or anyone but root and the daemon's
  // group could read (domain_file.h).
  Domain domain = VL_TRY(load_domain_definition(config, vm));
  auto plan = plan_from_json(plan_json);
  if (!plan) return std::move(plan).error();
  VL_CHECK(check_plan(*plan, domain));
  if (!config.emulator_allowed(domain.emulator))
    return Error::make(ErrorCode::kDenied, "emulator " + quote_for_message(domain.emulator, kQuotePathMax) + " is not allowed by " + config.source);
  VL_CHECK(check_emulator(domain.emulator));
  std::string zone = VL_TRY(check_zones(config, domain));
  std::vector<unsigned> mtus = VL_TRY(check_bridges(domain));
  gid_t daemon_gid = VL_TRY(group_id(config.daemon_group, "daemon"));
  gid_t vm_group = VL_TRY(group_id(config.vm_group, "VM"));
  std::optional<VncCredentials> vnc_tls;
  if (domain.vnc && !domain.vnc->tls_dir.empty()) vnc_tls = VL_TRY(read_vnc_credentials(config, vm));
  // Before any change: a VM whose passphrase is missing is refused with nothing to undo.
  UniqueFd disk_secret;
  if (has_encrypted_disk(domain.disks)) {
    UniqueFd given;  // the operator's, if the start came with one (else the key file)
    if (passphrase_from_daemon) given = VL_TRY(take_passphrase_from_daemon(config, vm));
    disk_secret = VL_TRY(disk_secret_for(config, domain, given.get()));
  }
  return LaunchEnv{config,   std::move(domain), std::move(plan).value(), zone, mtus, daemon_gid, vm_group, std::move(vnc_tls),
                   std::move(disk_secret)};
}

// STATE/NAME.launch: a VM name has no '.', so it cannot meet STATE's other entries. A file,
// not a directory of records: nothing is left behind once the last one is removed.
std::string launch_record_path(const HostConfig& config, const VmName& vm) {
  return config.state_dir + "/" + vm.str() + ".launch";
}

// Written before the exec, so a broker that sees the exec (its report pipe closing) always
// finds it; STATE is root's 0700 (lock_vm created it).
Result<void> record_unconfirmed_launch(const HostConfig& config, const VmName& vm, const VmState& state) {
  return sys::write_file_atomic(launch_record_path(config, vm),
                                std::to_string(state.pid) + " " + std::to_string(state.start_time) + "\n", 0600);
}

}  // namespace

void confirm_launch(const HostConfig& config, const VmName& vm) {
  std::string path = launch_record_path(config, vm);
  // PRIV: a file in root's own 0700 state directory, named after a validated VM name.
  if (::unlink(path.c_str()) < 0 && errno != ENOENT)
    log_warning(Error::from_errno("remove '" + path + "'").message() + ", ignoring");
}

bool launch_unconfirmed(const HostConfig& config, const VmName& vm, const VmState& emulator) {
  auto record = sys::read_file(launch_record_path(config, vm), 64);
  return record && *record == std::to_string(emulator.pid) + " " + std::to_string(emulator.start_time) + "\n";
}

Error launch_vm(const HostConfig& config, const VmName& vm, const std::string& plan_json, int* report_fd,
                bool in_unit, bool passphrase_from_daemon) {
  log_set_vm(vm.str());
  // One launch, cleanup or reattach of this VM at a time, until exec (the fd is CLOEXEC).
  // Other VMs' launches run alongside; what they share is locked per section (locks.h).
  auto vm_lock = lock_vm(config, vm);
  if (!vm_lock) return log_error(std::move(vm_lock).error());
  auto env_or = read_and_validate(config, vm, plan_json, passphrase_from_daemon);
  if (!env_or) return log_error(std::move(env_or).error());
  LaunchEnv& env = *env_or;
  auto claims_or = resolve_disks(config, env.domain);
  if (!claims_or) return log_error(std::move(claims_or).error());
  if (auto r = check_backing_layers(config, env.domain); !r) return log_error(std::move(r).error());
  std::vector<DiskClaim>& claims = *claims_or;
  // What the emulator's jail holds: from the validated domain and claims, never the plan.
  auto jail_or = jail_spec(config, env.domain, claims);
  if (!jail_or) return log_error(std::move(jail_or).error());
  auto landlock = landlock_abi();
  if (!landlock) return log_error(std::move(landlock).error());
  if (*landlock == 0)
    log_warning("the kernel has no Landlock: VM '" + vm.str() + "' runs in its mount namespace without Landlock's file rules");

  // Declared before the transaction: its rollback (in its destructor) still uses them.
  uid_t uid = 0;
  bool nvram_created = false;
  std::vector<UniqueFd> taps;
  UniqueFd monitor, agent, console;
  SerialLogFiles serial_log;
  VmState state;
  Transaction tx;
  auto run = [&]() -> Result<void> {
    // The claims: checked against every other VM's and recorded in one section of the
    // shared-state lock, so that of two launches claiming one MAC or disk exactly one wins.
    UniqueFd shared = VL_TRY(lock_shared_state(config));
    VL_CHECK(check_macs_unique(config, env.domain));
    VL_CHECK(check_disks_unclaimed(config, vm, claims));
    VL_CHECK(tx.step("runtime-dir", [&] { return create_runtime_dir(config, vm, env.daemon_gid); },
                     [&] {
                       if (auto r = remove_runtime_dir(config, vm); !r) log_error(r.error());
                     }));
    VL_CHECK(tx.step("mac-claim", [&]() -> Result<void> {
      VmState claim;
      claim.vm = vm.str();
      claim.pid = ::getpid();
      claim.start_time = VL_TRY(process_start_time(claim.pid));
      for (const Nic& nic : env.domain.nics) claim.macs.push_back(nic.mac.str());
      return write_vm_claim(config, claim);
    }, nullptr));  // removed with the runtime directory
    // One undo for this step and disk-owner: chown_disks may fail part way, after changing
    // some disks, and a failed step has no undo of its own. Restoring from the journal puts
    // back every disk (unchanged ones are a no-op) and deletes the journal only if all of them
    // came back.
    VL_CHECK(tx.step("disk-journal", [&] { return write_disk_journal(config, vm, claims); },
                     [&] {
                       if (auto r = restore_disks(config, vm); !r) log_error(r.error());
                     }));
    shared.reset();
    VL_CHECK(tx.step("uid", [&]() -> Result<void> {
      uid = VL_TRY(uid_for_vm(config, vm));
      return publish_vm_user(config, vm, uid);
    }, nullptr));  // the assignment and its name are permanent by design (uid_map.h)
    // A kernel or firmware the emulator could not open would fail only after the exec, in
    // QEMU's words, in the root-only log: refused here, naming the file.
    VL_CHECK(tx.step("boot-files", [&] { return check_readable_by_vm(env.domain.boot_files, {uid, uid, env.vm_group}); },
                     nullptr));
    if (env.domain.uefi) {
      // Kept across starts; only a store this launch created is removed on failure.
      VL_CHECK(tx.step("nvram", [&]() -> Result<void> {
        nvram_created = VL_TRY(prepare_nvram(config, vm, *env.domain.uefi, uid));
        return {};
      }, [&] {
        if (!nvram_created) return;
        if (auto r = remove_nvram(config, vm); !r) log_error(r.error());
      }));
    }
    // The emulator reads them by path as its uid when it starts (vnc_tls.h).
    if (env.vnc_tls)
      VL_CHECK(tx.step("vnc-tls", [&] { return install_vnc_credentials(config, vm, *env.vnc_tls, uid, uid); }, [&] {
        if (auto r = remove_vnc_credentials(config, vm); !r) log_error(r.error());
      }));
    VL_CHECK(tx.step("disk-owner", [&] { return chown_disks(claims, uid, uid); }, nullptr));
    VL_CHECK(tx.step("udev-rule", [&] { return write_udev_rule(config, vm, claims, uid, uid); },
                     [&] {
                       if (auto r = remove_udev_rule(config, vm); !r) log_error(r.error());
                     }));
    std::vector<NicFilter> filters;
    for (size_t i = 0; i < env.domain.nics.size(); ++i)
      filters.push_back({vm.tap_name(static_cast<unsigned>(i)), env.domain.nics[i].mac, env.domain.nics[i].ips});
    // The tables are shared: a removal drops one when it empties it (locks.h).
    VL_CHECK(tx.step("nft-filter", [&] { return with_shared_lock(config, [&] { return install_vm_filter(vm.str(), filters); }); }, [&] {
      if (auto r = with_shared_lock(config, [&] { return remove_vm_filter(vm.str()); }); !r) log_error(r.error());
    }));
    // Where the emulator binds its VNC socket: TCP in its own network namespace reaches
    // nobody (vnc_socket.h). The checked argv has -vnc only on this VM's socket (argv_policy.h).
    if (env.plan.vnc)
      VL_CHECK(tx.step("vnc-socket", [&] { return create_vnc_socket_dir(config, vm, uid, env.daemon_gid); }, [&] {
        if (auto r = remove_vnc_socket_dir(config, vm); !r) log_error(r.error());
      }));
    Netlink nl = VL_TRY(Netlink::open());
    for (size_t i = 0; i < filters.size(); ++i) {
      const std::string& tap = filters[i].tap;
      // Not persistent: closing the fd on rollback deletes the device.
      VL_CHECK(tx.step("tap", [&]() -> Result<void> {
        taps.push_back(VL_TRY(create_tap(tap, uid, uid)));
        return nl.set_mtu(tap, env.bridge_mtus[i]);
      }, [&taps] { taps.pop_back(); }));
      log_info("created tap '" + tap + "' owned by uid " + std::to_string(uid));
    }
    VL_CHECK(tx.step("bridge-attach", [&]() -> Result<void> {
      for (size_t i = 0; i < filters.size(); ++i) {
        const Nic& nic = env.domain.nics[i];
        VL_CHECK(attach_vm_port(nl, nic.bridge, filters[i].tap, nic.mac));
        log_info("tap '" + filters[i].tap + "' attached to bridge '" + nic.bridge + "' of zone '" + env.zone +
                 "' (learning off, static FDB entry " + nic.mac.str() + ") and up");
      }
      return {};
    }, nullptr));  // closing the tap fds removes the ports, their flags and their FDB entries
    VL_CHECK(tx.step("monitor-socket", [&]() -> Result<void> {
      monitor = VL_TRY(bind_monitor_socket(config, vm, env.daemon_gid));
      return {};
    }, [&] { monitor.reset(); }));
    if (env.domain.guest_agent)
      VL_CHECK(tx.step("agent-socket", [&]() -> Result<void> {
        agent = VL_TRY(bind_agent_socket(config, vm, env.daemon_gid));
        return {};
      }, [&] { agent.reset(); }));
    // The console socket and the serial log's files (serial_log.h).
    if (env.domain.serial_ptys > 0) {
      VL_CHECK(tx.step("console-socket", [&]() -> Result<void> {
        console = VL_TRY(bind_console_socket(config, vm, env.daemon_gid));
        return {};
      }, [&] { console.reset(); }));
      VL_CHECK(tx.step("serial-log", [&]() -> Result<void> {
        serial_log = VL_TRY(open_serial_log(config, vm, env.daemon_gid));
        return {};
      }, [&] {
        bool rotated = serial_log.rotated;
        serial_log = {};
        if (auto r = unopen_serial_log(config, vm, rotated); !r) log_error(r.error());
      }));
    }
    VL_CHECK(tx.step("state-file", [&]() -> Result<void> {
      state.vm = vm.str();
      state.pid = ::getpid();
      state.start_time = VL_TRY(process_start_time(state.pid));
      state.uid = uid;
      state.emulator = env.domain.emulator;
      for (const NicFilter& f : filters) state.taps.push_back(f.tap);
      for (const Nic& nic : env.domain.nics) state.macs.push_back(nic.mac.str());
      for (const DiskClaim& c : claims) state.disks.push_back(c.path);
      state.zone = env.zone;
      state.started_at = ::time(nullptr);
      if (const char* id = std::getenv("INVOCATION_ID"); in_unit && id) state.invocation = id;  // checked by main
      return write_vm_state(config, state, env.daemon_gid);
    }, nullptr));  // removed with the runtime directory
    // Only a broker waits on a report pipe, and only a broker confirms (launch.h).
    bool by_broker = report_fd && *report_fd >= 0;
    VL_CHECK(tx.step("launch-record", [&] { return by_broker ? record_unconfirmed_launch(config, vm, state) : Result<void>(); },
                     [&] { confirm_launch(config, vm); }));
    return maybe_fail("exec");
  };
  if (auto r = run(); !r) return log_error(std::move(r).error());

  // Started before the emulator's first byte; it ends at EOF if the launch fails from here.
  UniqueFd serial_pipe;
  if (serial_log.current) {
    auto pipe = start_serial_log(std::move(serial_log));
    if (!pipe) return log_error(std::move(pipe).error());
    serial_pipe = std::move(pipe).value();
  }
  ExecSpec spec{env.domain.emulator, env.plan.argv, emulator_environment(), {}};
  for (std::string& arg : emulator_sandbox_args()) spec.argv.push_back(std::move(arg));
  for (const FdSlot& slot : env.plan.fds) {
    int fd = -1;
    switch (slot.kind) {
      case FdSlot::Kind::kMonitor: fd = monitor.get(); break;
      case FdSlot::Kind::kAgent: fd = agent.get(); break;
      case FdSlot::Kind::kTap: fd = taps[slot.nic].get(); break;
      case FdSlot::Kind::kSerial: fd = console.get(); break;
      case FdSlot::Kind::kSerialLog: fd = serial_pipe.get(); break;
      case FdSlot::Kind::kDiskSecret: fd = env.disk_secret.get(); break;
    }
    spec.fds.push_back({fd, slot.fd});
  }
  // The emulator must not hold the launch log, which it could truncate or forge lines in: it
  // writes to a root relay instead (log_relay.h). Should the launch fail from here on, the
  // relay sees EOF when the helper exits, and exits too: nothing to roll back.
  // Its copy for the daemon, which quotes qemu's last lines when the VM fails; a launch
  // without it only says less.
  auto tail = create_emulator_tail(config, vm, env.daemon_gid);
  if (!tail) log_warning(tail.error().message() + ", ignoring");
  auto output = start_log_relay(vm, tail ? tail->get() : -1);
  if (!output) return log_error(std::move(output).error());
  for (const FdMapping& m : output->mappings()) spec.fds.push_back(m);
  UniqueFd null_fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (null_fd) spec.fds.push_back({null_fd.get(), 0});
  // The report pipe must outlive fd placement (it may sit on a plan fd number) so that a
  // failure after it still reaches the broker; execve closes it, which means success.
  if (report_fd && *report_fd >= 0) {
    spec.fds.push_back({*report_fd, kReportFdTarget});
    *report_fd = kReportFdTarget;
  }
  if (in_unit) {
    // The helper's pid is the emulator's after the exec: machined takes it as the leader, and
    // systemd, reading READY=1 from the main pid, runs ExecStartPost, which waits until the
    // daemon has the guest running. An exec that fails after this still fails the unit: the
    // main process exits before the daemon can report the guest running.
    register_machine(vm, state.pid, state.taps);
    if (int r = sd_notify(0, "READY=1\nSTATUS=emulator executing; vmlaunchd takes it from here"); r <= 0)
      log_warning(Error::from_errno(r < 0 ? -r : 0, "sd_notify READY=1").message() + ", ignoring");
  }
  log_info("executing '" + spec.path + "' as uid " + std::to_string(uid) + " (pid " + std::to_string(state.pid) + ")");
  Error failed = drop_privileges_and_exec(spec, {uid, uid, env.vm_group}, *jail_or);
  if (::geteuid() != 0) {
    tx.commit();  // no longer root: nothing can be undone from here
    failed = failed.wrap("after the privilege drop; run 'vmlaunch-helper cleanup " + vm.str() + "'");
  }
  return log_error(std::move(failed));
}

}  // namespace vl::helper
