#include "helper/fault.h"

#include <cstdlib>
#include <string>

#include "common/vm_name.h"

namespace vl::helper {

#ifdef VMLAUNCH_FAULT_INJECTION
namespace {
std::string g_fail_at;
}

void fault_injection_init() {
  if (const char* v = std::getenv("VMLAUNCH_FAIL_AT")) g_fail_at = v;
}

Result<void> maybe_fail(std::string_view step) {
  if (!g_fail_at.empty() && g_fail_at == step)
    return Error::from_errno(EIO, "injected fault at step " + quote_for_message(std::string(step)));
  return {};
}
#else
void fault_injection_init() {}
Result<void> maybe_fail(std::string_view) { return {}; }
#endif

}  // namespace vl::helper
