// The first serial port's output, recorded from the guest's first byte in a file the emulator
// cannot touch.
//
// QEMU writes everything the port sends to the chardev's logfile, whether anyone is attached
// to the console or not. That logfile is not a file: it is /dev/fdset/N, the write end of a
// pipe the helper passes (argv_policy.h allows no other logfile). A root relay (log_relay.h:
// detached, no capabilities, no_new_privs, seccomp) reads the pipe and appends to
// LOG/NAME.serial.log (root:daemon group 0640, LOG root:daemon group 0750), from which the
// daemon serves `vmctl console NAME --log` to the admin group. So the VM's uid neither owns
// the file nor decides how large it grows.
//
// Size: when the file reaches kSerialLogPart bytes, the relay copies it over NAME.serial.log.1
// and starts it again from empty; each launch first renames the previous run's file to .1. A
// VM's serial output costs at most 2 x kSerialLogPart bytes of disk, whatever the guest
// prints. The relay always drains the pipe: the emulator never blocks on it.
#pragma once

#include <sys/types.h>

#include "common/config.h"
#include "common/error.h"
#include "common/unique_fd.h"
#include "common/vm_name.h"

namespace vl::helper {

inline constexpr size_t kSerialLogPart = kSerialLogPartBytes;  ///< bytes per part of the serial log

/// The log's two files, open: the current part for reading and appending, the previous part
/// for rewriting.
struct SerialLogFiles {
  UniqueFd current;
  UniqueFd previous;
  bool rotated = false;  ///< the previous run's part was renamed to .1
};

/// Creates LOG if missing and checks it (a directory owned by root, writable by root only);
/// renames the previous run's NAME.serial.log to NAME.serial.log.1 and creates both files
/// afresh as root:daemon_gid 0640.
Result<SerialLogFiles> open_serial_log(const HostConfig& config, const VmName& vm, gid_t daemon_gid);
/// Undoes open_serial_log for a launch that failed before its emulator ran: the previous run's
/// part is current again (or the new empty files go, and LOG if it is empty). A log that
/// recorded a run stays: it is a record, kept after the VM.
Result<void> unopen_serial_log(const HostConfig& config, const VmName& vm, bool rotated);

/// Starts the relay that appends to `files`; returns the pipe's write end (close-on-exec),
/// for the emulator. Nothing to undo: the relay ends at EOF, once the emulator and the helper
/// are gone.
Result<UniqueFd> start_serial_log(SerialLogFiles files);

}  // namespace vl::helper
