// The daemon's record of what happened to each VM (start, stop, forced stop, guest power-off,
// crash, re-adoption), one line per event, naming the VM.
//
// When stderr is the journal (systemd sets JOURNAL_STREAM to its device and inode), each
// event is sent to the journal directly with the VM's name in the field VMLAUNCH_VM, so that
// `journalctl VMLAUNCH_VM=web1` shows one VM's history; otherwise it is a line on stderr.
#pragma once

#include <string>

namespace vl {

enum class LogLevel { kError = 3, kWarning = 4, kInfo = 6 };

/// Logs one lifecycle event of the VM `vm`: "vmlaunchd: VM 'web1': MESSAGE".
void log_vm_event(const std::string& vm, LogLevel level, const std::string& message);

/// True if fd 2 is the stream whose "DEVICE:INODE" `journal_stream` names (JOURNAL_STREAM).
bool stderr_is_journal(const char* journal_stream);

}  // namespace vl
