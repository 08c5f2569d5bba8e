#include "helper/disk_owner.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <climits>
#include <cstdio>

#include <nlohmann/json.hpp>

#include "common/sys.h"
#include "helper/fault.h"
#include "helper/log.h"

namespace vl::helper {

namespace {

using Json = nlohmann::json;

// The storage root containing `path` (whole path components), or nullptr.
const std::string* root_of(const HostConfig& config, const std::string& path) {
  for (const std::string& root : config.storage_roots)
    if (path.size() > root.size() + 1 && path.compare(0, root.size(), root) == 0 && path[root.size()] == '/')
      return &root;
  return nullptr;
}

bool under_dev(const std::string& root) { return root.rfind("/dev/", 0) == 0; }

bool writable_by_others(const struct stat& st) { return (st.st_mode & (S_IWGRP | S_IWOTH)) != 0; }

std::string owner_and_mode(const struct stat& st) {
  char mode[8];
  std::snprintf(mode, sizeof mode, "%04o", st.st_mode & 07777);
  return "uid " + std::to_string(st.st_uid) + ", mode " + mode;
}

// Everything below a storage root becomes the VM's once the helper chowns it, so only root may
// be able to change what the paths below it name: anyone who can write to the root (/dev/shm,
// a group-writable share) can plant a link or a hard link there for root to chown, and anyone
// who can write to a directory above it can swap the root itself. The root must be root's and
// writable by nobody else; above it a root-owned sticky directory (/tmp) is fine, as others can
// add entries there but cannot rename or remove root's. /dev, the base below which /dev roots
// are resolved, is one of the directories above such a root, so it is checked too.
Result<void> check_root_controlled(const std::string& root) {
  UniqueFd dir = VL_TRY(sys::check_fd(::open(root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC),
                                      "open storage root " + quote_for_message(root, kQuotePathMax)));
  struct stat st {};
  VL_TRY(sys::check(::fstat(dir.get(), &st), "stat storage root " + quote_for_message(root, kQuotePathMax)));
  if (st.st_uid != 0 || writable_by_others(st))
    return Error::make(ErrorCode::kDenied, "storage root " + quote_for_message(root, kQuotePathMax) + " must be owned by root and not writable by "
                                           "group or others (it has " + owner_and_mode(st) + ")");
  // Walk up through "..": the directories that really contain the root, symlinks resolved.
  for (;;) {
    UniqueFd parent = VL_TRY(sys::check_fd(::openat(dir.get(), "..", O_PATH | O_DIRECTORY | O_CLOEXEC),
                                           "open the parent of storage root " + quote_for_message(root, kQuotePathMax)));
    struct stat pst {};
    VL_TRY(sys::check(::fstat(parent.get(), &pst), "stat a parent of storage root " + quote_for_message(root, kQuotePathMax)));
    if (pst.st_dev == st.st_dev && pst.st_ino == st.st_ino) return {};  // "/" is its own parent
    if (pst.st_uid != 0 || (writable_by_others(pst) && !(pst.st_mode & S_ISVTX))) {
      char path[PATH_MAX] = {};
      std::string proc = "/proc/self/fd/" + std::to_string(parent.get());
      if (::readlink(proc.c_str(), path, sizeof path - 1) < 0) std::snprintf(path, sizeof path, "?");
      return Error::make(ErrorCode::kDenied, "storage root " + quote_for_message(root, kQuotePathMax) + " lies below '" + path +
                                             "', which someone other than root can change (" + owner_and_mode(pst) + ")");
    }
    dir = std::move(parent);
    st = pst;
  }
}

// How far open_beneath follows absolute links below /dev (a chain like LV -> mapper -> dm-N).
constexpr int kMaxDevLinks = 8;

// Opens `path` below `root` as an O_PATH fd.
//
// Outside /dev: relative to the root, with RESOLVE_BENEATH and RESOLVE_NO_SYMLINKS; a VM user
// may have planted any symlink there, so none is followed.
//
// Below /dev: relative to /dev itself, which only the kernel, udev and LVM populate. LVM's
// names leave the root (/dev/VG/LV is a link to ../dm-N with udev, to the absolute
// /dev/mapper/VG-LV without), so resolution is confined to /dev, not to the root: the kernel
// follows relative links (RESOLVE_BENEATH), and an absolute link as the last component is
// followed here if it points into /dev, again beneath /dev.
//
// Not RESOLVE_IN_ROOT: it would read the absolute link /dev/mapper/X as /dev/dev/mapper/X, and
// where RESOLVE_BENEATH refuses to leave the root (a '..' or an absolute link), RESOLVE_IN_ROOT
// would silently stay inside it, so the helper would chown another inode than the one qemu then
// opens by the same path. Refusing is the right answer to a path that leaves its root.
Result<UniqueFd> open_beneath(const std::string& root, const std::string& path) {
  const bool dev = under_dev(root);
  std::string base = dev ? "/dev" : root;
  UniqueFd base_fd = VL_TRY(sys::check_fd(::open(base.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC),
                                          "open storage root " + quote_for_message(base, kQuotePathMax)));
  std::string rel = path.substr(base.size() + 1);
  open_how how{};
  how.flags = O_PATH | O_NOFOLLOW | O_CLOEXEC;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
  if (!dev) how.resolve |= RESOLVE_NO_SYMLINKS;
  for (int links = 0;; ++links) {
    long raw = ::syscall(SYS_openat2, base_fd.get(), rel.c_str(), &how, sizeof how);
    if (raw < 0) {
      if (errno == ELOOP || errno == EXDEV)
        return Error::make(ErrorCode::kDenied, dev ? "disk " + quote_for_message(path, kQuotePathMax) + " leaves /dev, or passes through an "
                                                     "absolute symlink before its last component"
                                                   : "disk " + quote_for_message(path, kQuotePathMax) + " is or passes through a symlink, "
                                                     "or leaves its storage root " + quote_for_message(root, kQuotePathMax));
      return Error::from_errno("open disk " + quote_for_message(path, kQuotePathMax));
    }
    UniqueFd fd(static_cast<int>(raw));
    struct stat st {};
    VL_TRY(sys::check(::fstat(fd.get(), &st), "stat disk " + quote_for_message(path, kQuotePathMax)));
    if (!dev || !S_ISLNK(st.st_mode)) return fd;  // outside /dev a link is refused by the caller
    if (links == kMaxDevLinks) return Error::make(ErrorCode::kDenied, "disk " + quote_for_message(path, kQuotePathMax) + ": too many levels of symlinks");
    char target[PATH_MAX];
    ssize_t n = ::readlinkat(fd.get(), "", target, sizeof target - 1);
    if (n < 0) return Error::from_errno("read link " + quote_for_message(path, kQuotePathMax));
    std::string link(target, static_cast<size_t>(n));
    if (link.empty() || link.front() == '/') {
      if (link.rfind("/dev/", 0) != 0)
        return Error::make(ErrorCode::kDenied, "disk " + quote_for_message(path, kQuotePathMax) + " is a link out of /dev (" + quote_for_message(link, kQuotePathMax) + ")");
      rel = link.substr(5);
    } else {
      rel = rel.substr(0, rel.rfind('/') + 1) + link;  // relative to the link's directory
    }
  }
}

Result<Json> read_journal(const std::string& path) {
  auto text = sys::read_file(path, 1 << 20);
  if (!text) {
    Error e = std::move(text).error();  // keeps the errno: ENOENT means "no journal"
    e.context = "read disk journal " + quote_for_message(path, kQuotePathMax) + (e.sys_errno ? "" : ": " + e.context);
    return e;
  }
  Json j = Json::parse(*text, nullptr, false);
  bool valid = !j.is_discarded() && j.is_object() && j.contains("disks") && j["disks"].is_array();
  // Checked field by field: the readers below take these types for granted.
  for (size_t i = 0; valid && i < j["disks"].size(); ++i) {
    const Json& e = j["disks"][i];
    valid = e.is_object() && e.contains("path") && e["path"].is_string();
    for (const char* field : {"dev", "ino", "uid", "gid", "mode"})
      valid = valid && e.contains(field) && e[field].is_number_unsigned();
    valid = valid && e["uid"].get<uint64_t>() < UINT32_MAX && e["gid"].get<uint64_t>() < UINT32_MAX &&
            e["mode"].get<uint64_t>() <= 07777;
  }
  if (!valid) return Error::invalid("disk journal " + quote_for_message(path, kQuotePathMax) + " is corrupt");
  return j;
}

Result<void> ensure_dir(const std::string& dir, mode_t mode) {
  if (::mkdir(dir.c_str(), mode) < 0 && errno != EEXIST) return Error::from_errno("create " + quote_for_message(dir, kQuotePathMax));
  return {};
}

}  // namespace

namespace {

// Opens one image (a disk or a declared backing layer) below its storage root, and checks that
// it is what the XML says it is.
Result<DiskClaim> resolve_image(const HostConfig& config, const std::string& path, bool declared_block,
                                const std::string& what) {
  const std::string* root = root_of(config, path);
  if (!root)
    return Error::make(ErrorCode::kDenied, what + " " + quote_for_message(path, kQuotePathMax) + " is not below any storage root of " + config.source);
  VL_CHECK(check_root_controlled(*root));
  DiskClaim claim;
  claim.path = path;
  claim.fd = VL_TRY(open_beneath(*root, path));
  VL_TRY(sys::check(::fstat(claim.fd.get(), &claim.st), "stat " + what + " " + quote_for_message(path, kQuotePathMax)));
  if (S_ISLNK(claim.st.st_mode))  // RESOLVE_NO_SYMLINKS hands back O_PATH|O_NOFOLLOW links
    return Error::make(ErrorCode::kDenied, what + " " + quote_for_message(path, kQuotePathMax) + " is a symlink; refusing to follow it");
  claim.block = S_ISBLK(claim.st.st_mode);
  if (!S_ISREG(claim.st.st_mode) && !claim.block)
    return Error::make(ErrorCode::kDenied, what + " " + quote_for_message(path, kQuotePathMax) + " is neither a regular file nor a block device");
  if (claim.block != declared_block)
    return Error::invalid(what + " " + quote_for_message(path, kQuotePathMax) + " is declared type='" + (declared_block ? "block" : "file") +
                          "' but is not one");
  return claim;
}

}  // namespace

Result<std::vector<DiskClaim>> resolve_disks(const HostConfig& config, const Domain& domain) {
  std::vector<DiskClaim> claims;
  for (const Disk& disk : domain.disks) {
    if (disk.source.empty() || disk.read_only || disk.shareable) continue;
    // A UEFI variable store is a VM's own (nvram.h): given to another VM as a disk it would let
    // that VM rewrite the first one's boot variables. Paths are canonical (domain.h) and no
    // symlink is followed below a root, so the prefix decides.
    if (std::string stores = config.nvram_dir() + "/"; stores.size() > 1 && disk.source.rfind(stores, 0) == 0)
      return Error::make(ErrorCode::kDenied, "disk " + quote_for_message(disk.source, kQuotePathMax) + " is in '" + config.nvram_dir() +
                                                 "', where the UEFI variable stores of VMs live; a store is no disk");
    DiskClaim claim = VL_TRY(resolve_image(config, disk.source, disk.kind == Disk::Kind::kBlock, "disk"));
    if (!claim.block && claim.st.st_nlink != 1)
      return Error::make(ErrorCode::kDenied, "disk " + quote_for_message(disk.source, kQuotePathMax) + " has " + std::to_string(claim.st.st_nlink) +
                                                 " hard links; refusing to change its owner");
    claims.push_back(std::move(claim));
  }
  return claims;
}

Result<void> check_backing_layers(const HostConfig& config, const Domain& domain) {
  for (const Disk& disk : domain.disks)
    for (const BackingLayer& layer : disk.backing) {
      DiskClaim image = VL_TRY(resolve_image(config, layer.source, layer.block, "backing layer"));
      // Shared by every VM built on it, so it is not given to one: whoever else could write it
      // could change what every such VM boots.
      if (image.st.st_uid != 0 || (image.st.st_mode & (S_IWGRP | S_IWOTH)))
        return Error::make(ErrorCode::kDenied, "backing layer " + quote_for_message(layer.source, kQuotePathMax) + " must be owned by root and not "
                                               "writable by group or others (it is " + owner_and_mode(image.st) + ")");
    }
  return {};
}

Result<void> check_disks_unclaimed(const HostConfig& config, const VmName& vm,
                                   const std::vector<DiskClaim>& claims) {
  // A journal of this VM's own is left only by a cleanup that could not restore every disk: a
  // launch would overwrite it (and delete it on rollback), and the record would be lost.
  // (While the VM runs its journal exists too; its runtime directory then says so more precisely.)
  std::string own = config.disk_journal_path(vm);
  if (::access(own.c_str(), F_OK) == 0 && ::access(config.vm_runtime_dir(vm).c_str(), F_OK) != 0)
    return Error::make(ErrorCode::kConflict, "disk journal " + quote_for_message(own, kQuotePathMax) + " of VM '" + vm.str() + "' is left from a run "
                                             "whose disks cleanup could not all restore: run 'vmlaunch-helper cleanup " +
                                             vm.str() + "' once they can be (its error says why not), or restore "
                                             "them by hand and remove the journal");
  std::string dir = config.state_dir + "/disks";
  DIR* d = ::opendir(dir.c_str());
  if (!d) {
    if (errno == ENOENT) return {};  // no journals at all
    return Error::from_errno("read disk journals in " + quote_for_message(dir, kQuotePathMax));
  }
  std::unique_ptr<DIR, int (*)(DIR*)> closer(d, ::closedir);
  while (dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name.size() < 6 || name.substr(name.size() - 5) != ".json" || name == vm.str() + ".json") continue;
    // A journal that cannot be read may record any disk: claiming one could hand a disk that
    // another VM still writes to a second VM, so nothing is claimed until someone looks.
    auto journal = read_journal(dir + "/" + name);
    // Removed since the listing: that VM's cleanup released its disks (journals are replaced
    // atomically, so a journal that exists is whole).
    if (!journal && journal.error().sys_errno == ENOENT) continue;
    if (!journal) return std::move(journal).error().wrap("cannot tell which disks are in use");
    for (const Json& entry : (*journal)["disks"])
      for (const DiskClaim& c : claims)
        if (entry["dev"].get<uint64_t>() == c.st.st_dev && entry["ino"].get<uint64_t>() == c.st.st_ino)
          return Error::make(ErrorCode::kConflict, "disk " + quote_for_message(c.path, kQuotePathMax) + " is in use by VM '" +
                                                       name.substr(0, name.size() - 5) + "'");
  }
  return {};
}

