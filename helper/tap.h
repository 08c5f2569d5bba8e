// Tap devices for VM NICs.
#pragma once

#include <sys/types.h>

#include <string>

#include "common/error.h"
#include "common/unique_fd.h"

namespace vl::helper {

/// Creates the tap `name` (down, not persistent, vnet header on) owned by uid:gid and returns
/// its queue fd. Because it is not persistent, the device disappears when the last fd closes:
/// when qemu exits, or when a failed launch drops the fd. Fails with EBUSY if the name exists
/// (IFF_TUN_EXCL), so the helper never takes over an interface it did not create.
Result<UniqueFd> create_tap(const std::string& name, uid_t owner, gid_t group);

}  // namespace vl::helper
