// Turning libvirt's dry-run QEMU command line into an exec-ready launch plan.
//
// libvirt's domxml-to-native output is "not trivially usable outside of libvirt": it carries
// the caller's environment, a master-key secret file that never gets written, a monitor socket
// path inside the conversion root, tap fd numbers of a process that never existed, and VNC on
// TCP (the emulator's own network namespace leaves it a Unix socket); and the daemon gives
// libvirt its disks without <encryption> (converter.h), so the LUKS layer and its secret are
// added here. The rewrite works on parsed structure (options, keyval lists with ',,'
// escapes, JSON objects), never on substrings, and refuses what it cannot make safe.
#pragma once

#include <string>
#include <vector>

#include "common/domain.h"
#include "common/plan.h"
#include "common/qemu_options.h"

namespace vl {

/// The fd numbers the plan uses: the monitor first, then one tap per NIC in XML order.
inline constexpr int kMonitorFd = 3;
inline constexpr int kFirstTapFd = 4;
/// The guest agent channel's listening socket: after the last possible tap.
inline constexpr int kAgentFd = kFirstTapFd + static_cast<int>(VmName::kMaxNics);
/// The first serial port's listening socket, and the pipe its output is logged through (also
/// the number of the fd set, /dev/fdset/N, that names the pipe to the chardev's logfile).
inline constexpr int kSerialFd = kAgentFd + 1;
inline constexpr int kSerialLogFd = kAgentFd + 2;

/// The sealed memfd with the encrypted disks' passphrase (plan.h disk_secret_object).
inline constexpr int kDiskSecretFd = kAgentFd + 3;

/// The rewrite's own version: part of the plan cache key, bump it when the output changes.
inline constexpr int kRewriteVersion = 7;

/// Rewrites the words of a native command line (environment assignments included) into a
/// plan for `domain`. `conversion_root` is the embed root the words came from: no word of the
/// result may mention it. VNC listens on the domain's Vnc::socket.
Result<Plan> rewrite_native_argv(const std::vector<std::string>& words, const Domain& domain,
                                 const std::string& conversion_root);

}  // namespace vl
