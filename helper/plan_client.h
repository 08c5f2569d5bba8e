// The launch plan, fetched from vmlaunchd (GetLaunchPlan) when `launch` runs without --plan.
#pragma once

#include <string>

#include "common/config.h"

namespace vl::helper {

/// Asks the daemon on the control socket for the plan of `vm`. The reply is untrusted input
/// and is validated by the launch like any plan.
Result<std::string> fetch_plan_from_daemon(const HostConfig& config, const VmName& vm);

}  // namespace vl::helper
