// What the root broker reports for `vmctl audit`: the answer to an `inspect` request.
//
// Facts only, no judgement: root reads what the unprivileged daemon cannot (another uid's
// /proc entries, nftables, the disks below root-only directories) and changes nothing; the
// daemon judges them against the domain XML and vmlaunch.toml (daemon/audit.h). Keeping the
// rules out of root keeps root's side small, and lets a rule change without touching it.
//
// The facts travel as one JSON object in the broker's reply, of at most kMaxBrokerReply bytes
// (broker_protocol.h). Parsing is strict: a missing or wrongly typed field is an error.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"

namespace vl {

/// The emulator process, read from /proc while its pidfd shows it running.
struct ProcessFacts {
  pid_t pid = 0;
  /// Selected /proc/PID/status lines, values as the kernel writes them (kStatusKeys).
  std::map<std::string, std::string> status;
  /// /proc/PID/ns/{net,mnt} inode numbers, and the host's: PID 1's, or where root may not read
  /// those (a container without ptrace rights over its init), the broker's own.
  uint64_t net_ns = 0, mnt_ns = 0, host_net_ns = 0, host_mnt_ns = 0;
  std::string host_ns_of;  ///< whose namespaces host_*_ns are: "PID 1" or "the broker"
  /// /proc/PID/cmdline, split at NULs; `argv_truncated` if it exceeded the read bound.
  std::vector<std::string> argv;
  bool argv_truncated = false;
};

/// The /proc/PID/status keys root reports.
inline constexpr const char* kStatusKeys[] = {"Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff",
                                              "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp"};

/// One of the VM's taps (NAME-N, N the NIC's index).
struct TapFacts {
  std::string name;
  bool exists = false;
  std::string master;     ///< the bridge it is a port of, "" if none
  bool learning = false;  ///< IFLA_BRPORT_LEARNING of its bridge port
  std::vector<std::string> static_macs;  ///< static, sticky FDB entries on its port
};

/// One writable disk of the domain, by lstat() of its path.
struct DiskFacts {
  std::string path;
  bool exists = false;
  uint32_t uid = 0;
  uint32_t mode = 0;  ///< st_mode, type bits included
};

/// One VM's facts.
struct VmFacts {
  std::string name;
  bool running = false;      ///< its state file names a process that still runs
  std::optional<uint32_t> uid;  ///< from the root-owned uid map; nullopt if it never had one
  std::optional<ProcessFacts> process;  ///< while running
  std::vector<TapFacts> taps;    ///< one per NIC of the domain
  std::vector<DiskFacts> disks;  ///< the writable disks of the domain
};

/// A running VM as its runtime state says.
struct LiveVm {
  std::string name;
  uint32_t uid = 0;
  std::vector<std::string> taps;
};

/// A tun/tap whose owner is in the configured VM uid range.
struct TunFacts {
  std::string name;
  uint32_t owner = 0;
  std::string master;  ///< "" if no bridge port
};

/// A rule of a VM chain that drops frames from `tap` whose source MAC is not `mac`.
struct MacRule {
  std::string chain, tap, mac;
};

/// vmlaunch's nftables table (bridge family).
struct NftFacts {
  bool table = false;
  /// Hooks of the base chains whose rule jumps by input interface through the @taps map.
  std::vector<std::string> tap_hooks;
  /// The @taps map: tap name -> the chain it jumps to.
  std::map<std::string, std::string> tap_map;
  /// Every chain called vm-*.
  std::vector<std::string> vm_chains;
  std::vector<MacRule> mac_rules;
};

/// A zone bridge of vmlaunch.toml.
struct BridgeFacts {
  std::string name;
  bool exists = false;
  std::vector<std::string> addresses;  ///< "ADDRESS/PREFIX", every family
};

/// What root sees of the host.
struct HostFacts {
  std::vector<LiveVm> live;
  std::vector<TunFacts> taps;
  NftFacts nft;
  std::vector<std::string> journals;  ///< VM names with a disk journal
  std::vector<std::string> udev_rules;  ///< VM names with a udev rule (block disks)
  std::vector<BridgeFacts> bridges;
};

struct AuditFacts {
  VmFacts vm;
  HostFacts host;
};

std::string audit_facts_to_json(const AuditFacts& facts);
Result<AuditFacts> audit_facts_from_json(std::string_view text);

}  // namespace vl
