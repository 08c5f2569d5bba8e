// On-disk cache of libvirt conversions, keyed by everything the conversion depends on.
#pragma once

#include <optional>
#include <string>

#include "common/error.h"

namespace vl {

/// The cache key: SHA-256 (hex) over the domain XML, the emulator's identity (path, inode,
/// size, mtime), libvirt's identity and the rewrite version. Any change to one of them is a
/// different key, so a stale entry is never read; old entries are simply unused.
Result<std::string> plan_cache_key(std::string_view xml, const std::string& emulator,
                                   const std::string& libvirt_id);

/// A directory of conversions: one file per key holding libvirt's native command line.
class PlanCache {
 public:
  explicit PlanCache(std::string dir) : dir_(std::move(dir)) {}

  /// The cached command line for key; nullopt if there is none (ENOENT). Any other failure
  /// to read the entry (EACCES, EISDIR, EMFILE, EIO...) is an error naming the entry: treating
  /// it as a miss would blame whatever the conversion trips over next.
  Result<std::optional<std::string>> find(const std::string& key) const;
  /// Stores a command line atomically (creating the directory, mode 0700).
  Result<void> store(const std::string& key, std::string_view native) const;

 private:
  std::string dir_;
};

}  // namespace vl
