// Layer-2 anti-spoofing with nftables (bridge family), through libnftables' JSON input.
//
// Layout, in the table `bridge vmlaunch` that vmlaunch owns:
//   map taps { type ifname : verdict }            tap name -> jump vm-NAME
//   chain prerouting { hook prerouting; iifname vmap @taps }
//   chain input      { hook input; ether daddr 01:80:c2:00:00:00-01:80:c2:00:00:0f iifname vmap @taps }
//   chain vm-NAME    { per-NIC drop rules with counters }
// Frames are filtered where they enter the bridge, before it learns their source MAC, and each
// passes the VM's chain once: a drop counter counts frames (nft_filter.cpp says which frames take
// which hook). The port itself does not learn either (bridge_port.h).
// Rules match the tap by name, so they are in place before the tap exists or joins the bridge:
// there is no moment at which a VM can send a frame unfiltered. Adding or removing a VM is one
// atomic nftables transaction.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/domain.h"
#include "common/error.h"

namespace vl::helper {

inline constexpr char kNftTable[] = "vmlaunch";

/// What one NIC may send: its tap, its MAC and (optionally) its IP addresses.
struct NicFilter {
  std::string tap;
  MacAddress mac;
  /// The XML's <ip> addresses. Empty: source addresses are not filtered (the MAC, VLAN,
  /// router-advertisement and DHCP-server rules still apply). Otherwise the VM may send IPv4
  /// only from its IPv4 addresses and IPv6 only from its IPv6 addresses and the EUI-64
  /// link-local address of `mac`: a family with no declared address is limited to that.
  std::vector<IpAddress> ips;
};

/// A drop rule's counter, for status output.
struct DropCounter {
  std::string tap;
  /// "vlan", "mac", "arp-mac", "ra", "redirect", "dhcp-server", "dhcp6-server", "ip6-frag"
  /// (every tap);
  /// "ip", "arp-ip", "arp-probe", "ip6", "nd-target" (taps with addresses). The man page
  /// vmlaunch-helper(8) says what each drops.
  std::string what;
  uint64_t packets = 0;
};

/// Installs (or replaces) the chain of `vm` and maps its taps to it, in one transaction.
Result<void> install_vm_filter(const std::string& vm, const std::vector<NicFilter>& nics);
/// Removes the VM's map elements and chain. Nothing to remove counts as success.
Result<void> remove_vm_filter(const std::string& vm);
/// The drop counters of the VM's chain (empty if it has none).
Result<std::vector<DropCounter>> read_vm_counters(const std::string& vm);
/// True if the VM has a chain.
Result<bool> vm_filter_exists(const std::string& vm);

}  // namespace vl::helper
