// A UEFI VM's variable store (NVRAM): HostConfig::nvram_path, created by the helper from the
// firmware's template, owned by the VM's uid with mode 0600 like a disk, kept across starts,
// removed only when the operator says so (`vmlaunch-helper remove-nvram NAME`).
//
// Root reads the template and the code image only if they are firmware root installed: files
// under QEMU's firmware directories that only root can change. A template from anywhere else
// would let the VM read a file through root (the copy is the VM's). The store's directory is
// created root 0711 (the VM's uid opens the store by path, but cannot list or replace entries)
// and is refused if anyone besides root could change it; the store is opened O_NOFOLLOW below
// that directory's fd and must be a regular file with one link.
#pragma once

#include <sys/types.h>

#include "common/config.h"
#include "common/domain.h"
#include "common/error.h"
#include "common/vm_name.h"

namespace vl::helper {

/// Makes the store ready for `uid`: created from uefi.vars_template if missing (written to a
/// temporary name, then linked into place, so it never exists half-written), else chowned to
/// uid:uid 0600. Returns true if it created the store (the caller's undo removes it).
Result<bool> prepare_nvram(const HostConfig& config, const VmName& vm, const Uefi& uefi, uid_t uid);

/// Removes the store of `vm`. Already gone is success.
Result<void> remove_nvram(const HostConfig& config, const VmName& vm);

}  // namespace vl::helper
