// What root is willing to execute: the allowlist a launch plan's QEMU command line must pass.
//
// The plan comes from the unprivileged daemon (and from its cache, which that uid can write),
// so its argv is untrusted. The emulator runs as the VM's uid with no capabilities, which
// bounds what it can reach on the host's filesystem; it does not bound what it can reach on
// the network (sockets, slirp), which code it loads (plugins, migration streams), which
// images it opens (backing files) or whether it keeps QEMU's own sandbox. So the helper
// decides, from the root-owned domain XML alone, which options may appear and with which
// values; everything not listed is refused. The daemon runs the same check when it plans, so
// an operator sees a refusal at plan time rather than at start.
#pragma once

#include <string>
#include <vector>

#include "common/domain.h"
#include "common/error.h"
#include "common/plan.h"

namespace vl {

/// Checks every option of plan.argv (argv[0] excluded) against the allowlist for `domain`:
///  - only known options, each with values of the expected shape;
///  - -netdev only as the tap fds of the plan's own slots; chardevs only pty, null, the
///    plan's monitor and agent fds and the serial console on the plan's serial fd, logged to
///    /dev/fdset/N where the one -add-fd puts the plan's serial log pipe (fd=N,set=N);
///    exactly one QMP monitor;
///  - -blockdev only for the domain's disks (exact paths, declared format, no backing file:
///    qcow2 nodes must say "backing": null) and read-only root-owned firmware; a disk with
///    <encryption> only through QEMU's LUKS layer (driver luks on raw, "encrypt" on qcow2)
///    with its own secret, and no other node with a secret;
///  - -object secret only as disk_secret_object (plan.h), one per encrypted disk, reading the
///    plan's disk-secret fd: no inline data, no other file, no keyid;
///  - -vnc only on the VM's own Unix socket (Vnc::socket: the emulator has a network
///    namespace of its own, so never TCP), with the password the domain's <graphics> says, and
///    TLS exactly when [vnc] tls is on: tls-creds= naming the one tls-creds-x509 object, whose
///    dir is the VM's own credentials directory (Vnc::tls_dir), endpoint server;
///  - -kernel/-initrd/-bios/-dtb and firmware images only files the domain's <os> names or
///    QEMU's firmware directories hold, and only if root alone can change them;
///  - no -sandbox (the helper appends its own, see emulator_sandbox_args).
/// The first violation is the error, naming the option and why.
Result<void> check_plan_argv(const Plan& plan, const Domain& domain);

/// The -sandbox the helper appends to every command line: QEMU's own seccomp filter with
/// every optional denial on.
std::vector<std::string> emulator_sandbox_args();

/// Checks that path names a regular file that only root can change: the file and every
/// directory above it (and above every symlink target on the way) owned by root and not
/// writable by group or others.
Result<void> check_root_owned_file(const std::string& path);

}  // namespace vl
