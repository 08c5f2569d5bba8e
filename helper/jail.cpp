// The emulator's filesystem jail (jail.h).
//
// Built in three phases, so that each reads straight:
//  1. resolve, in the host's view: each path of the set is opened, checked (its type, and for
//     a claimed disk its inode) and cloned into a detached mount (open_tree) whose flags are
//     set before it is attached anywhere: no moment at which a bind is writable, suid or
//     executable when it should not be. The owner and mode of every directory on the way are
//     read now too.
//  2. build: a private mount namespace (propagation off, so nothing reaches the host), a
//     tmpfs over the root-only state directory as the new root, the directories on the way
//     (each with its host twin's owner and mode), the clones moved into place, /proc and
//     /dev/pts fresh instances; then pivot_root, the old root detached, the new one read-only.
//  3. restrict: a Landlock ruleset granting the same paths, applied by the caller once it is
//     no longer root.
#include "helper/jail.h"

#include <fcntl.h>
#include <linux/landlock.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <optional>
#include <map>

#include "common/sys.h"
#include "helper/fault.h"
#include "helper/log.h"

// Rights of Landlock ABIs newer than this system's <linux/landlock.h>: the kernel decides
// which it has (landlock_abi), the header only names them.
#ifndef LANDLOCK_ACCESS_FS_TRUNCATE
#define LANDLOCK_ACCESS_FS_TRUNCATE (1ULL << 14)
#endif
#ifndef LANDLOCK_ACCESS_FS_IOCTL_DEV
#define LANDLOCK_ACCESS_FS_IOCTL_DEV (1ULL << 15)
#endif

