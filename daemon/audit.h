// `vmctl audit`: the hardening baseline as rules, judged by the daemon.
//
// Root gathers facts and judges nothing (helper/inspect.h); the daemon judges them here against
// the domain XML and vmlaunch.toml, with no I/O: every function below is pure, so that each rule
// is tested on fixtures (tests/daemon/audit_test.cpp) and the root side stays small.
//
// A finding names its rule, the VM ("" for a host rule), a verdict, the evidence and the fix.
// Rules that read the emulator process, its taps or its disks are skipped for a VM that is not
// running ("not running"): a stopped VM has no process to check, and its disks are back with
// their owners. A skip never fails an audit. docs/vmctl.1.md lists every rule.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "common/audit_facts.h"
#include "common/config.h"
#include "common/domain.h"

namespace vl {

enum class Verdict { kPass, kFail, kSkip };

/// "pass", "fail", "skip".
const char* verdict_name(Verdict verdict);

struct Finding {
  std::string rule;  ///< e.g. "disk-owner"
  std::string vm;    ///< "" for a host rule
  Verdict verdict = Verdict::kPass;
  std::string evidence;
  std::string fix;  ///< "" when it passes or is skipped
};

/// The rules about one VM: own-uid, no-capabilities, no-new-privs, seccomp, jailed-namespaces,
/// sandbox, disk-owner, nic-zone, anti-spoofing, bridge-learning, vnc-listen, vnc-password.
/// `domain` has its networks resolved (zone_network.h).
std::vector<Finding> audit_vm(const HostConfig& config, const Domain& domain, const AuditFacts& facts);

/// What the daemon sees of a file itself (its control socket, its TLS key).
struct FileFacts {
  bool exists = false;
  uid_t uid = 0;
  gid_t gid = 0;
  mode_t mode = 0;  ///< st_mode, type bits included
};

/// What the daemon reads itself for the host rules.
struct LocalFacts {
  uid_t daemon_uid = 0;
  FileFacts control_socket;
  FileFacts runtime_dir;  ///< the directory that holds the control socket
  FileFacts tls_key;      ///< only read while the TLS listener is on
};

/// The host rules: stale-taps, stale-chains, stale-journals, stale-udev-rules, bridge-address
/// (from root's facts; skipped when `host` is nullopt, i.e. no VM was inspected),
/// control-socket and tls-listener (from the daemon's own view).
std::vector<Finding> audit_host(const HostConfig& config, const std::optional<HostFacts>& host, const LocalFacts& local);

/// {"findings": [{rule, vm, verdict, evidence, fix}...], "passed": N, "failed": N, "skipped": N}.
std::string findings_to_json(const std::vector<Finding>& findings);

}  // namespace vl
