// Ending every process of a VM's uid before cleanup releases anything.
//
// A VM's uid belongs to that VM alone, for good (uid_map.h), and only the VM runs as it: every
// process of the uid is part of the VM, whether the emulator, something it forked, or something
// that kept a copy of a tap or disk fd. While one of them lives, removing the tap filter lets it
// send forged frames, and a disk handed back is still written to. So cleanup kills them all
// first, and releases nothing unless none is left.
//
// A forked child drops to the uid and calls kill(-1, SIGKILL): the kernel then signals, in one
// pass under its task list lock, exactly the processes the uid may signal (those whose real or
// saved uid it is), and a process with SIGKILL pending cannot complete a fork, so nothing
// escapes by forking. The parent then scans /proc for processes of the uid and asks each one's
// pidfd whether its whole thread group has exited. /proc state letters would not do: a zombie
// leader may still have running threads, and a process whose parent never reaps it (PID 1 on
// some hosts never does) stays a zombie forever while holding nothing.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <string>

#include "common/error.h"

namespace vl::helper {

/// True if pid's real or saved uid is `uid`: the processes that uid may signal (kill(2)).
bool process_runs_as(pid_t pid, uid_t uid);

/// Kills every process of `uid` and waits until none is left alive (zombies count as gone).
/// `owner` names the uid in messages ("VM 'web1'"). Fails, naming the pids, if some still run
/// after `timeout`; refuses uid 0.
Result<void> kill_uid_processes(uid_t uid, const std::string& owner, std::chrono::milliseconds timeout);

}  // namespace vl::helper
