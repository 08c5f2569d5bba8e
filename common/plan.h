// The launch plan: the exact program, argv and fd layout that starts one VM.
//
// The daemon computes it (daemon/planner.h); the helper receives it as untrusted input,
// re-validates it against the root-owned domain XML, and execs it as the VM's uid. Whatever
// the argv says, the process can only reach what that uid can reach.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "common/error.h"

namespace vl {

/// One fd the emulator expects at a fixed number.
struct FdSlot {
  /// kAgent: the guest agent channel's listening socket; kSerial: the first serial port's
  /// listening socket (the console the daemon relays); kSerialLog: the write end of the pipe
  /// through which root's relay logs that port's output (helper/serial_log.h); kDiskSecret:
  /// the sealed memfd holding the passphrase of the domain's encrypted disks, which QEMU's
  /// secret objects read as /proc/self/fd/N (disk_secret_object).
  enum class Kind { kMonitor, kTap, kAgent, kSerial, kSerialLog, kDiskSecret };
  Kind kind = Kind::kMonitor;
  int fd = -1;
  int nic = -1;  ///< for kTap: index of the <interface> in the domain XML
  friend bool operator==(const FdSlot&, const FdSlot&) = default;
};

/// What the supervisor must do over QMP before `cont`, because libvirt would have.
struct VncSetup {
  std::string socket;  ///< where QEMU listens (HostConfig::vnc_socket_path)
  bool has_password = false;  ///< password comes from the XML at runtime, never in the plan
  friend bool operator==(const VncSetup&, const VncSetup&) = default;
};

struct Plan {
  std::string vm;
  std::string emulator;            ///< absolute path; argv[0] is the same
  std::vector<std::string> argv;
  std::vector<FdSlot> fds;
  std::optional<VncSetup> vnc;
  int serial_ptys = 0;
  std::string cache_key;           ///< identifies the conversion the argv came from
  friend bool operator==(const Plan&, const Plan&) = default;
};

/// Hard caps on an untrusted plan.
inline constexpr size_t kMaxPlanBytes = 256 * 1024;
inline constexpr size_t kMaxPlanArgs = 1024;
inline constexpr int kFirstPlanFd = 3;

/// Serializes a plan as one JSON object (stable key order).
std::string plan_to_json(const Plan& plan, bool pretty);
/// Parses and structurally checks a plan: types, sizes, fd numbers and NIC indices in range,
/// no duplicate fds. Does not check it against a domain; the helper does that.
Result<Plan> plan_from_json(std::string_view text);

/// The complete environment the emulator runs with. Never taken from a plan or from libvirt's
/// output (which copies its caller's, LD_PRELOAD included).
std::vector<std::string> emulator_environment();

/// The id of the VNC server's TLS credentials object, which -vnc names with tls-creds=.
inline constexpr char kVncTlsCredsId[] = "vnc-tls-creds0";

/// The JSON value of the `-object` that gives a VNC server with TLS its credentials: QEMU's
/// tls-creds-x509, endpoint server, reading `dir` (the VM's HostConfig::vnc_tls_dir), asking
/// clients for a certificate if `verify_client`. The only such object a plan may have
/// (argv_policy.h); libvirt writes the same for vnc_tls = 1.
std::string vnc_tls_object(const std::string& dir, bool verify_client);

/// The id of the secret object that unlocks disk `disk` (its index in Domain::disks).
std::string disk_secret_id(size_t disk);

/// The JSON value of the `-object` that gives QEMU the passphrase of encrypted disk `disk`:
/// a secret read, as raw bytes, from the plan's disk-secret fd `fd` through /proc/self/fd/N
/// (QEMU 7.2 reads a secret's file by path only). Never data= (the passphrase would be in the
/// argv) and never keyid= (it would name another secret to decrypt this one with). The only
/// secret objects a plan may have, one per encrypted disk (argv_policy.h).
std::string disk_secret_object(size_t disk, int fd);

/// Name of an fd slot kind on the wire ("monitor", "tap", "agent").
const char* fd_kind_name(FdSlot::Kind kind);

}  // namespace vl
