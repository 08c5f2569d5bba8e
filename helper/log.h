// Logging for the root helper: journald when it runs, stderr otherwise. Every line names the
// VM it concerns (journald field VMLAUNCH_VM), so that an operator can audit each privileged
// action per VM.
#pragma once

#include <string>

#include "common/error.h"

namespace vl::helper {

/// Sets the VM name attached to every following log line.
void log_set_vm(const std::string& vm);
void log_info(const std::string& message);
void log_warning(const std::string& message);
/// Logs an error; returns it unchanged so call sites can `return log_error(e);`.
Error log_error(Error error);

}  // namespace vl::helper
