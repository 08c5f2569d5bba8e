// Giving a VM's disks to its uid, and giving them back.
//
// A disk is reached only below a configured storage root that root alone controls (owned by
// root, writable by nobody else, and so every directory above it), through openat2() with
// RESOLVE_BENEATH and (outside /dev) RESOLVE_NO_SYMLINKS, as an O_PATH fd; ownership and mode
// are changed on that fd, never through a path that a VM user could swap for a symlink. The
// original owner and mode are written to a root-owned journal before anything is changed, so
// that cleanup can restore them even after a crash; an entry leaves the journal only once its
// disk has been restored.
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

/// Resolves every writable disk of `domain` below a storage root. Refuses roots that anyone but
/// root could change (not root's, group- or world-writable, or below such a directory unless
/// it is sticky), symlinks (outside /dev; below /dev, links that leave it), paths outside every
/// root, anything but regular files and block devices, and regular files with more than one
/// link.
Result<std::vector<DiskClaim>> resolve_disks(const HostConfig& config, const Domain& domain);

/// Checks each layer of every disk's declared backing chain like a disk (below a storage root
/// that root controls, no symlinks, the declared type) and, since layers are shared and never
/// given to a VM, owned by root and not writable by group or others. The emulator reads them
/// as the VM's uid: the operator makes them readable (e.g. 0644).
Result<void> check_backing_layers(const HostConfig& config, const Domain& domain);

/// Refuses disks that another VM's journal already claims (same device and inode), any claim
/// at all while another VM's journal cannot be read or is corrupt, and a launch of a VM that is
/// not running but still has a journal (a cleanup could not restore all its disks).
Result<void> check_disks_unclaimed(const HostConfig& config, const VmName& vm,
                                   const std::vector<DiskClaim>& claims);

/// Writes the journal of original owners and modes (atomically, root 0600).
Result<void> write_disk_journal(const HostConfig& config, const VmName& vm,
                                const std::vector<DiskClaim>& claims);

/// Changes every claimed disk to uid:gid mode 0600, through its fd.
Result<void> chown_disks(const std::vector<DiskClaim>& claims, uid_t uid, gid_t gid);

/// Restores owners and modes from the VM's journal and deletes it. Disks it cannot restore
/// (the path now names another inode or nothing, is no longer below a storage root, or the
/// change fails) stay in the journal for a later cleanup, and the call fails naming the first
/// of them. No journal counts as success.
Result<void> restore_disks(const HostConfig& config, const VmName& vm);

/// Writes the udev rule that keeps block devices owned by uid across "change" events.
Result<void> write_udev_rule(const HostConfig& config, const VmName& vm,
                             const std::vector<DiskClaim>& claims, uid_t uid, gid_t gid);
/// Removes the VM's udev rule; a missing rule counts as success.
Result<void> remove_udev_rule(const HostConfig& config, const VmName& vm);

}  // namespace vl::helper
