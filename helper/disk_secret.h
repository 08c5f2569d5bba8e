// The passphrase of a VM's encrypted disks (<encryption format='luks'>), and how it reaches QEMU.
//
// It comes from the operator at start (`vmctl start --ask-passphrase`: a sealed memfd that the
// daemon hands on unread) or from the VM's key file KEYS/NAME.key, which root alone may read.
// The helper copies it into a sealed memfd of its own, which the emulator gets at the plan's
// disk-secret fd and reads through /proc/self/fd/N (plan.h disk_secret_object). So it is never
// in an argv, an environment or a file anyone but root can open, and QEMU holds the only key:
// no decrypted volume exists on the host, and nothing is left open when the emulator exits.
#pragma once

#include <string>

#include "common/config.h"
#include "common/domain.h"
#include "common/unique_fd.h"
#include "common/vm_name.h"

namespace vl::helper {

/// The longest passphrase accepted, in bytes.
inline constexpr size_t kMaxPassphraseBytes = 4096;

/// Reads KEYS/NAME.key: a regular file with one link, not a symlink, owned by root:root and
/// readable by no one else (mode 0600 or 0400), in a directory only root can change. Its
/// content is the passphrase, without one trailing newline. kNotFound if there is none;
/// kDenied, naming the file, its owner, mode and the fix, if a check fails.
Result<std::string> read_key_file(const HostConfig& config, const VmName& vm);

/// Reads a passphrase an operator passed as `fd`: a memfd sealed against writing, growing and
/// shrinking (what `vmctl start --ask-passphrase` sends), read from offset 0 without blocking.
Result<std::string> read_passphrase_fd(int fd);

/// A sealed memfd (write, grow, shrink and further seals all denied) holding `passphrase`,
/// close-on-exec: the plan's disk-secret fd.
Result<UniqueFd> passphrase_memfd(std::string_view passphrase);

/// The disk-secret fd for `domain`'s encrypted disks: from `operator_fd` if valid, else from
/// the key file; if neither exists, kNotFound naming the first encrypted disk and both ways to
/// give its passphrase.
Result<UniqueFd> disk_secret_for(const HostConfig& config, const Domain& domain, int operator_fd);

}  // namespace vl::helper
