// The one adapter from the "-1 and errno" convention of system calls to Result.
#pragma once

#include <string>

#include "common/error.h"
#include "common/unique_fd.h"

namespace vl::sys {

/// rc < 0 becomes Error::from_errno(context); otherwise rc itself.
inline Result<int> check(int rc, std::string_view context) {
  if (rc < 0) return Error::from_errno(std::string(context));
  return rc;
}

/// Like check() for calls that return a new fd: the fd comes back owned.
inline Result<UniqueFd> check_fd(int fd, std::string_view context) {
  if (fd < 0) return Error::from_errno(std::string(context));
  return UniqueFd(fd);
}

/// Retries a call while it fails with EINTR.
template <class F>
auto retry_eintr(F&& f) {
  decltype(f()) rc;
  do rc = f();
  while (rc < 0 && errno == EINTR);
  return rc;
}

/// Reads the whole file at path (bounded by max_bytes) into a string.
Result<std::string> read_file(const std::string& path, size_t max_bytes);
/// Reads everything from fd until EOF (bounded by max_bytes).
Result<std::string> read_all(int fd, size_t max_bytes);
/// Writes all of data to fd, retrying short writes.
Result<void> write_all(int fd, std::string_view data);
/// Writes data to path atomically: a temporary file in the same directory, fsync, rename.
Result<void> write_file_atomic(const std::string& path, std::string_view data, unsigned mode);

}  // namespace vl::sys
