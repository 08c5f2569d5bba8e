// The baseline seccomp filter under every emulator, beneath QEMU's own -sandbox.
//
// Default allow, with a deny list of what a VM process never needs and what would widen an
// escape from a compromised emulator (each fails with EPERM, so qemu reports a clear error
// rather than dying on SIGSYS):
//   ptrace, process_vm_readv/writev   inspecting or changing other processes of the same uid
//   kexec_load, kexec_file_load       replacing the host kernel
//   init_module, finit_module,        loading kernel code
//     delete_module
//   bpf, perf_event_open              kernel attack surface with a history of escalations
//   keyctl, add_key, request_key      the kernel keyring, shared per uid
//   mount, umount2, pivot_root,       reshaping the filesystem view
//     chroot, fsopen, fsmount,
//     fsconfig, fspick, move_mount,
//     open_tree
//   unshare, setns                    namespaces (also clone() with any CLONE_NEW* flag)
//   reboot, swapon, swapoff, acct     host administration
//   iopl, ioperm                      raw port I/O
//   settimeofday, clock_settime,      the host clock
//     clock_adjtime, adjtimex
//   syslog, quotactl, lookup_dcookie, host information and legacy interfaces
//     uselib, open_by_handle_at,
//     name_to_handle_at, userfaultfd
//   ioctl(TUNSETPERSIST)              a tap that outlives the emulator (and its cleanup)
//   ioctl(TUNSETOWNER, TUNSETGROUP)   a tap handed to another uid, which cleanup leaves alone
//   ioctl(SIOCSIFHWADDR) on the tap   the tap's own MAC set to a neighbour's or the gateway's:
//                                     the bridge then takes it as a local address, dropping
//                                     the neighbour's static entry
//   ioctl(TUNSETLINK, TUNSETCARRIER)  the tap's link type and carrier, which qemu never sets
// clone3 fails with ENOSYS instead: its flags live in memory seccomp cannot read, and glibc
// then falls back to clone(), whose flags the filter does check. io_uring_setup, _enter and
// _register fail with ENOSYS too, so qemu falls back to its thread pool: io_uring runs
// operations from kernel workers that this filter never sees, and has a long record of
// kernel bugs. socket() is limited to AF_UNIX, AF_INET and AF_INET6 (others fail with
// EAFNOSUPPORT): qemu reaches its monitor, VNC and migration through those; packet, netlink,
// vsock and the rest are kernel surface a VM process does not need.
//
// A system call of another ABI (i386, x32) kills the whole process: libseccomp's default kills
// only the calling thread, and an emulator whose main thread died that way would live on with
// its taps and disks.
//
// Arguments the kernel reads as 32-bit ints (the ioctl request, the socket family) are
// compared on their low 32 bits or refused outright when wider, since the kernel ignores the
// high bits that the filter sees.
#include <linux/if_tun.h>
#include <linux/sched.h>
#include <seccomp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <memory>

#include "helper/exec.h"

namespace vl::helper {

namespace {

struct SeccompFree {
  void operator()(void* ctx) const { seccomp_release(ctx); }
};

constexpr const char* kDenied[] = {
    "ptrace", "process_vm_readv", "process_vm_writev", "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module", "bpf", "perf_event_open", "keyctl", "add_key",
    "request_key", "mount", "umount2", "pivot_root", "chroot", "fsopen", "fsmount", "fsconfig",
    "fspick", "move_mount", "open_tree", "unshare", "setns", "reboot", "swapon", "swapoff", "acct",
    "iopl", "ioperm", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "syslog",
    "quotactl", "lookup_dcookie", "uselib", "open_by_handle_at", "name_to_handle_at", "userfaultfd"};

constexpr const char* kNotImplemented[] = {"clone3", "io_uring_setup", "io_uring_enter", "io_uring_register"};

constexpr uint64_t kNamespaceFlags[] = {CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER,
                                        CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWCGROUP, CLONE_NEWTIME};

}  // namespace

Result<void> install_seccomp_baseline() {
  std::unique_ptr<void, SeccompFree> ctx(seccomp_init(SCMP_ACT_ALLOW));
  if (!ctx) return Error::make(ErrorCode::kSystem, "seccomp_init");
  auto fail = [](int rc, const std::string& what) { return Error::from_errno(-rc, "seccomp: " + what); };
  for (const char* name : kDenied) {
    int nr = seccomp_syscall_resolve_name(name);
    if (nr == __NR_SCMP_ERROR) continue;  // not on this architecture
    if (int rc = seccomp_rule_add(ctx.get(), SCMP_ACT_ERRNO(EPERM), nr, 0); rc < 0) return fail(rc, name);
  }
  for (uint64_t flag : kNamespaceFlags)
    if (int rc = seccomp_rule_add(ctx.get(), SCMP_ACT_ERRNO(EPERM), SCMP_SYS(clone), 1,
                                  SCMP_A0(SCMP_CMP_MASKED_EQ, flag, flag));
        rc < 0)
      return fail(rc, "clone namespace flags");
  for (const char* name : kNotImplemented) {
    int nr = seccomp_syscall_resolve_name(name);
    if (nr == __NR_SCMP_ERROR) continue;
    if (int rc = seccomp_rule_add(ctx.get(), SCMP_ACT_ERRNO(ENOSYS), nr, 0); rc < 0) return fail(rc, name);
  }
  // The tun driver lets whoever holds a tap's fd change these without any capability.
  for (unsigned long request : {TUNSETPERSIST, TUNSETOWNER, TUNSETGROUP, TUNSETLINK, TUNSETCARRIER,
                                static_cast<unsigned long>(SIOCSIFHWADDR)})
    if (int rc = seccomp_rule_add(ctx.get(), SCMP_ACT_ERRNO(EPERM), SCMP_SYS(ioctl), 1,
                                  SCMP_A1(SCMP_CMP_MASKED_EQ, 0xffffffffu, request));
        rc < 0)
      return fail(rc, "ioctl tun request");
  // Every family but AF_UNIX (1), AF_INET (2) and AF_INET6 (10), as the full 64-bit value: a
  // wider number is refused even if its low 32 bits name an allowed family.
  static_assert(AF_UNIX == 1 && AF_INET == 2 && AF_INET6 == 10);
  auto deny_family = [&](scmp_arg_cmp cmp) {
    return seccomp_rule_add(ctx.get(), SCMP_ACT_ERRNO(EAFNOSUPPORT), SCMP_SYS(socket), 1, cmp);
  };
  if (int rc = deny_family(SCMP_A0(SCMP_CMP_EQ, AF_UNSPEC)); rc < 0) return fail(rc, "socket family");
  for (uint64_t family = AF_INET + 1; family < AF_INET6; ++family)
    if (int rc = deny_family(SCMP_A0(SCMP_CMP_EQ, family)); rc < 0) return fail(rc, "socket family");
  if (int rc = deny_family(SCMP_A0(SCMP_CMP_GT, AF_INET6)); rc < 0) return fail(rc, "socket family");
  if (int rc = seccomp_attr_set(ctx.get(), SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_KILL_PROCESS); rc < 0)
    return fail(rc, "bad-architecture action");
  if (int rc = seccomp_load(ctx.get()); rc < 0) return fail(rc, "load filter");
  return {};
}

}  // namespace vl::helper
