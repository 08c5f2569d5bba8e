// A loop block device over a small file, detached at scope exit: the block-device disk path
// without touching any real disk of the host.
#pragma once

#include <sys/stat.h>

#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace vl::test {

class LoopDevice final {
 public:
  /// Creates `backing` (1 MiB) and attaches the first free loop device to it.
  explicit LoopDevice(const std::string& backing) {
    REQUIRE(std::system(("truncate -s 1M " + backing).c_str()) == 0);
    FILE* p = ::popen(("losetup --find --show " + backing).c_str(), "r");
    REQUIRE(p);
    char dev[64] = {};
    bool got = std::fgets(dev, sizeof dev, p) != nullptr;
    ::pclose(p);
    REQUIRE_MESSAGE(got, "losetup found no free loop device");
    path_ = dev;
    if (!path_.empty() && path_.back() == '\n') path_.pop_back();
    REQUIRE(::stat(path_.c_str(), &st_) == 0);
  }
  ~LoopDevice() {
    if (std::system(("losetup -d " + path_).c_str()) != 0) std::fprintf(stderr, "losetup -d %s failed\n", path_.c_str());
  }
  LoopDevice(const LoopDevice&) = delete;
  LoopDevice& operator=(const LoopDevice&) = delete;

  /// "/dev/loopN"
  const std::string& path() const { return path_; }
  dev_t rdev() const { return st_.st_rdev; }

 private:
  std::string path_;
  struct stat st_ {};
};

}  // namespace vl::test
