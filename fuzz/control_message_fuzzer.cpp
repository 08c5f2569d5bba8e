// Control-socket payloads. The D-Bus framing is sd-bus's; what vmlaunch itself decodes from a
// control-socket message is (a) the VM name every method takes (VmName::parse, also the
// grammar of everything derived from it) and (b) the launch plan JSON that the root helper
// reads from the daemon's GetLaunchPlan reply (common/plan.h): untrusted input in root's
// address space, then checked against the domain by the allowlist.
//
// Input: the first byte picks the payload, the rest is the payload.
#include <cstddef>
#include <cstdint>

#include "common/argv_policy.h"
#include "common/plan.h"
#include "common/vm_name.h"
#include "fuzz/fuzz_support.h"

namespace {

void fuzz_name(std::string_view text) {
  auto name = vl::VmName::parse(text);
  if (!name) {
    // Messages quote hostile names: printable, bounded (at most 64 bytes, each shown as at most
    // four characters), so they cannot forge or flood logs.
    FUZZ_CHECK(name.error().context.size() < 4 * 64 + 128);
    for (char c : name.error().context) FUZZ_CHECK(c >= 0x20 && c < 0x7f);
    return;
  }
  FUZZ_CHECK(name->str() == text);
  for (unsigned nic = 0; nic < vl::VmName::kMaxNics; ++nic) {
    std::string tap = name->tap_name(nic);
    FUZZ_CHECK(tap.size() <= 15);
    FUZZ_CHECK(tap.substr(0, tap.size() - 2) == text);  // the mapping is injective
  }
}

void fuzz_plan(std::string_view text) {
  auto plan = vl::plan_from_json(text);
  if (!plan) return;
  FUZZ_CHECK(!plan->argv.empty() && plan->argv.size() <= vl::kMaxPlanArgs);
  FUZZ_CHECK(plan->argv.front() == plan->emulator);
  auto back = vl::plan_from_json(vl::plan_to_json(*plan, false));
  FUZZ_CHECK(back.ok());
  FUZZ_CHECK(*back == *plan);
  (void)vl::check_plan_argv(*plan, vl::fuzz::sample_domain());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::string_view payload = vl::fuzz::as_text(data + 1, size - 1);
  if (data[0] & 1) fuzz_plan(payload);
  else fuzz_name(payload);
  return 0;
}
