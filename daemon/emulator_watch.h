// Following the allowed emulator binaries: a package upgrade replaces one (dpkg renames the
// new file over it), which changes its identity and with it every plan cache key of the
// domains that use it (plan_cache.h). The watch says so at once, and the daemon plans those
// domains again in the background instead of at their next start.
//
// The watch is on each emulator's directory, since a file replaced by rename is a new inode
// that a watch on the old one would never see; a symlink's target's directory is watched too
// (/usr/bin/kvm names qemu-system-x86_64). Events are triggers only: the plan cache key, read
// at planning time, decides what is stale.
#pragma once

#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "common/error.h"
#include "daemon/asio.h"

namespace vl {

class EmulatorWatch final {
 public:
  EmulatorWatch(boost::asio::io_context& io, std::vector<std::string> emulators, std::function<void()> changed);
  ~EmulatorWatch();
  EmulatorWatch(const EmulatorWatch&) = delete;
  EmulatorWatch& operator=(const EmulatorWatch&) = delete;

  /// Starts watching; an error leaves the daemon working without (plans are still keyed by
  /// the emulator's identity, so a change is noticed at the next start).
  Result<void> start();

 private:
  void read_events();

  boost::asio::io_context& io_;
  std::vector<std::string> emulators_;
  std::function<void()> changed_;
  /// The watched file names, as "WATCH-DESCRIPTOR/NAME".
  std::set<std::string> files_;
  std::unique_ptr<boost::asio::posix::stream_descriptor> stream_;
  alignas(8) char buffer_[8192];
};

}  // namespace vl
