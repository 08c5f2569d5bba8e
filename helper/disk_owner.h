// Giving a VM's disks to its uid, and giving them back.
//
// A disk is reached only below a configured storage root, through openat2() with
// RESOLVE_BENEATH and (outside /dev) RESOLVE_NO_SYMLINKS, as an O_PATH fd; ownership and mode
// are changed on that fd, never through a path that a VM user could swap for a symlink. The
// original owner and mode are written to a root-owned journal before anything is changed, so
// that cleanup can restore them even after a crash.
//
// Read-only and shareable disks are not chowned: qemu opens them as the VM's uid, so the
// operator makes them readable to it (for example a world-readable installer ISO).
#pragma once

#include <sys/stat.h>

#include <string>
#include <vector>

#include "common/config.h"
#include "common/domain.h"
#include "common/unique_fd.h"

namespace vl::helper {

/// A disk resolved to an fd, with its current owner and mode.
struct DiskClaim {
  std::string path;
  bool block = false;
  UniqueFd fd;  ///< O_PATH
  struct stat st {};
};

/// Resolves every writable disk of `domain` below a storage root. Refuses symlinks (outside
/// /dev), paths outside every root, anything but regular files and block devices, and
/// regular files with more than one link.
Result<std::vector<DiskClaim>> resolve_disks(const HostConfig& config, const Domain& domain);

/// Refuses disks that another VM's journal already claims (same device and inode).
Result<void> check_disks_unclaimed(const HostConfig& config, const VmName& vm,
                                   const std::vector<DiskClaim>& claims);

/// Writes the journal of original owners and modes (atomically, root 0600).
Result<void> write_disk_journal(const HostConfig& config, const VmName& vm,
                                const std::vector<DiskClaim>& claims);

/// Changes every claimed disk to uid:gid mode 0600, through its fd.
Result<void> chown_disks(const std::vector<DiskClaim>& claims, uid_t uid, gid_t gid);

/// Restores owners and modes from the VM's journal, then deletes it. Entries whose path now
/// names a different inode are skipped with a warning. No journal counts as success.
Result<void> restore_disks(const HostConfig& config, const VmName& vm);

/// Writes the udev rule that keeps block devices owned by uid across "change" events.
Result<void> write_udev_rule(const HostConfig& config, const VmName& vm,
                             const std::vector<DiskClaim>& claims, uid_t uid, gid_t gid);
/// Removes the VM's udev rule; a missing rule counts as success.
Result<void> remove_udev_rule(const HostConfig& config, const VmName& vm);

}  // namespace vl::helper
