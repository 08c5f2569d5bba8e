// RUNTIME/vms/NAME/: the VM's monitor socket and state file, readable by the daemon's group.
//
// Creating the directory is also the per-VM launch lock: mkdir fails if it exists, so two
// launches of one VM cannot both proceed, and a leftover of a crashed launch is reported
// instead of being silently reused.
#pragma once

#include <sys/types.h>

#include <string>

#include "common/config.h"
#include "common/unique_fd.h"
#include "common/vm_state.h"

namespace vl::helper {

/// Creates RUNTIME/vms/NAME (root:daemon_gid 0750); kConflict if it already exists.
Result<void> create_runtime_dir(const HostConfig& config, const VmName& vm, gid_t daemon_gid);
/// Binds and listens on RUNTIME/vms/NAME/qmp.sock (root:daemon_gid 0660); returns the fd.
Result<UniqueFd> bind_monitor_socket(const HostConfig& config, const VmName& vm, gid_t daemon_gid);
/// Writes RUNTIME/vms/NAME/state.json (root:daemon_gid 0640).
Result<void> write_vm_state(const HostConfig& config, const VmState& state, gid_t daemon_gid);
/// Reads the state file, if any.
Result<VmState> read_vm_state(const HostConfig& config, const VmName& vm);
/// Removes the socket, the state file and the directory; missing ones count as success.
Result<void> remove_runtime_dir(const HostConfig& config, const VmName& vm);

}  // namespace vl::helper
