// RUNTIME/vms/NAME/: the VM's monitor socket and state file, readable by the daemon's group.
//
// RUNTIME is root:daemon-group 01775 under the broker, so that the daemon can put its control
// socket there. Below it, root trusts only what root alone can change. Every function here
// opens RUNTIME, vms/ and vms/NAME with O_NOFOLLOW, checks each with fstat (a directory owned by
// root; RUNTIME writable by others only with the sticky bit, which keeps them from renaming or
// removing root's entries; vms/ and vms/NAME writable by root only), and works below them with
// *at() calls on those fds. Anything else is refused, naming the directory: a daemon that owned
// vms/ (because packaging pre-created RUNTIME for it, or because it created vms/ first) could
// otherwise make root signal any process through a forged state.json, or unlink files anywhere
// through a symlinked vms/NAME.
//
// The directory exists from a launch's claim to its cleanup: mkdir fails if it exists, so a
// second launch of a running VM, or of one whose last run was not cleaned up, is refused instead
// of silently reusing it (launches of one VM are serialized by lock_vm, locks.h).
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "common/config.h"
#include "common/unique_fd.h"
#include "common/vm_state.h"

namespace vl::helper {

/// RUNTIME and RUNTIME/vms, opened and checked as described above.
struct RuntimeDirs {
  UniqueFd runtime;
  UniqueFd vms;
};

/// Opens RUNTIME and RUNTIME/vms and checks them; with `create`, first creates whichever is
/// missing (root 0755). kDenied naming the directory if someone besides root could change it;
/// a missing directory (without `create`) is an error for which is_missing() holds.
Result<RuntimeDirs> open_runtime_dirs(const HostConfig& config, bool create);

/// RUNTIME/`name`: a directory of root's (0711 when `create` makes it: traversable, not
/// listable) for per-VM directories the VM's uid must reach, which vms/NAME does not let it
/// (vnc-tls, vnc). Checked like vms/; a missing one (without `create`) is_missing().
Result<UniqueFd> open_runtime_subdir(const HostConfig& config, const char* name, bool create);

/// True for the error of a runtime directory or state file that does not exist.
bool is_missing(const Error& error);

/// Creates RUNTIME/vms/NAME (root:daemon_gid 0750); kConflict if it already exists.
Result<void> create_runtime_dir(const HostConfig& config, const VmName& vm, gid_t daemon_gid);
/// Binds and listens on RUNTIME/vms/NAME/qmp.sock (root:daemon_gid 0660); returns the fd.
Result<UniqueFd> bind_monitor_socket(const HostConfig& config, const VmName& vm, gid_t daemon_gid);
/// Binds and listens on RUNTIME/vms/NAME/agent.sock (root:daemon_gid 0660), the guest agent
/// channel's host end: the emulator gets the listening fd, the daemon connects by path.
Result<UniqueFd> bind_agent_socket(const HostConfig& config, const VmName& vm, gid_t daemon_gid);
/// Binds and listens on RUNTIME/vms/NAME/console.sock (root:daemon_gid 0660), the first serial
/// port's host end, which the daemon connects to while someone is attached to the console.
Result<UniqueFd> bind_console_socket(const HostConfig& config, const VmName& vm, gid_t daemon_gid);
/// Creates RUNTIME/vms/NAME/emulator.log (root:daemon_gid 0640, empty) for the log relay's
/// copy of the emulator's output, which the daemon quotes when a start or a run fails
/// (qemu's own last lines; the full log stays root's). Returns it open for appending.
Result<UniqueFd> create_emulator_tail(const HostConfig& config, const VmName& vm, gid_t daemon_gid);
/// Writes RUNTIME/vms/NAME/state.json (root:daemon_gid 0640), atomically.
Result<void> write_vm_state(const HostConfig& config, const VmState& state, gid_t daemon_gid);
/// Reads the state file: a regular file of root's naming this VM.
Result<VmState> read_vm_state(const HostConfig& config, const VmName& vm);
/// Writes RUNTIME/vms/NAME/claim.json (root 0600): what a launch claims that no other running
/// VM may have (its MACs), with the launching process (pid, start time), which the emulator
/// keeps. Written while the shared-state lock is held (locks.h), long before the state file,
/// so a concurrent launch checks against it; valid while that process lives, removed with the
/// directory.
Result<void> write_vm_claim(const HostConfig& config, const VmState& claim);
/// Reads the claim file, with the checks of read_vm_state.
Result<VmState> read_vm_claim(const HostConfig& config, const VmName& vm);
/// True if anything is called RUNTIME/vms/NAME (a symlink too: the other calls refuse it).
Result<bool> runtime_dir_exists(const HostConfig& config, const VmName& vm);
/// The VMs that have a runtime directory (entries that are no valid VM name are skipped).
Result<std::vector<VmName>> list_runtime_dirs(const HostConfig& config);
/// Removes the sockets, the state and claim files, the emulator's output and the directory; missing ones
/// count as success.
Result<void> remove_runtime_dir(const HostConfig& config, const VmName& vm);

}  // namespace vl::helper
