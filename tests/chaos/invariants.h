// The invariants of a settled system, as one pure function of a snapshot: what the daemon says
// (`vmctl list --json`) against what the kernel and the filesystem say (kernel_view.h). Reading
// the snapshot (read_host_view) and judging it (check_invariants) are apart, so that the
// judgement can be specified on hand-made snapshots too.
#pragma once

#include <sys/stat.h>

#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/vm_state.h"
#include "tests/chaos/kernel_view.h"

namespace vl::chaos {

/// One row of `vmctl list --json`.
struct VmRow {
  std::string state, reason;
  int pid = 0, uid = 0, vnc = -1;
};
using Rows = std::map<std::string, VmRow>;

/// What the filesystem holds for one VM.
struct VmFiles {
  bool disk = false;  ///< the disk image could be stat'ed
  uid_t disk_uid = 0;
  gid_t disk_gid = 0;
  mode_t disk_mode = 0;  ///< permission bits
  bool runtime_dir = false;
  bool journal = false;
  std::optional<pid_t> state_pid;  ///< from RUNTIME/vms/NAME/state.json, if readable
  std::string state_error;         ///< why it is not
};

struct HostView {
  Rows rows;
  std::map<std::string, Link> links;
  NftView nft;
  std::vector<Proc> procs;
  std::map<std::string, VmFiles> files;  ///< per row
  std::vector<std::string> errors;       ///< reading failed (netlink, libnftables)
};

/// What the host was set up with.
struct HostSetup {
  std::string root;           ///< the test host's directory (domains, images, run, state)
  std::string config_path;    ///< appears in the helper's command lines
  std::string helper_exe;     ///< the vmlaunch-helper binary
  std::string emulator = "/usr/bin/qemu-system-x86_64";
  std::string bridge = "br-dmz";  ///< every VM's zone bridge
  uid_t uid_first = 0, uid_count = 1000;
  pid_t broker = 0;
  bool vnc = false;
  uid_t owner_uid = 0, owner_gid = 0;  ///< every disk's recorded owner and mode
  mode_t owner_mode = 0644;
  std::map<std::string, int> uid_of;  ///< VM -> its uid, as last reported
};

inline HostView read_host_view(Rows rows, const std::string& root) {
  HostView v;
  std::string err;
  v.links = read_links(err);
  if (!err.empty()) v.errors.push_back(err);
  err.clear();
  v.nft = read_nft(err);
  if (!err.empty()) v.errors.push_back(err);
  v.procs = read_procs();
  for (const auto& [name, row] : rows) {
    VmFiles f;
    struct stat st {};
    if (::stat((root + "/images/" + name + ".img").c_str(), &st) == 0) {
      f.disk = true;
      f.disk_uid = st.st_uid;
      f.disk_gid = st.st_gid;
      f.disk_mode = st.st_mode & 07777;
    }
    std::string rundir = root + "/run/vms/" + name;
    f.runtime_dir = std::filesystem::exists(rundir);
    f.journal = std::filesystem::exists(root + "/state/disks/" + name + ".json");
    auto state = read_vm_state_file(rundir + "/state.json");
    if (state) f.state_pid = state->pid;
    else f.state_error = state.error().message();
    v.files[name] = f;
  }
  v.rows = std::move(rows);
  return v;
}

inline std::string octal(mode_t m) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%04o", m & 07777);
  return buf;
}

