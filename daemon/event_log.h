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

/// Logs one call on the control interface: who made it (`who`, e.g. "uid 1000 (alice)" or a
/// certificate's DN), how they connected and with which role (`how`, "local, admin"), the
/// method, its VM if it names one (as the caller sent it: quoted and escaped here), and
/// whether it was allowed: "vmlaunchd: uid 1000 (alice) [local, admin]: Start 'web1': allowed".
/// In the journal the fields VMLAUNCH_PEER and VMLAUNCH_VM (when `vm` is a valid name) carry the
/// caller and the VM.
void log_control_call(const std::string& who, const std::string& how, const std::string& method,
                      const std::string& vm, bool allowed);

/// True if fd 2 is the stream whose "DEVICE:INODE" `journal_stream` names (JOURNAL_STREAM).
bool stderr_is_journal(const char* journal_stream);

}  // namespace vl
