// Names of vmlaunchd's control interface (D-Bus protocol, peer-to-peer on the control socket).
//
// Object /org/vmlaunch1, interface org.vmlaunch.Manager1:
//   List()                          -> a(sssuusibi) name, state, reason, pid, uid, zone,
//                                                  vnc display (-1: none), autostart, start order
//   Status(s name)                  -> a{ss}       every field of one VM, as strings
//   Start(s name)                   -> ()          returns once the VM runs (or fails)
//   Stop(s name, u timeout, b force)-> ()          returns once it is stopped
//   Restart(s name, u timeout)      -> ()
//   Kill(s name, i signal)          -> ()
//   GetLaunchPlan(s name)           -> s           the plan as JSON; root peers only
//   Launched(s name)                -> ()          root only: a kvm-vm@NAME unit exec'd the emulator;
//                                                  returns once the guest runs (or fails)
//   LaunchFailed(s name, s message) -> ()          root only: a kvm-vm@NAME unit's launch failed
//   signal StateChanged(s name, s state, s reason)
// Errors are D-Bus errors named org.vmlaunch.Error.<Code> (NotFound, Denied, Conflict, ...)
// whose message is the error's context.
#pragma once

#include "common/error.h"

namespace vl {

inline constexpr char kControlPath[] = "/org/vmlaunch1";
inline constexpr char kControlInterface[] = "org.vmlaunch.Manager1";

/// "org.vmlaunch.Error.NotFound" and so on.
inline std::string control_error_name(ErrorCode code) {
  static constexpr const char* kNames[] = {"System", "Invalid", "Unsupported", "NotFound",
                                           "Conflict", "Denied", "Internal"};
  return std::string("org.vmlaunch.Error.") + kNames[static_cast<int>(code)];
}

}  // namespace vl
