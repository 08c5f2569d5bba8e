// The emulator's filesystem jail: a private mount namespace holding only what this one VM
// needs, and a Landlock domain limited to the same set.
//
// The launch process enters it as root just before it drops privileges, so the emulator it
// becomes is born inside. The new root is a read-only tmpfs; every path in it sits where it is
// on the host, so the argv needs no rewriting: the emulator's tree (/usr and the merged-/usr
// links, read-only, the only executable mounts), the few /etc files it reads, a minimal /dev,
// a private /proc showing only the VM's own processes, and this VM's runtime directory, disks,
// backing layers, boot files, NVRAM store and VNC TLS credentials. Nothing of other VMs.
// Every directory created on the way to a path copies the owner and mode of the host's, so the
// jail never lets the VM's uid traverse what it could not traverse on the host.
//
// The set comes from what the launch already validated (the domain XML root read, the disk
// claims, the checked backing layers, the boot files, the configuration), never from the plan.
// Landlock refuses every file outside the set even if a mount shows it; where the kernel lacks
// Landlock, the mount namespace alone stands, with a warning. Nothing is left on the host: the
// namespace dies with its last process, and a failure before the privilege drop returns the
// launch process to the host's namespace, where the launch's rollback runs.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "common/config.h"
#include "common/domain.h"
#include "common/error.h"
#include "common/unique_fd.h"
#include "helper/disk_owner.h"

namespace vl::helper {

/// One path of the host shown in the jail at the same place.
struct JailPath {
  enum class Kind {
    kTree,     ///< a directory of the emulator's tree: read-only, executable
    kLink,     ///< a symlink copied as it is (/bin -> usr/bin)
    kDir,      ///< a directory: read-only or read-write, never executable
    kFile,     ///< a regular file: read-only or read-write, never executable
    kProgram,  ///< the emulator binary outside /usr: read-only, executable
    kDevice,   ///< a character or block device node: its device bind keeps dev
  };
  std::string path;
  Kind kind = Kind::kFile;
  bool writable = false;
  bool optional = false;  ///< absent on the host: left out (the /etc files QEMU may read)
  /// When set, the path must still name this inode (a disk the launch resolved and claimed).
  dev_t dev = 0;
  ino_t ino = 0;
  bool check_inode = false;
};

/// Everything the jail of one VM holds, and where it is built.
struct JailSpec {
  std::string staging;  ///< a root-only directory the new root is mounted on while it is built
  std::vector<JailPath> paths;
};

/// The jail of `domain`: its emulator, devices (/dev/kvm only for type='kvm'), runtime
/// directory, every disk (read-write unless the XML says readonly; `claims` are the resolved
/// writable ones, whose inodes must not change), backing layers, boot files, NVRAM store and
/// VNC TLS directory. Refuses a path that lies inside another directory of the set, or that is
/// not absolute.
Result<JailSpec> jail_spec(const HostConfig& config, const Domain& domain, const std::vector<DiskClaim>& claims);

/// The highest Landlock ABI this kernel offers, or 0 if it has none (ENOSYS, EOPNOTSUPP); any
/// other failure is an error.
Result<int> landlock_abi();

/// The launch process inside its jail. While it is still root, destroying it returns the
/// process to the host's mount namespace (the launch's rollback then works on the host's
/// paths); after the privilege drop it cannot and need not: the namespace dies with the
/// emulator.
class Jail final {
 public:
  Jail() = default;
  Jail(Jail&&) = default;
  Jail& operator=(Jail&&) = default;
  Jail(const Jail&) = delete;
  Jail& operator=(const Jail&) = delete;
  ~Jail();

  /// Builds the new root from `spec`, pivots into it and prepares the Landlock ruleset.
  /// Errors name the path. On failure the process is back in the host's namespace.
  static Result<Jail> enter(const JailSpec& spec);

  /// Restricts the process to the jail's paths with Landlock. Call after no_new_privs and
  /// before the seccomp filter (which refuses nothing Landlock needs, but comes last so that
  /// it can). Without Landlock in the kernel, does nothing (the launch already warned).
  Result<void> restrict_files();

 private:
  UniqueFd host_ns_;
  UniqueFd ruleset_;
};

}  // namespace vl::helper