Result<void> write_disk_journal(const HostConfig& config, const VmName& vm,
                                const std::vector<DiskClaim>& claims) {
  VL_CHECK(ensure_dir(config.state_dir, 0700));
  VL_CHECK(ensure_dir(config.state_dir + "/disks", 0700));
  Json disks = Json::array();
  for (const DiskClaim& c : claims)
    disks.push_back({{"path", c.path}, {"dev", c.st.st_dev}, {"ino", c.st.st_ino}, {"uid", c.st.st_uid},
                     {"gid", c.st.st_gid}, {"mode", c.st.st_mode & 07777}});
  Json j = {{"vm", vm.str()}, {"disks", disks}};
  return sys::write_file_atomic(config.disk_journal_path(vm), j.dump() + "\n", 0600);
}

Result<void> chown_disks(const std::vector<DiskClaim>& claims, uid_t uid, gid_t gid) {
  for (const DiskClaim& c : claims) {
    // PRIV: the fd was resolved below a storage root without symlinks; uid/gid are the VM's.
    VL_TRY(sys::check(::fchownat(c.fd.get(), "", uid, gid, AT_EMPTY_PATH), "chown disk " + quote_for_message(c.path, kQuotePathMax)));
    // fchmod does not take O_PATH fds; the /proc link refers to the very inode the fd holds.
    VL_CHECK(maybe_fail("disk-chmod"));  // a failure half way through one disk, for the tests
    std::string proc = "/proc/self/fd/" + std::to_string(c.fd.get());
    VL_TRY(sys::check(::chmod(proc.c_str(), 0600), "chmod disk " + quote_for_message(c.path, kQuotePathMax)));
    log_info("disk " + quote_for_message(c.path, kQuotePathMax) + " now owned by " + std::to_string(uid) + ":" + std::to_string(gid) + " mode 0600");
  }
  return {};
}

