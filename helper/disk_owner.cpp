#include "helper/disk_owner.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "common/sys.h"
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

Result<UniqueFd> open_beneath(const std::string& root, const std::string& path) {
  // Below /dev, LVM names are symlinks to ../dm-N: resolve beneath /dev itself, which only the
  // kernel and udev populate; elsewhere, beneath the storage root.
  std::string base = under_dev(root) ? "/dev" : root;
  UniqueFd root_fd = VL_TRY(sys::check_fd(::open(base.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC),
                                          "open storage root '" + base + "'"));
  std::string rel = path.substr(base.size() + 1);
  open_how how{};
  how.flags = O_PATH | O_NOFOLLOW | O_CLOEXEC;
  // /dev entries are made by the kernel and udev only, and LVM names are symlinks there;
  // anywhere else a symlink could have been planted by a VM user.
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
  if (!under_dev(root)) how.resolve |= RESOLVE_NO_SYMLINKS;
  else how.flags &= ~static_cast<uint64_t>(O_NOFOLLOW);
  long fd = ::syscall(SYS_openat2, root_fd.get(), rel.c_str(), &how, sizeof how);
  if (fd < 0) {
    if (errno == ELOOP || errno == EXDEV)
      return Error::make(ErrorCode::kDenied, "disk '" + path + "' is or passes through a symlink, "
                                             "or leaves its storage root '" + root + "'");
    return Error::from_errno("open disk '" + path + "'");
  }
  return UniqueFd(static_cast<int>(fd));
}

Result<Json> read_journal(const std::string& path) {
  auto text = sys::read_file(path, 1 << 20);
  if (!text) return std::move(text).error();
  Json j = Json::parse(*text, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("disks") || !j["disks"].is_array())
    return Error::invalid("disk journal '" + path + "' is corrupt");
  return j;
}

Result<void> ensure_dir(const std::string& dir, mode_t mode) {
  if (::mkdir(dir.c_str(), mode) < 0 && errno != EEXIST) return Error::from_errno("create '" + dir + "'");
  return {};
}

}  // namespace

Result<std::vector<DiskClaim>> resolve_disks(const HostConfig& config, const Domain& domain) {
  std::vector<DiskClaim> claims;
  for (const Disk& disk : domain.disks) {
    if (disk.source.empty() || disk.read_only || disk.shareable) continue;
    const std::string* root = root_of(config, disk.source);
    if (!root)
      return Error::make(ErrorCode::kDenied, "disk '" + disk.source + "' is not below any storage root of " +
                                                 config.source);
    DiskClaim claim;
    claim.path = disk.source;
    claim.fd = VL_TRY(open_beneath(*root, disk.source));
    VL_TRY(sys::check(::fstat(claim.fd.get(), &claim.st), "stat disk '" + disk.source + "'"));
    if (S_ISLNK(claim.st.st_mode))  // RESOLVE_NO_SYMLINKS hands back O_PATH|O_NOFOLLOW links
      return Error::make(ErrorCode::kDenied, "disk '" + disk.source + "' is a symlink; refusing to follow it");
    claim.block = S_ISBLK(claim.st.st_mode);
    if (!S_ISREG(claim.st.st_mode) && !claim.block)
      return Error::make(ErrorCode::kDenied, "disk '" + disk.source + "' is neither a regular file nor a block device");
    if (claim.block != (disk.kind == Disk::Kind::kBlock))
      return Error::invalid("disk '" + disk.source + "' is declared type='" +
                            (disk.kind == Disk::Kind::kBlock ? "block" : "file") + "' but is not one");
    if (!claim.block && claim.st.st_nlink != 1)
      return Error::make(ErrorCode::kDenied, "disk '" + disk.source + "' has " + std::to_string(claim.st.st_nlink) +
                                                 " hard links; refusing to change its owner");
    claims.push_back(std::move(claim));
  }
  return claims;
}

Result<void> check_disks_unclaimed(const HostConfig& config, const VmName& vm,
                                   const std::vector<DiskClaim>& claims) {
  std::string dir = config.state_dir + "/disks";
  DIR* d = ::opendir(dir.c_str());
  if (!d) return {};  // no journals at all
  std::unique_ptr<DIR, int (*)(DIR*)> closer(d, ::closedir);
  while (dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name.size() < 6 || name.substr(name.size() - 5) != ".json" || name == vm.str() + ".json") continue;
    auto journal = read_journal(dir + "/" + name);
    if (!journal) continue;
    for (const Json& entry : (*journal)["disks"])
      for (const DiskClaim& c : claims)
        if (entry.value("dev", uint64_t{0}) == c.st.st_dev && entry.value("ino", uint64_t{0}) == c.st.st_ino)
          return Error::make(ErrorCode::kConflict, "disk '" + c.path + "' is in use by VM '" +
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
    VL_TRY(sys::check(::fchownat(c.fd.get(), "", uid, gid, AT_EMPTY_PATH), "chown disk '" + c.path + "'"));
    // fchmod does not take O_PATH fds; the /proc link refers to the very inode the fd holds.
    std::string proc = "/proc/self/fd/" + std::to_string(c.fd.get());
    VL_TRY(sys::check(::chmod(proc.c_str(), 0600), "chmod disk '" + c.path + "'"));
    log_info("disk '" + c.path + "' now owned by " + std::to_string(uid) + ":" + std::to_string(gid) + " mode 0600");
  }
  return {};
}

Result<void> restore_disks(const HostConfig& config, const VmName& vm) {
  std::string path = config.disk_journal_path(vm);
  auto journal = read_journal(path);
  if (!journal) {
    if (journal.error().sys_errno == ENOENT) return {};
    return std::move(journal).error();
  }
  Result<void> status;
  for (const Json& entry : (*journal)["disks"]) {
    std::string disk = entry.value("path", "");
    const std::string* root = root_of(config, disk);
    if (!root) {
      log_warning("disk '" + disk + "' in the journal is no longer below a storage root, ignoring");
      continue;
    }
    auto fd = open_beneath(*root, disk);
    if (!fd) {
      log_warning(fd.error().message() + ", ignoring");
      continue;
    }
    struct stat st {};
    if (::fstat(fd->get(), &st) < 0 || st.st_dev != entry.value("dev", uint64_t{0}) ||
        st.st_ino != entry.value("ino", uint64_t{0})) {
      log_warning("disk '" + disk + "' was replaced since launch; not restoring its owner, ignoring");
      continue;
    }
    uid_t uid = entry.value("uid", 0u);
    gid_t gid = entry.value("gid", 0u);
    mode_t mode = entry.value("mode", 0600u);
    std::string proc = "/proc/self/fd/" + std::to_string(fd->get());
    // PRIV: restores exactly what the root-owned journal recorded, on the same inode.
    if (::fchownat(fd->get(), "", uid, gid, AT_EMPTY_PATH) < 0 || ::chmod(proc.c_str(), mode) < 0) {
      status = Error::from_errno("restore owner of disk '" + disk + "'");
      continue;
    }
    log_info("disk '" + disk + "' restored to " + std::to_string(uid) + ":" + std::to_string(gid));
  }
  VL_CHECK(status);
  if (::unlink(path.c_str()) < 0 && errno != ENOENT) return Error::from_errno("remove '" + path + "'");
  return {};
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
  if (::unlink(path.c_str()) < 0 && errno != ENOENT) return Error::from_errno("remove '" + path + "'");
  return {};
}

}  // namespace vl::helper
