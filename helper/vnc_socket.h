// The directory in which a VM's emulator binds its VNC socket.
//
// The emulator runs in a network namespace of its own (net_namespace.h), where TCP reaches
// nobody, so VNC is a Unix socket: RUNTIME/vnc/NAME/vnc.sock (HostConfig::vnc_socket_path),
// the only -vnc address the argv policy accepts. QEMU 7.2 cannot take a passed listening fd
// for VNC (as it does for the monitor), so it binds the socket itself, as the VM's uid: the
// directory is the VM uid's, with the daemon's group and the setgid bit (02750), so that the
// socket gets the daemon's group, and the emulator's umask (007, set by exec.cpp) makes it
// group-writable. Root and the daemon's group can connect; no other uid can enter the
// directory. RUNTIME/vnc is root 0711, like RUNTIME/vnc-tls: vms/NAME would not do, the VM's
// uid cannot enter it.
//
// The directory being the emulator's, the daemon opens the socket without following symlinks
// and checks it is a socket of the VM's uid (daemon/vnc_channel.h), and removal here never
// follows anything the emulator may have put in it.
#pragma once

#include <sys/types.h>

#include "common/config.h"
#include "common/error.h"
#include "common/vm_name.h"

namespace vl::helper {

/// Creates RUNTIME/vnc/NAME (uid:daemon_gid 02750), after removing one a failed cleanup left.
Result<void> create_vnc_socket_dir(const HostConfig& config, const VmName& vm, uid_t uid, gid_t daemon_gid);
/// Removes RUNTIME/vnc/NAME and whatever the emulator left in it. Nothing there is success.
Result<void> remove_vnc_socket_dir(const HostConfig& config, const VmName& vm);

}  // namespace vl::helper
