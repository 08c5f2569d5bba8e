// Names of vmlaunchd's control interface (D-Bus protocol, peer-to-peer on the control socket).
//
// Object /org/vmlaunch1, interface org.vmlaunch.Manager1:
//   List()                          -> a(sssuusibi) name, state, reason, pid, uid, zone,
//                                                  vnc display (-1: none), autostart, start order
//   Status(s name)                  -> a{ss}       every field of one VM, as strings
//   Start(s name)                   -> ()          returns once the VM runs (or fails)
//   StartWithPassphrase(s name, h passphrase) -> () the same, with the passphrase of the VM's
//                                                  encrypted disks as a sealed memfd, which the
//                                                  daemon keeps unread for the launch
//   Stop(s name, u timeout, b force)-> ()          returns once it is stopped
//   Restart(s name, u timeout)      -> ()
//   Kill(s name, i signal)          -> ()
//   GetLaunchPlan(s name)           -> s           the plan as JSON; root peers only
//   TakePassphrase(s name)          -> h           root only: the passphrase given with the start
//                                                  under way, once (NotFound: none was given)
//   Launched(s name)                -> ()          root only: a kvm-vm@NAME unit exec'd the emulator;
//                                                  returns once the guest runs (or fails)
//   LaunchFailed(s name, s message) -> ()          root only: a kvm-vm@NAME unit's launch failed
//   OpenConsole(s name, b write)    -> u channel  a channel to the VM's serial console (write: the one
//                                                  writer; refused, naming the holder, while another
//                                                  writes); output arrives as ChannelData
//   OpenVnc(s name)                 -> u channel  a channel to a new connection to the VM's VNC server
//   ChannelWrite(u channel, ay data)-> ()          bytes for the VM; answered once written. At most
//                                                  256 KiB may wait unwritten per channel (Conflict)
//   CloseChannel(u channel)         -> ()
//   ReadSerialLog(s name)           -> ay          the VM's serial log, both parts, older first;
//                                                  Conflict while more than 2 replies wait unread
//   signal StateChanged(s name, s state, s reason)
//   signal ChannelData(u channel, ay data)         to the channel's connection only; up to 16 KiB
//   signal ChannelClosed(u channel, s reason)      to the channel's connection only; the channel is gone
// Channels belong to the connection that opened them (others get NotFound) and close when it
// goes; a connection may hold 16. Flow control (daemon/channel.h): while a connection has more
// than 64 messages unread, the channels' sources pause, so a slow client slows its VM's console
// or VNC stream instead of growing the daemon.
// Errors are D-Bus errors named org.vmlaunch.Error.<Code> (NotFound, Denied, Conflict, ...)
// whose message is the error's context.
//
// A client that relays an SSH session (`vmctl dial-stdio` run by sshd) binds its end of the
// control socket to the abstract name kSshRelayName + "PID ADDRESS PORT", the SSH client's
// address and port from SSH_CONNECTION: the daemon then logs every call of the connection
// with them. A note for the log, never a credential: any local process may bind such a name,
// and what a caller may do stays its uid's (daemon/authorization.h).
#pragma once

#include <string_view>

#include "common/error.h"

namespace vl {

inline constexpr char kControlPath[] = "/org/vmlaunch1";
inline constexpr char kControlInterface[] = "org.vmlaunch.Manager1";
inline constexpr std::string_view kSshRelayName = "vmlaunch-ssh-relay ";

/// "org.vmlaunch.Error.NotFound" and so on.
inline std::string control_error_name(ErrorCode code) {
  static constexpr const char* kNames[] = {"System", "Invalid", "Unsupported", "NotFound",
                                           "Conflict", "Denied", "Internal"};
  return std::string("org.vmlaunch.Error.") + kNames[static_cast<int>(code)];
}

}  // namespace vl
