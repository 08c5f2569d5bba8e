// The persistent map from VM names to uids.
//
// A root-owned text file (STATE/uids, one "NAME UID" line per VM) under an exclusive lock.
// Entries are never removed: a VM keeps its uid forever, and a uid is never handed to another
// VM, so files a VM once owned can never become another VM's. uids that belong to an existing
// account or group are skipped.
#pragma once

#include <sys/types.h>

#include <map>
#include <optional>
#include <string>

#include "common/config.h"

namespace vl::helper {

/// The uid of `vm`, allocating the lowest free uid of the configured range on first use.
Result<uid_t> uid_for_vm(const HostConfig& config, const VmName& vm);

/// Names the VM's uid and gid for NSS: a JSON user and group record "vm-NAME" in the userdb
/// directory (nss-systemd reads these drop-ins, so `ps` and `ls -l` show vm-NAME). Idempotent;
/// the records live as long as the assignment, so they are never removed.
Result<void> publish_vm_user(const HostConfig& config, const VmName& vm, uid_t uid);

/// All assignments, for listings ("which VM is uid 70003?").
Result<std::map<std::string, uid_t>> read_uid_map(const HostConfig& config);

/// The uid assigned to `vm`, or nullopt if it never had one; never allocates.
Result<std::optional<uid_t>> assigned_uid(const HostConfig& config, const VmName& vm);

}  // namespace vl::helper
