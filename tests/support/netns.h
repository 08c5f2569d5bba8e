// A private network namespace for the current thread, left again at scope exit.
//
// The namespace is anonymous: nothing names it on the host, and the kernel deletes it (and
// every interface in it) as soon as no process or fd refers to it any more.
#pragma once

#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#include <cstdlib>
#include <string>

#include "common/unique_fd.h"

namespace vl::test {

class ScopedNetns final {
 public:
  ScopedNetns() : original_(::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC)) {
    if (!original_ || ::unshare(CLONE_NEWNET) != 0) std::abort();
    struct stat st {};
    ::stat("/proc/self/ns/net", &st);
    inode_ = st.st_ino;
    set_up("lo");
  }
  ~ScopedNetns() {
    if (::setns(original_.get(), CLONE_NEWNET) != 0) std::abort();
  }
  ScopedNetns(const ScopedNetns&) = delete;
  ScopedNetns& operator=(const ScopedNetns&) = delete;

  /// The namespace's inode, to check later that nothing lives in it any more.
  ino_t inode() const { return inode_; }

  static void set_up(const std::string& ifname) {
    UniqueFd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    ifreq ifr{};
    ifname.copy(ifr.ifr_name, IFNAMSIZ - 1);
    if (::ioctl(s.get(), SIOCGIFFLAGS, &ifr) == 0) {
      ifr.ifr_flags |= IFF_UP;
      ::ioctl(s.get(), SIOCSIFFLAGS, &ifr);
    }
  }

 private:
  UniqueFd original_;
  ino_t inode_ = 0;
};

/// True if any process on the host is in the network namespace with this inode.
inline bool netns_in_use(ino_t inode) {
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc", ec)) {
    struct stat st {};
    if (::stat((e.path() / "ns/net").c_str(), &st) == 0 && st.st_ino == inode) return true;
  }
  return false;
}

}  // namespace vl::test