namespace {

// Restores one journal entry; the error names the disk and why it was left alone.
Result<void> restore_disk(const HostConfig& config, const Json& entry) {
  std::string disk = entry["path"].get<std::string>();
  const std::string* root = root_of(config, disk);
  if (!root) return Error::make(ErrorCode::kNotFound, "disk " + quote_for_message(disk, kQuotePathMax) + " is no longer below a storage root of " + config.source);
  UniqueFd fd = VL_TRY(open_beneath(*root, disk));
  struct stat st {};
  VL_TRY(sys::check(::fstat(fd.get(), &st), "stat disk " + quote_for_message(disk, kQuotePathMax)));
  if (st.st_dev != entry["dev"].get<uint64_t>() || st.st_ino != entry["ino"].get<uint64_t>())
    return Error::make(ErrorCode::kConflict, "disk " + quote_for_message(disk, kQuotePathMax) + " was replaced since launch (another inode has its path)");
  uid_t uid = entry["uid"].get<uid_t>();
  gid_t gid = entry["gid"].get<gid_t>();
  mode_t mode = entry["mode"].get<mode_t>() & 07777;
  std::string proc = "/proc/self/fd/" + std::to_string(fd.get());
  // PRIV: restores exactly what the root-owned journal recorded, on the same inode.
  if (::fchownat(fd.get(), "", uid, gid, AT_EMPTY_PATH) < 0 || ::chmod(proc.c_str(), mode) < 0)
    return Error::from_errno("restore owner of disk " + quote_for_message(disk, kQuotePathMax));
  log_info("disk " + quote_for_message(disk, kQuotePathMax) + " restored to " + std::to_string(uid) + ":" + std::to_string(gid));
  return {};
}

}  // namespace

