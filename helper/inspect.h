// vmlaunch-helper's `inspect` request: the facts `vmctl audit` judges, read as root.
//
// Read-only by construction: it opens, stats and lists, and changes no file, link, rule or
// process. It reads what the unprivileged daemon cannot see (the emulator's /proc entries,
// vmlaunch's nftables table, disks below root-only directories) and leaves every judgement to
// the daemon (daemon/audit.h). Like every request it takes only a validated VM name, which must
// have a domain definition root accepts; everything else comes from root-owned inputs.
#pragma once

#include <string>

#include "common/config.h"
#include "common/error.h"
#include "common/vm_name.h"

namespace vl::helper {

/// The facts of `vm` and of the host, as the JSON of common/audit_facts.h, at most
/// kMaxBrokerReply - kInspectReserve bytes (a larger set of facts is an error, never cut).
Result<std::string> inspect_vm(const HostConfig& config, const VmName& vm);

/// Room left in a broker reply for what wraps the facts.
inline constexpr size_t kInspectReserve = 256;

}  // namespace vl::helper
