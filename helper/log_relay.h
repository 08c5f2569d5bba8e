// The emulator's stdout and stderr, kept away from the launch log's file.
//
// A standalone launch logs to STATE/logs/NAME.log, which the broker hands to `launch` as fds 1
// and 2. The helper execs the emulator in place, so without this the emulator (as the VM's
// uid) would hold the log file itself: O_APPEND does not stop ftruncate(), and every line it
// writes could pass for the helper's. Instead the emulator gets a pipe whose reader is a small
// root process, the relay, that appends the emulator's output to the log line by line, each
// line prefixed "qemu: ", control characters escaped, at most kRelayRate bytes per second
// (kRelayBurst at once; lines beyond are dropped and counted) and kRelayMaxBytes per launch
// (then one marker line, and the rest is read and discarded so the emulator never blocks).
//
// It appends the same lines to RUNTIME/vms/NAME/emulator.log (root:daemon group 0640), the
// copy from which the daemon quotes qemu's last lines when the VM fails, and at EOF ends the
// copy with kEmulatorTailEnd (common/emulator_tail.h): the emulator's exit does not say that
// the relay has copied its last lines yet, this line does.
//
// The relay holds nothing but the pipe, the log and that copy; it is not the emulator's child (a double
// fork reparents it); it ends at EOF, once every writer (the emulator and whatever inherited
// its stdout or stderr) is gone. It stays uid 0 but without capabilities, under no_new_privs
// and a seccomp allowlist of read, write, close and exit: the VM's uid can neither signal nor
// trace it (both need the same uid), and a relay subverted through its input could do no more
// than write to the log it already has. Dropping to another user instead would give that
// user's other processes the means to kill or trace it, and so to write the log.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/spawn.h"
#include "common/unique_fd.h"
#include "common/vm_name.h"

namespace vl::helper {

inline constexpr size_t kRelayMaxBytes = 1 << 20;  ///< emulator output per launch, in bytes
inline constexpr size_t kRelayRate = 8 << 10;      ///< sustained bytes per second
inline constexpr size_t kRelayBurst = 64 << 10;    ///< bytes at once

/// What the emulator gets as its stdout and stderr.
struct EmulatorOutput {
  UniqueFd pipe;           ///< the relay's pipe (close-on-exec); invalid: pass fds 1 and 2 through
  int helper_log_fd = -1;  ///< where the helper's own lines now go (close-on-exec, kept by log.cpp)

  /// The ExecSpec fds that put this in place: the pipe as 1 and 2, and the helper's log fd
  /// under its own number so that it survives fd placement (exec.cpp closes it at execve).
  /// Empty when passing through.
  std::vector<FdMapping> mappings() const;
};

/// A root relay process: what it is called, the fds it keeps (everything else is closed),
/// the system calls it needs beyond read, write, close and exit, and its loop, which runs
/// after the lockdown and must allocate nothing (the filter leaves malloc no brk or mmap).
struct RelaySpec {
  const char* name;
  std::vector<FdMapping> fds;
  std::vector<int> syscalls;
  std::function<void()> run;
};

/// Starts a relay as described at the top of this file (detached by a double fork, in its own
/// session, no capabilities, no_new_privs, seccomp) and returns once it is locked down.
/// `what` names it in errors ("the log relay for the emulator's output").
Result<void> start_relay(const RelaySpec& spec, const std::string& what);

/// Starts the relay for `vm` if fd 2 is a regular file (the log of a standalone launch), and
/// has it append the same lines to `tail` too, if valid (runtime_dir.h create_emulator_tail),
/// moves the helper's own logging to a private close-on-exec copy of it. If fd 2 is anything
/// else (a pipe or a socket: journald under systemd, a terminal) it returns an EmulatorOutput
/// that passes fds 1 and 2 through: nothing can truncate those, and journald tells the
/// emulator's lines from the helper's by their transport. Nothing to undo on failure: a relay
/// whose launch fails sees EOF when the helper exits and exits too.
Result<EmulatorOutput> start_log_relay(const VmName& vm, int tail = -1);

}  // namespace vl::helper