/// Every violated invariant, one line each (empty: all hold). `alive(pid)` says whether a
/// process still runs (a parameter, so that hand-made snapshots need no real processes).
template <class Alive>
std::vector<std::string> check_invariants(const HostView& v, const HostSetup& s, Alive alive) {
  std::vector<std::string> out = v.errors;
  std::map<pid_t, const Proc*> by_pid;
  for (const auto& p : v.procs) by_pid[p.pid] = &p;
  int bridge = v.links.count(s.bridge) ? v.links.at(s.bridge).ifindex : -1;
  std::set<pid_t> emulators;
  std::set<std::string> taps, chains;
  std::map<std::string, int> relays;
  auto in_range = [&](uid_t uid) { return uid >= s.uid_first && uid < s.uid_first + s.uid_count; };
  for (const auto& [name, row] : v.rows) {
    auto bad = [&, &name = name](const std::string& what) { out.push_back(name + ": " + what); };
    std::string tap = name + "-0", chain = "vm-" + name;
    VmFiles f = v.files.count(name) ? v.files.at(name) : VmFiles{};
    std::string disk = std::to_string(f.disk_uid) + ":" + std::to_string(f.disk_gid) + " " + octal(f.disk_mode);
    if (row.state == "running") {
      emulators.insert(row.pid);
      taps.insert(tap);
      chains.insert(chain);
      auto it = by_pid.find(row.pid);
      if (row.pid <= 0 || it == by_pid.end()) {
        bad("running, but no process " + std::to_string(row.pid));
      } else {
        const Proc& p = *it->second;
        std::string pid = "pid " + std::to_string(row.pid);
        if (!alive(row.pid)) bad("running, but " + pid + " has exited (state " + p.state + ")");
        else if (p.state == 'Z' && p.threads <= 1) bad("emulator " + pid + " is a zombie");
        if (static_cast<int>(p.uid) != row.uid)
          bad("emulator runs as uid " + std::to_string(p.uid) + ", list says " + std::to_string(row.uid));
        if (p.exe != s.emulator && p.state != 'Z') bad(pid + " is '" + p.exe + "', not the emulator");
      }
      if (row.uid < 0 || !in_range(static_cast<uid_t>(row.uid)))
        bad("uid " + std::to_string(row.uid) + " outside the configured range");
      if (!v.links.count(tap)) {
        bad("running, but tap " + tap + " is missing");
      } else {
        if (v.links.at(tap).master != bridge)
          bad("tap " + tap + " is not a port of " + s.bridge + " (master " + std::to_string(v.links.at(tap).master) + ")");
        if (!v.links.at(tap).up) bad("tap " + tap + " is down");
      }
      if (!v.nft.chains.count(chain)) bad("running, but chain " + chain + " is missing");
      if (!v.nft.tap_map.count(tap) || v.nft.tap_map.at(tap) != chain)
        bad("map taps does not send " + tap + " to " + chain);
      if (!f.disk || f.disk_uid != static_cast<uid_t>(row.uid) || f.disk_mode != 0600)
        bad("disk is " + (f.disk ? disk : "missing") + ", not " + std::to_string(row.uid) + " 0600");
      if (!f.state_pid) bad("running, but " + f.state_error);
      else if (*f.state_pid != row.pid)
        bad("state.json says pid " + std::to_string(*f.state_pid) + ", list says " + std::to_string(row.pid));
      if (!f.journal) bad("running, but its disk journal is missing");
      // Each VM's VNC is a socket of its own (its emulator has a network namespace of its own).
      if (s.vnc && row.vnc < 0) bad("running without a VNC display");
    } else if (row.state == "stopped" || row.state == "failed") {
      if (row.pid != 0) bad(row.state + " with pid " + std::to_string(row.pid));
      if (v.links.count(tap)) bad(row.state + ", but tap " + tap + " exists");
      if (v.nft.chains.count(chain)) bad(row.state + ", but chain " + chain + " exists");
      if (f.runtime_dir) bad(row.state + ", but its runtime directory exists");
      if (f.journal) bad(row.state + ", but its disk journal exists");
      if (!f.disk || f.disk_uid != s.owner_uid || f.disk_gid != s.owner_gid || f.disk_mode != s.owner_mode)
        bad(row.state + ", but the disk is " + (f.disk ? disk : "missing") + ", not back to " +
            std::to_string(s.owner_uid) + ":" + std::to_string(s.owner_gid) + " " + octal(s.owner_mode));
      if (s.uid_of.count(name))
        for (const auto& p : v.procs)
          if (p.uid == static_cast<uid_t>(s.uid_of.at(name)) && p.state != 'Z')
            bad(row.state + ", but pid " + std::to_string(p.pid) + " (" + p.exe + ") runs as its uid " +
                std::to_string(p.uid));
    } else {
      bad("unsettled state " + row.state);
    }
  }
  // Nothing that belongs to no running VM.
  for (const auto& p : v.procs) {
    if (in_range(p.uid) && p.state != 'Z' && !emulators.count(p.pid))
      out.push_back("orphan process " + std::to_string(p.pid) + " (" + p.exe + ") of VM uid " + std::to_string(p.uid));
    // `launch NAME` stays as the emulator's root log relay and its serial log relay
    // (helper/log_relay.h, helper/serial_log.h) while NAME runs: two processes at most.
    if (p.exe == s.helper_exe && p.pid != s.broker && p.cmdline.find(" " + s.config_path + " ") != std::string::npos) {
      auto at = p.cmdline.find(" launch ");
      std::string vm = at == std::string::npos ? "" : p.cmdline.substr(at + 8, p.cmdline.find(' ', at + 8) - at - 8);
      bool relay = !vm.empty() && v.rows.count(vm) && v.rows.at(vm).state == "running" && ++relays[vm] <= 2;
      if (!relay) out.push_back("stray helper process " + std::to_string(p.pid) + ": " + p.cmdline);
    }
  }
  for (const auto& [name, link] : v.links)
    if (link.kind == "tun" && !taps.count(name)) out.push_back("orphan tap " + name);
  for (const auto& c : v.nft.chains)
    if (c.rfind("vm-", 0) == 0 && !chains.count(c)) out.push_back("orphan chain " + c);
  for (const auto& [tap, target] : v.nft.tap_map)
    if (!taps.count(tap)) out.push_back("orphan map element " + tap + " -> " + target);
  return out;
}

}  // namespace vl::chaos
