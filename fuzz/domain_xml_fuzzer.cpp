// Domain XML extraction (common/domain.h): the root-owned definition every privileged decision
// starts from. Any document must parse to a Domain or to an error, never crash or hang.
#include <cstddef>
#include <cstdint>

#include "fuzz/fuzz_support.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto domain = vl::parse_domain(vl::fuzz::as_text(data, size), "fuzz.xml");
  if (domain) {
    // What the rest of vmlaunch relies on once a domain parsed.
    FUZZ_CHECK(vl::VmName::parse(domain->name.str()).ok());
    FUZZ_CHECK(domain->nics.size() <= vl::VmName::kMaxNics);
    for (const auto& nic : domain->nics) FUZZ_CHECK(vl::MacAddress::parse(nic.mac.str()).ok());
  }
  return 0;
}
