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

/// From now on writes the standard-error form of every line to a close-on-exec duplicate of
/// fd 2 numbered `min_fd` or above, kept open for the rest of the process; returns its number.
/// fd 2 can then be handed to someone else (the emulator's output relay, log_relay.h) while
/// the helper's own lines still reach the same file, up to the emulator's execve.
Result<int> log_keep_private_stderr(int min_fd);

}  // namespace vl::helper
