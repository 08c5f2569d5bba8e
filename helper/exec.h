// The last steps of a launch: become the VM's user, lock the process down, exec the emulator.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "common/error.h"
#include "common/spawn.h"
#include "helper/jail.h"

namespace vl::helper {

/// Who the emulator runs as: the VM's uid, its gid (same number), and the one supplementary
/// group (kvm).
struct VmCredentials {
  uid_t uid = 0;
  gid_t gid = 0;
  gid_t vm_group = 0;
};

/// Checks the emulator before anything irreversible: a regular file owned by root, not
/// writable by group or others, and executable.
Result<void> check_emulator(const std::string& path);

/// Checks, as the VM's user (in a short-lived child that drops to `creds` exactly as the
/// emulator will), that each of `files` can be opened for reading: a kernel, initrd or
/// firmware file the emulator could not read is refused before anything is launched, naming
/// the file, rather than reported by QEMU after the exec.
Result<void> check_readable_by_vm(const std::vector<std::string>& files, const VmCredentials& creds);

/// Replaces the current (root) process with the emulator:
///  1. fds moved to their plan numbers, everything else closed;
///  2. a network namespace of its own, holding only loopback (net_namespace.h), and the
///     filesystem jail (jail.h) entered, then the capability bounding and ambient sets
///     cleared;
///  3. setgroups([vm_group]), setresgid(gid), setresuid(uid), then verified, with every
///     capability set (inheritable included) emptied;
///  4. umask 007 (for the VNC socket QEMU binds, vnc_socket.h), no_new_privs, the jail's
///     Landlock rules, and the baseline seccomp filter (see seccomp.cpp);
///  5. execve with the clean emulator environment.
/// Returns only on failure, possibly after the uid change (nothing can then be undone by this
/// process: `vmlaunch-helper cleanup` does it). A failure before the uid change returns in the
/// host's namespaces.
Error drop_privileges_and_exec(const ExecSpec& spec, const VmCredentials& creds, const JailSpec& jail);

/// Installs the baseline seccomp filter in the current process.
Result<void> install_seccomp_baseline();

}  // namespace vl::helper
