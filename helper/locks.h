// The helpers' locks: which launches, cleanups and reattaches may overlap.
//
// Two kinds, always taken in this order, never the other way round:
//   lock_vm(NAME)        STATE/locks/NAME, held for a whole launch (until the emulator's execve
//                        closes it), cleanup or reattach of VM NAME: one VM's operations never
//                        interleave, and a cleanup racing a launch of the same VM waits for it.
//   lock_shared_state()  STATE/helper.lock, held only around the short sections that read or
//                        change what VMs share: the claims on MACs and disks (checked against
//                        every other VM's, then recorded before the lock is released, so the
//                        next launch sees them) and the nftables tables (a removal drops a table
//                        once no VM has anything left in it, which must not interleave with
//                        another VM's install). Everything slow (taps, chown, the emulator's
//                        exec, QMP) runs outside it, so launches of different VMs run in parallel.
// The uid map's own lock (uid_map.h) nests inside either. Lock files are kept: removing one
// while another process waits on it would let two holders in.
#pragma once

#include "common/config.h"
#include "common/unique_fd.h"
#include "common/vm_name.h"

namespace vl::helper {

/// Waits for and holds the per-VM lock of `vm` while the returned fd (close-on-exec) lives.
Result<UniqueFd> lock_vm(const HostConfig& config, const VmName& vm);

/// Waits for and holds the lock on shared state while the returned fd (close-on-exec) lives.
/// Never wait for lock_vm while holding it.
Result<UniqueFd> lock_shared_state(const HostConfig& config);

/// Runs `action` (returning Result<void>) holding the lock on shared state.
template <typename Action>
Result<void> with_shared_lock(const HostConfig& config, Action&& action) {
  UniqueFd lock = VL_TRY(lock_shared_state(config));
  return action();
}

}  // namespace vl::helper
