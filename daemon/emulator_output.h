// QEMU's last words: the last lines of the emulator's own output, quoted in the reason of a
// start it refused or of a crash ("; qemu said: LINE | LINE"), since the real cause (an
// unreadable kernel, a bad -device) is only there.
//
// Two sources, one format. A standalone launch leaves the log relay's copy of the output in
// RUNTIME/vms/NAME/emulator.log (helper/runtime_dir.h, common/emulator_tail.h). Under systemd the output goes to the
// journal, from the unit kvm-vm@NAME.service: it is read with sd-journal, matched by the unit,
// the run's invocation ID (VmState::invocation), the emulator's pid and the stdout transport,
// so that neither an earlier run's lines nor the helper's own are quoted. Reading them needs
// group systemd-journal (architecture.md, "systemd mode"): journald files them in the VM
// uid's own journal file, readable by that group.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/vm_name.h"
#include "common/vm_state.h"
#include "daemon/asio.h"

namespace vl {

/// "; qemu said: " and the last two of `lines` that say something (QEMU's notices of pty
/// chardevs and empty lines are dropped), control characters escaped, each cut at 300 bytes,
/// joined with " | "; "" if none is left.
std::string format_emulator_said(const std::vector<std::string>& lines);

/// QEMU's reason for refusing a LUKS passphrase ("Invalid password, cannot unlock any
/// keyslot") in `said` (format_emulator_said's text) becomes the operator's words before it:
/// "; wrong passphrase for disk 'vda'" + said, the disk found by the secret its node names
/// (plan.h disk_secret_id) among `disk_targets` (the domain's <target dev>, in order). Any
/// other `said` is returned as it is.
std::string explain_emulator_said(const std::string& said, const std::vector<std::string>& disk_targets);

/// The lines of the log relay's copy of the emulator's output at `path` (its last 4 KiB; a
/// line cut by that is dropped), with the relay's "qemu: " prefixes and its end line
/// (common/emulator_tail.h) removed; none if it is missing.
std::vector<std::string> relay_output_lines(const std::string& path);

/// The emulator's lines in the journal (the last 16 at most) from the run of `state`
/// (state.invocation must be set). Errors: the journal cannot be opened, or no journal file is
/// readable (the daemon's user is not in group systemd-journal).
Result<std::vector<std::string>> journal_output_lines(const VmName& vm, const VmState& state);

/// Waits for the emulator's last lines from a run that just ended, which may be written a
/// moment after its exit: `done` gets format_emulator_said() of them.
/// - A run of a unit (state.invocation set): from the journal (journald files them late), as
///   soon as there are any, or none after `wait`, or at once if the journal cannot be read.
/// - A standalone run: from the relay's copy at `relay_copy` (the relay reads the emulator's
///   pipe on its own schedule), once the copy ends with the relay's end line, or as it is
///   after `wait`, or at once if there is no copy.
/// `done` runs once, on `io`, never within the constructor, and never once the EmulatorSaid is
/// destroyed.
class EmulatorSaid final {
 public:
  EmulatorSaid(boost::asio::io_context& io, VmName vm, VmState state, std::string relay_copy, std::chrono::milliseconds wait,
               std::function<void(std::string)> done);
  ~EmulatorSaid();
  EmulatorSaid(const EmulatorSaid&) = delete;
  EmulatorSaid& operator=(const EmulatorSaid&) = delete;

 private:
  struct Waiter;
  std::shared_ptr<Waiter> waiter_;
};

}  // namespace vl
