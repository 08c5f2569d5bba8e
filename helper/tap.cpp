#include "helper/tap.h"

#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <sys/ioctl.h>

#include "common/sys.h"
#include "common/vm_name.h"

namespace vl::helper {

Result<UniqueFd> create_tap(const std::string& name, uid_t owner, gid_t group) {
  if (name.empty() || name.size() >= IFNAMSIZ) return Error::invalid("tap name " + quote_for_message(name) + " too long");
  UniqueFd fd = VL_TRY(sys::check_fd(::open("/dev/net/tun", O_RDWR | O_CLOEXEC), "open /dev/net/tun"));
  ifreq ifr{};
  // PRIV: the name comes from a validated VmName (tap_name), checked against IFNAMSIZ above.
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_TUN_EXCL;
  name.copy(ifr.ifr_name, IFNAMSIZ - 1);
  VL_TRY(sys::check(::ioctl(fd.get(), TUNSETIFF, &ifr), "create tap " + quote_for_message(name) + " (TUNSETIFF)"));
  // PRIV: owner and group are the VM's own ids from the root-owned uid map.
  VL_TRY(sys::check(::ioctl(fd.get(), TUNSETOWNER, static_cast<unsigned long>(owner)),
                    "set owner of tap " + quote_for_message(name)));
  VL_TRY(sys::check(::ioctl(fd.get(), TUNSETGROUP, static_cast<unsigned long>(group)),
                    "set group of tap " + quote_for_message(name)));
  return fd;
}

}  // namespace vl::helper
