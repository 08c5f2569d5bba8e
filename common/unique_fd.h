// UniqueFd: the single owner of a file descriptor.
#pragma once

#include <unistd.h>

#include <utility>

namespace vl {

/// Owns one file descriptor and closes it on destruction. Move-only: ownership is handed over
/// explicitly with std::move or release(), never copied.
class UniqueFd final {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { reset(); }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
  }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  explicit operator bool() const { return valid(); }

  /// Gives up ownership without closing.
  [[nodiscard]] int release() { return std::exchange(fd_, -1); }
  /// Closes the current fd (if any) and takes ownership of fd.
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

}  // namespace vl
