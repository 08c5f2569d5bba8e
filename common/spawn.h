// Starting programs with an exact fd layout and a clean environment.
//
// The child of fork() only calls async-signal-safe functions on memory prepared by the parent,
// so spawn() is safe from a multithreaded process too.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "common/error.h"
#include "common/unique_fd.h"

namespace vl {

/// One fd to hand to the new program: `source` (owned by the caller) appears as `target`.
struct FdMapping {
  int source = -1;
  int target = -1;
};

/// What to run: an absolute path, argv (argv[0] included), the complete environment as
/// "NAME=VALUE" strings, and the fds it gets besides 0-2. Every other fd is closed.
struct ExecSpec {
  std::string path;
  std::vector<std::string> argv;
  std::vector<std::string> env;
  std::vector<FdMapping> fds;
  /// If not 0, the child gets this signal when the spawning thread exits (PR_SET_PDEATHSIG),
  /// and does not start at all if its parent is already gone.
  int parent_death_signal = 0;
};

/// Checks that targets are distinct and sources valid; call before fork(). Targets 0-2
/// replace stdio.
Result<void> validate_fd_mappings(const std::vector<FdMapping>& fds);

/// In the current process: moves each source fd to its target number (without CLOEXEC) and
/// closes every other fd above 2. Async-signal-safe. On failure returns -errno.
int place_fds(const FdMapping* fds, size_t count);

/// Restores every signal to its default disposition and unblocks all. Async-signal-safe.
void reset_signals();

/// Replaces the current process: places fds, then execve. Returns only on failure.
Error exec_in_place(const ExecSpec& spec);

/// fork + exec. The child starts a new session (setsid) so it outlives the caller's terminal
/// and process group. Returns the pid once execve has succeeded; if it fails, the child's errno
/// comes back through a close-on-exec pipe and the child is reaped.
Result<pid_t> spawn(const ExecSpec& spec);

/// Waits for pid and returns its wait status.
Result<int> wait_for(pid_t pid);

}  // namespace vl