Result<void> restore_disks(const HostConfig& config, const VmName& vm) {
  std::string path = config.disk_journal_path(vm);
  auto journal = read_journal(path);
  if (!journal) {
    if (journal.error().sys_errno == ENOENT) return {};
    return std::move(journal).error();
  }
  // An entry is dropped only once its disk has its owner back: the journal is the only record
  // of the original owner, and a disk skipped now (replaced, renamed, its root gone from the
  // configuration) may still be the VM's and need restoring by a later cleanup.
  Json left = Json::array();
  Result<void> first_failure;
  for (const Json& entry : (*journal)["disks"]) {
    if (auto r = restore_disk(config, entry); !r) {
      if (first_failure) first_failure = std::move(r).error();  // the caller logs it
      else log_error(r.error());
      left.push_back(entry);
    }
  }
  if (left.empty()) {
    if (::unlink(path.c_str()) < 0 && errno != ENOENT) return Error::from_errno("remove " + quote_for_message(path, kQuotePathMax));
    return {};
  }
  (*journal)["disks"] = left;
  VL_CHECK(sys::write_file_atomic(path, journal->dump() + "\n", 0600));
  return first_failure.error().wrap(std::to_string(left.size()) + " disk(s) of VM '" + vm.str() + "' not restored, "
                                    "their record stays in " + quote_for_message(path, kQuotePathMax) + " for the next cleanup");
}

Result<void> write_udev_rule(const HostConfig& config, const VmName& vm,
                             const std::vector<DiskClaim>& claims, uid_t uid, gid_t gid) {
  std::string rules;
  for (const DiskClaim& c : claims) {
    if (!c.block) continue;
    rules += "SUBSYSTEM==\"block\", ENV{MAJOR}==\"" + std::to_string(major(c.st.st_rdev)) + "\", ENV{MINOR}==\"" +
             std::to_string(minor(c.st.st_rdev)) + "\", OWNER=\"" + std::to_string(uid) + "\", GROUP=\"" +
             std::to_string(gid) + "\", MODE=\"0600\"\n";
  }
  if (rules.empty()) return {};
  VL_CHECK(ensure_dir(config.udev_rules_dir, 0755));
  return sys::write_file_atomic(config.udev_rule_path(vm),
                                "# vmlaunch: block devices of VM " + vm.str() + "\n" + rules, 0644);
}

Result<void> remove_udev_rule(const HostConfig& config, const VmName& vm) {
  std::string path = config.udev_rule_path(vm);
  if (::unlink(path.c_str()) < 0 && errno != ENOENT) return Error::from_errno("remove " + quote_for_message(path, kQuotePathMax));
  return {};
}

}  // namespace vl::helper
