// Fault injection for tests: only in builds configured with -Dfault_injection=true.
//
// VMLAUNCH_FAIL_AT=STEP makes the launch step named STEP fail as if its system call had
// returned EIO, so tests can check that every earlier step is undone. Release builds compile
// this to nothing and never read the variable.
#pragma once

#include <string_view>

#include "common/error.h"

namespace vl::helper {

/// Reads VMLAUNCH_FAIL_AT (call before the environment is cleared).
void fault_injection_init();
/// An injected error if `step` is the one to fail, success otherwise.
Result<void> maybe_fail(std::string_view step);

}  // namespace vl::helper
