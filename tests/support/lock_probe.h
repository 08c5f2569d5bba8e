// Holding the helpers' locks from a test, and seeing who waits for them (helper/locks.h).
#pragma once

#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/file.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "common/config.h"
#include "common/unique_fd.h"

namespace vl::test {

/// Holds the helpers' shared-state lock (STATE/helper.lock) while it lives: a launch waits for
/// it before its first change (its claims), so the test decides when that launch may go on.
class HelperLock final {
 public:
  explicit HelperLock(const HostConfig& config) {
    std::filesystem::create_directories(config.state_dir);
    std::string path = config.state_dir + "/helper.lock";
    fd_.reset(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    REQUIRE(fd_);
    REQUIRE(::flock(fd_.get(), LOCK_EX) == 0);
  }
  void release() { fd_.reset(); }

 private:
  UniqueFd fd_;
};

/// True once `pid` waits for a lock (a "->" line of /proc/locks names the blocked waiter).
inline bool waiting_for_lock(pid_t pid) {
  std::ifstream locks("/proc/locks");
  for (std::string line; std::getline(locks, line);)
    if (line.find("->") != std::string::npos && line.find(" " + std::to_string(pid) + " ") != std::string::npos) return true;
  return false;
}

}  // namespace vl::test