namespace vl::helper {

namespace {

std::string q(const std::string& path) { return quote_for_message(path, kQuotePathMax); }

bool under(const std::string& path, const std::string& dir) {
  return path.size() > dir.size() && path.compare(0, dir.size(), dir) == 0 && path[dir.size()] == '/';
}

// ---- Landlock, through its raw system calls (glibc has no wrappers) ----

// The struct of ABI 6; older kernels accept it as long as the fields they lack are zero.
struct RulesetAttr {
  uint64_t handled_access_fs;
  uint64_t handled_access_net;
  uint64_t scoped;
};

constexpr uint64_t kRead = LANDLOCK_ACCESS_FS_READ_FILE;
constexpr uint64_t kReadDir = LANDLOCK_ACCESS_FS_READ_DIR;
constexpr uint64_t kExec = LANDLOCK_ACCESS_FS_EXECUTE;
constexpr uint64_t kWrite = LANDLOCK_ACCESS_FS_WRITE_FILE | LANDLOCK_ACCESS_FS_TRUNCATE;
constexpr uint64_t kIoctl = LANDLOCK_ACCESS_FS_IOCTL_DEV;
// In a writable directory (the runtime directory): files and sockets made, replaced, removed.
constexpr uint64_t kDirWrite = kWrite | LANDLOCK_ACCESS_FS_REMOVE_FILE | LANDLOCK_ACCESS_FS_MAKE_REG |
                               LANDLOCK_ACCESS_FS_MAKE_SOCK;

// Every filesystem right the kernel's ABI knows: all are handled, so all are refused unless a
// rule grants them. Network rights and scopes (ABI 4, 6) are not this file's concern.
uint64_t handled_access(int abi) {
  uint64_t all = (LANDLOCK_ACCESS_FS_MAKE_SYM << 1) - 1;  // ABI 1: bits 0..12
  if (abi >= 2) all |= LANDLOCK_ACCESS_FS_REFER;
  if (abi >= 3) all |= LANDLOCK_ACCESS_FS_TRUNCATE;
  if (abi >= 5) all |= LANDLOCK_ACCESS_FS_IOCTL_DEV;
  return all;
}

// What the emulator may do below each kind of path.
uint64_t access_of(const JailPath& p) {
  switch (p.kind) {
    case JailPath::Kind::kTree: return kExec | kRead | kReadDir;
    case JailPath::Kind::kProgram: return kExec | kRead;
    case JailPath::Kind::kDir: return kRead | kReadDir | (p.writable ? kDirWrite : 0);
    case JailPath::Kind::kFile: return kRead | (p.writable ? kWrite : 0);
    case JailPath::Kind::kDevice: return kRead | kIoctl | (p.writable ? kWrite : 0);
    case JailPath::Kind::kLink: return 0;  // its target is in the set, or nothing
  }
  return 0;
}

Result<void> add_rule(int ruleset, const std::string& path, uint64_t access, uint64_t handled) {
  UniqueFd fd = VL_TRY(sys::check_fd(::open(path.c_str(), O_PATH | O_CLOEXEC), "open " + q(path) + " for its Landlock rule"));
  landlock_path_beneath_attr rule{};
  rule.allowed_access = access & handled;
  rule.parent_fd = fd.get();
  VL_TRY(sys::check(static_cast<int>(::syscall(SYS_landlock_add_rule, ruleset, LANDLOCK_RULE_PATH_BENEATH, &rule, 0)),
                    "add the Landlock rule for " + q(path)));
  return {};
}

// ---- phase 1: resolve ----

// A path of the set, resolved: its detached clone (or, for a link, its target).
struct Resolved {
  const JailPath* path;
  UniqueFd tree;
  std::string link_target;
};

Result<void> check_type(const JailPath& p, const struct stat& st) {
  bool ok = false;
  switch (p.kind) {
    case JailPath::Kind::kTree:
    case JailPath::Kind::kDir: ok = S_ISDIR(st.st_mode); break;
    case JailPath::Kind::kFile:
    case JailPath::Kind::kProgram: ok = S_ISREG(st.st_mode); break;
    case JailPath::Kind::kDevice: ok = S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode); break;
    case JailPath::Kind::kLink: ok = true; break;
  }
  if (!ok) return Error::make(ErrorCode::kDenied, "jail: " + q(p.path) + " is not of the type the launch checked");
  if (p.check_inode && (st.st_dev != p.dev || st.st_ino != p.ino))
    return Error::make(ErrorCode::kDenied, "jail: " + q(p.path) + " no longer names the disk the launch claimed");
  return {};
}

unsigned mount_attrs(const JailPath& p) {
  unsigned attrs = MOUNT_ATTR_NOSUID;
  if (p.kind != JailPath::Kind::kDevice) attrs |= MOUNT_ATTR_NODEV;  // device binds keep dev
  if (p.kind != JailPath::Kind::kTree && p.kind != JailPath::Kind::kProgram) attrs |= MOUNT_ATTR_NOEXEC;
  if (!p.writable) attrs |= MOUNT_ATTR_RDONLY;
  return attrs;
}

// Opens `p` and clones it into a detached mount with its final flags. A path that is absent
// and optional yields nothing.
Result<std::optional<Resolved>> resolve(const JailPath& p) {
  Resolved r{&p, UniqueFd(), {}};
  if (p.kind == JailPath::Kind::kLink) {
    char target[PATH_MAX];
    ssize_t n = ::readlink(p.path.c_str(), target, sizeof target - 1);
    if (n < 0) return Error::from_errno("jail: read link " + q(p.path));
    r.link_target.assign(target, static_cast<size_t>(n));
    return std::optional<Resolved>(std::move(r));
  }
  // Symlinks are followed as the emulator would follow them; the disks and layers among these
  // were resolved without symlinks by the launch, and their inodes are checked here.
  UniqueFd fd(::open(p.path.c_str(), O_PATH | O_CLOEXEC));
  if (!fd && errno == ENOENT && p.optional) return std::optional<Resolved>();
  if (!fd) return Error::from_errno("jail: open " + q(p.path));
  struct stat st {};
  VL_TRY(sys::check(::fstat(fd.get(), &st), "jail: stat " + q(p.path)));
  VL_CHECK(check_type(p, st));
  unsigned flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH;
  if (S_ISDIR(st.st_mode)) flags |= AT_RECURSIVE;  // whatever is mounted below /usr, too
  // PRIV: a detached copy of a path of the set, attached nowhere yet.
  r.tree = VL_TRY(sys::check_fd(::open_tree(fd.get(), "", flags), "jail: clone the mount of " + q(p.path)));
  mount_attr attr{};
  attr.attr_set = mount_attrs(p);
  VL_TRY(sys::check(::mount_setattr(r.tree.get(), "", AT_EMPTY_PATH | AT_RECURSIVE, &attr, sizeof attr),
                    "jail: set the mount flags of " + q(p.path)));
  return std::optional<Resolved>(std::move(r));
}

// The owner and mode of every directory above each path, read on the host.
Result<std::map<std::string, struct stat>> parent_dirs(const std::vector<Resolved>& paths) {
  std::map<std::string, struct stat> dirs;
  for (const Resolved& r : paths) {
    const std::string& path = r.path->path;
    for (size_t slash = path.find('/', 1); slash != std::string::npos; slash = path.find('/', slash + 1)) {
      std::string dir = path.substr(0, slash);
      if (dirs.count(dir)) continue;
      struct stat st {};
      VL_TRY(sys::check(::stat(dir.c_str(), &st), "jail: stat " + q(dir)));
      dirs[dir] = st;
    }
  }
  return dirs;
}

// ---- phase 2: build ----

// The directories on the way to a path, in the new root, as the host has them. They are on
// a tmpfs that becomes read-only: their mode only gates traversal.
Result<void> make_parents(const std::string& root, const std::string& path, const std::map<std::string, struct stat>& dirs) {
  for (size_t slash = path.find('/', 1); slash != std::string::npos; slash = path.find('/', slash + 1)) {
    std::string dir = path.substr(0, slash);
    std::string in_root = root + dir;
    if (::mkdir(in_root.c_str(), 0700) < 0) {
      if (errno == EEXIST) continue;
      return Error::from_errno("jail: create " + q(dir));
    }
    const struct stat& st = dirs.at(dir);
    // PRIV: a directory of the new root's private tmpfs, given its host twin's owner and mode.
    VL_TRY(sys::check(::chown(in_root.c_str(), st.st_uid, st.st_gid), "jail: chown " + q(dir)));
    VL_TRY(sys::check(::chmod(in_root.c_str(), st.st_mode & 07777), "jail: chmod " + q(dir)));
  }
  return {};
}

Result<void> place(const std::string& root, Resolved& r) {
  const JailPath& p = *r.path;
  std::string target = root + p.path;
  if (p.kind == JailPath::Kind::kLink) {
    VL_TRY(sys::check(::symlink(r.link_target.c_str(), target.c_str()), "jail: link " + q(p.path)));
    return {};
  }
  bool dir = p.kind == JailPath::Kind::kTree || p.kind == JailPath::Kind::kDir;
  if (dir) VL_TRY(sys::check(::mkdir(target.c_str(), 0755), "jail: create mount point " + q(p.path)));
  else VL_TRY(sys::check_fd(::open(target.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600), "jail: create mount point " + q(p.path)));
  // PRIV: the clone of a validated path, onto its own place in the private new root.
  VL_TRY(sys::check(::move_mount(r.tree.get(), "", AT_FDCWD, target.c_str(), MOVE_MOUNT_F_EMPTY_PATH),
                    "jail: mount " + q(p.path)));
  return {};
}

// A /proc of its own: QEMU reads /proc/self (and a passed fd's /proc/self/fd/N). Only the
// process directories (subset=pid: no /proc/sys, no host-wide files) and, of those, only the
// VM uid's own (hidepid=invisible).
Result<void> mount_proc(const std::string& root) {
  std::string target = root + "/proc";
  VL_TRY(sys::check(::mkdir(target.c_str(), 0555), "jail: create '/proc'"));
  // PRIV: a new procfs instance in the private namespace; nosuid, nodev, noexec.
  VL_TRY(sys::check(::mount("proc", target.c_str(), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=invisible,subset=pid"),
                    "jail: mount '/proc' (hidepid=invisible,subset=pid)"));
  return {};
}

// A devpts instance of its own for the pty chardevs a plan may have: the VM's ptys and no one
// else's terminals.
Result<void> mount_devpts(const std::string& root) {
  std::string target = root + "/dev/pts";
  VL_TRY(sys::check(::mkdir(target.c_str(), 0755), "jail: create '/dev/pts'"));
  // PRIV: a new devpts instance in the private namespace; nosuid, noexec.
  VL_TRY(sys::check(::mount("devpts", target.c_str(), "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0600"),
                    "jail: mount '/dev/pts'"));
  VL_TRY(sys::check(::symlink("pts/ptmx", (root + "/dev/ptmx").c_str()), "jail: link '/dev/ptmx'"));
  return {};
}

// The process's root becomes `root`; the old one is detached (it stays alive only while a
// mount elsewhere holds it, and none does: every bind is a clone).
Result<void> pivot_into(const std::string& root) {
  VL_TRY(sys::check(::chdir(root.c_str()), "jail: enter the new root"));
  // PRIV: pivot_root(".", ".") stacks the old root on the new one; it is detached at once.
  VL_TRY(sys::check(static_cast<int>(::syscall(SYS_pivot_root, ".", ".")), "jail: pivot_root"));
  VL_TRY(sys::check(::umount2(".", MNT_DETACH), "jail: detach the old root"));
  VL_TRY(sys::check(::chdir("/"), "jail: chdir '/'"));
  VL_TRY(sys::check(::mount(nullptr, "/", nullptr, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr),
                    "jail: make the new root read-only"));
  return {};
}

Result<UniqueFd> make_ruleset(const JailSpec& spec, int abi) {
  uint64_t handled = handled_access(abi);
  RulesetAttr attr{handled, 0, 0};
  UniqueFd ruleset = VL_TRY(sys::check_fd(static_cast<int>(::syscall(SYS_landlock_create_ruleset, &attr, sizeof attr, 0)),
                                          "create the Landlock ruleset"));
  for (const JailPath& p : spec.paths)
    if (p.kind != JailPath::Kind::kLink && (!p.optional || ::access(p.path.c_str(), F_OK) == 0))
      VL_CHECK(add_rule(ruleset.get(), p.path, access_of(p), handled));
  VL_CHECK(add_rule(ruleset.get(), "/proc", kRead | kReadDir, handled));
  VL_CHECK(add_rule(ruleset.get(), "/dev/pts", kRead | kReadDir | kWrite | kIoctl, handled));
  return ruleset;
}

}  // namespace

Result<int> landlock_abi() {
  long abi = ::syscall(SYS_landlock_create_ruleset, nullptr, 0, LANDLOCK_CREATE_RULESET_VERSION);
  if (abi >= 0) return static_cast<int>(abi);
  // Not built in, or not enabled at boot. Anything else (EPERM from a seccomp filter around
  // the helper) must not quietly launch the emulator without its rules.
  if (errno == ENOSYS || errno == EOPNOTSUPP) return 0;
  return Error::from_errno("ask the kernel for its Landlock ABI (a seccomp filter around the helper must allow "
                           "landlock_create_ruleset, landlock_add_rule and landlock_restrict_self)");
}

Result<JailSpec> jail_spec(const HostConfig& config, const Domain& domain, const std::vector<DiskClaim>& claims) {
  JailSpec spec{config.state_dir, {}};
  using K = JailPath::Kind;
  // The emulator's tree: its binary, libraries, modules, firmware and keymaps all live in
  // /usr on a merged-/usr system, reached through the top-level links too.
  spec.paths.push_back({"/usr", K::kTree});
  for (const char* top : {"/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"}) {
    struct stat st {};
    if (::lstat(top, &st) < 0) continue;
    if (S_ISLNK(st.st_mode)) spec.paths.push_back({top, K::kLink});
    else if (S_ISDIR(st.st_mode)) spec.paths.push_back({top, K::kTree});
  }
  // The /etc files QEMU 7.2 reads (found by tracing it): the loader's cache, without which
  // the multiarch library directories are not searched; the time zone of its log lines; the
  // system-wide GnuTLS priorities for VNC over TLS. Nothing else of /etc.
  for (const char* etc : {"/etc/ld.so.cache", "/etc/localtime", "/etc/gnutls/config"})
    spec.paths.push_back({etc, K::kFile, false, true});
  // A minimal /dev; no /dev/net/tun, as the taps are passed as fds. /dev/kvm only for KVM.
  for (const char* dev : {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"})
    spec.paths.push_back({dev, K::kDevice, true});
  if (domain.type == "kvm") spec.paths.push_back({"/dev/kvm", K::kDevice, true});
  spec.paths.push_back({domain.emulator, K::kProgram});
  // The monitor, agent and console sockets are passed as fds; the VNC socket the emulator
  // binds itself, in a directory of its own (vnc_socket.h).
  spec.paths.push_back({config.vm_runtime_dir(domain.name), K::kDir, true});
  if (domain.vnc) spec.paths.push_back({config.vnc_socket_dir(domain.name), K::kDir, true});
  if (domain.vnc && !domain.vnc->tls_dir.empty()) spec.paths.push_back({config.vnc_tls_dir(domain.name), K::kDir});
  for (const Disk& disk : domain.disks) {
    if (disk.source.empty()) continue;
    JailPath p{disk.source, disk.kind == Disk::Kind::kBlock ? K::kDevice : K::kFile, !disk.read_only};
    for (const DiskClaim& c : claims) {
      if (c.path != disk.source) continue;
      p.dev = c.st.st_dev;
      p.ino = c.st.st_ino;
      p.check_inode = true;
    }
    spec.paths.push_back(p);
    for (const BackingLayer& layer : disk.backing) spec.paths.push_back({layer.source, layer.block ? K::kDevice : K::kFile});
  }
  for (const std::string& file : domain.boot_files) spec.paths.push_back({file, K::kFile});
  if (domain.uefi) {
    spec.paths.push_back({domain.uefi->code, K::kFile});
    if (!domain.uefi->nvram.empty()) spec.paths.push_back({domain.uefi->nvram, K::kFile, true});
  }

  // Drop what the tree already holds (/usr/share/OVMF/..., /usr/bin/qemu-system-x86_64) and
  // repeats (a writable use wins); refuse paths that would be mounted inside another
  // directory of the set, which would create their mount points on the host.
  std::vector<JailPath> kept;
  for (JailPath& p : spec.paths) {
    if (p.path.empty() || p.path[0] != '/' || p.path.find("/../") != std::string::npos || p.path.ends_with("/.."))
      return Error::invalid("jail: path " + q(p.path) + " is not absolute and canonical");
    bool in_tree = std::any_of(spec.paths.begin(), spec.paths.end(), [&](const JailPath& t) {
      return (t.kind == K::kTree || t.kind == K::kLink) && under(p.path, t.path);
    });
    if (in_tree) continue;
    auto same = std::find_if(kept.begin(), kept.end(), [&](const JailPath& k) { return k.path == p.path; });
    if (same != kept.end()) {
      if (same->kind != p.kind) return Error::invalid("jail: " + q(p.path) + " is named both as a block device and as a file");
      same->writable = same->writable || p.writable;
      continue;
    }
    kept.push_back(p);
  }
  for (const JailPath& p : kept)
    for (const JailPath& d : kept)
      if (d.kind == K::kDir && under(p.path, d.path))
        return Error::invalid("jail: " + q(p.path) + " lies inside " + q(d.path) + ", which the jail mounts whole");
  spec.paths = std::move(kept);
  return spec;
}

Jail::~Jail() {
  if (!host_ns_ || ::geteuid() != 0) return;
  // PRIV: back to the host's own mount namespace, so that the rollback sees the host's paths.
  if (::setns(host_ns_.get(), CLONE_NEWNS) < 0)
    log_error(Error::from_errno("return to the host's mount namespace after a failed launch"));
}

Result<Jail> Jail::enter(const JailSpec& spec) {
  // Phase 1, in the host's view.
  std::vector<Resolved> resolved;
  for (const JailPath& p : spec.paths) {
    auto r = VL_TRY(resolve(p));
    if (r) resolved.push_back(std::move(*r));
  }
  std::map<std::string, struct stat> dirs = VL_TRY(parent_dirs(resolved));

  // Phase 2. From the unshare on, this object's destructor takes the process back.
  Jail jail;
  jail.host_ns_ = VL_TRY(sys::check_fd(::open("/proc/self/ns/mnt", O_RDONLY | O_CLOEXEC), "jail: open the host's mount namespace"));
  // PRIV: a mount namespace of this process alone; with propagation off below, no mount made
  // in it reaches the host, and it ends with the emulator.
  VL_TRY(sys::check(::unshare(CLONE_NEWNS), "jail: unshare the mount namespace"));
  VL_TRY(sys::check(::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr), "jail: make the mounts private"));
  const std::string& root = spec.staging;
  // PRIV: over root's own 0700 state directory, in the private namespace only.
  VL_TRY(sys::check(::mount("tmpfs", root.c_str(), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0755,size=1m"),
                    "jail: mount the new root on " + q(root)));
  for (Resolved& r : resolved) {
    VL_CHECK(make_parents(root, r.path->path, dirs));
    VL_CHECK(place(root, r));
  }
  VL_CHECK(mount_proc(root));
  VL_CHECK(mount_devpts(root));
  VL_CHECK(pivot_into(root));

  // Phase 3's rules, made while root can still open every path of the jail.
  if (int abi = VL_TRY(landlock_abi()); abi > 0) jail.ruleset_ = VL_TRY(make_ruleset(spec, abi));
  VL_CHECK(maybe_fail("jail"));
  return jail;
}

Result<void> Jail::restrict_files() {
  if (!ruleset_) return {};
  VL_TRY(sys::check(static_cast<int>(::syscall(SYS_landlock_restrict_self, ruleset_.get(), 0)), "apply the Landlock ruleset"));
  ruleset_.reset();
  return {};
}

}  // namespace vl::helper
