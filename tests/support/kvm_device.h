// /dev/kvm as Debian's udev rules leave it (root:kvm 0660) for the life of one test, restored
// afterwards. Hosts without udev keep the kernel's root:root 0600, with which only root can use
// KVM; the product's normal case is the Debian one.
#pragma once

#include <grp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <doctest/doctest.h>

namespace vl::test {

class KvmDevice final {
 public:
  static constexpr const char* kPath = "/dev/kvm";

  KvmDevice() {
    REQUIRE_MESSAGE(::stat(kPath, &saved_) == 0, "this test needs /dev/kvm");
    const group* kvm = ::getgrnam("kvm");
    REQUIRE_MESSAGE(kvm, "this test needs the group kvm (packaging/install-deps creates it)");
    REQUIRE(::chown(kPath, 0, kvm->gr_gid) == 0);
    REQUIRE(::chmod(kPath, 0660) == 0);
  }
  ~KvmDevice() {
    (void)::chown(kPath, saved_.st_uid, saved_.st_gid);
    (void)::chmod(kPath, saved_.st_mode & 07777);
  }
  KvmDevice(const KvmDevice&) = delete;
  KvmDevice& operator=(const KvmDevice&) = delete;

 private:
  struct stat saved_ {};
};

}  // namespace vl::test
