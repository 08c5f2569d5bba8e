// The log relay's copy of the emulator's output, RUNTIME/vms/NAME/emulator.log: appended to by
// the root relay (helper/log_relay.h), quoted by the daemon when a start fails or a VM crashes
// (daemon/emulator_output.h).
#pragma once

#include <string_view>

namespace vl {

/// The last line of the copy, which the relay appends once the emulator's output has ended (EOF
/// on its pipe) and every line before it is written: until it is there, the daemon may not have
/// the emulator's last words yet. The emulator cannot write it (its lines begin "qemu: ").
inline constexpr std::string_view kEmulatorTailEnd = "vmlaunch-helper: end of the emulator's output\n";

}  // namespace vl
