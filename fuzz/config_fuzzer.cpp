// Host configuration parsing (common/config.h): vmlaunch.toml, which says which bridges are
// zones, which uids VMs get and which emulators root may run.
#include <cstddef>
#include <cstdint>

#include "common/config.h"
#include "fuzz/fuzz_support.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto config = vl::parse_config(vl::fuzz::as_text(data, size), "fuzz.toml");
  if (config) {
    // The uid range never wraps around: uids past 2^32 would alias root's.
    FUZZ_CHECK(config->uids.count == 0 || config->uids.first + (config->uids.count - 1) >= config->uids.first);
    for (const auto& zone : config->zones) {
      FUZZ_CHECK(vl::is_valid_ifname(zone.bridge));
      FUZZ_CHECK(config->zone_named(zone.name) != nullptr);
      FUZZ_CHECK(config->zone_of_bridge(zone.bridge) != nullptr);
    }
  }
  return 0;
}
