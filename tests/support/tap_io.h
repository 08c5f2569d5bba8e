// Sending as a VM does: a running emulator's tap fd taken into the test, and frames written
// into it behind the virtio-net header the tap expects.
#pragma once

#include <doctest/doctest.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "common/unique_fd.h"

namespace vl::test {

/// A running emulator's (first) tap fd, duplicated into this process (pidfd_getfd).
inline UniqueFd tap_of_emulator(pid_t pid) {
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  REQUIRE(pidfd.valid());
  for (const auto& e : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd")) {
    std::error_code ec;
    if (std::filesystem::read_symlink(e.path(), ec) != "/dev/net/tun") continue;
    int target = std::stoi(e.path().filename().string());
    UniqueFd fd(static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd.get(), target, 0)));
    REQUIRE(fd.valid());
    return fd;
  }
  FAIL("emulator " << pid << " holds no tap");
  return {};
}

/// Writes `frame` into a tap fd behind a zeroed virtio-net header of the size the tap expects.
inline void send_into(int tap, const std::vector<uint8_t>& frame) {
  ifreq ifr{};
  REQUIRE(::ioctl(tap, TUNGETIFF, &ifr) == 0);
  int header = 0;
  if (ifr.ifr_flags & IFF_VNET_HDR) REQUIRE(::ioctl(tap, TUNGETVNETHDRSZ, &header) == 0);
  std::vector<uint8_t> packet(static_cast<size_t>(header), 0);
  packet.insert(packet.end(), frame.begin(), frame.end());
  REQUIRE(::write(tap, packet.data(), packet.size()) == static_cast<ssize_t>(packet.size()));
}

}  // namespace vl::test
