// `vmctl start --ask-passphrase`: the passphrase of a VM's encrypted disks, read from the
// terminal without echo and handed to the daemon as a sealed memfd (D-Bus type 'h'), never as
// bytes of a message, an argument or an environment variable.
#pragma once

#include <string>

#include "common/error.h"
#include "common/unique_fd.h"

namespace vl::ctl {

/// Prompts "Passphrase for VM 'NAME': " on the controlling terminal (/dev/tty; without one, a
/// terminal on stdin) and reads one
/// line with echo off, the terminal restored afterwards (also on SIGINT, SIGTERM, SIGHUP and
/// SIGQUIT, which then end vmctl as they would have). An error without a terminal, or for an
/// empty line.
Result<std::string> read_passphrase_from_terminal(const std::string& vm);

/// A memfd holding `passphrase`, sealed against writing, growing, shrinking and further seals,
/// close-on-exec. The daemon refuses anything else.
Result<UniqueFd> sealed_passphrase(const std::string& passphrase);

/// Both: the descriptor for VM `vm`'s start, the passphrase wiped from memory.
Result<UniqueFd> ask_passphrase(const std::string& vm);

}  // namespace vl::ctl
