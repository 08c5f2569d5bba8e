#include "helper/nvram.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string_view>

#include "common/argv_policy.h"
#include "common/sys.h"
#include "common/unique_fd.h"

namespace vl::helper {

namespace {

// Where Debian installs UEFI firmware for QEMU.
constexpr std::string_view kUefiDirs[] = {"/usr/share/OVMF/", "/usr/share/ovmf/", "/usr/share/qemu/",
                                          "/usr/share/AAVMF/", "/usr/share/qemu-efi-aarch64/"};

Result<void> check_firmware(const std::string& path, const char* what) {
  bool in_dir = false;
  for (std::string_view dir : kUefiDirs) in_dir = in_dir || path.rfind(dir, 0) == 0;
  if (!in_dir)
    return Error::make(ErrorCode::kDenied, std::string("UEFI ") + what + " '" + path +
                                               "' is not in a firmware directory (/usr/share/OVMF, /usr/share/qemu, ...)");
  if (auto r = check_root_owned_file(path); !r) return r.error().wrap(std::string("UEFI ") + what);
  return {};
}

// The store's directory, created if missing, and checked: root's, changeable by root only.
Result<UniqueFd> open_nvram_dir(const HostConfig& config, bool create) {
  std::string dir = config.nvram_dir();
  if (dir.empty()) return Error::make(ErrorCode::kInvalid, "UEFI needs a storage root for its variable store ([storage] roots is empty)");
  // PRIV: a fixed name under the first storage root of the root-owned configuration.
  if (create && ::mkdir(dir.c_str(), 0711) < 0 && errno != EEXIST) return Error::from_errno("create " + quote_for_message(dir, kQuotePathMax));
  UniqueFd fd(::open(dir.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd) return Error::from_errno("open " + quote_for_message(dir, kQuotePathMax));
  struct stat st {};
  VL_TRY(sys::check(::fstat(fd.get(), &st), "stat " + quote_for_message(dir, kQuotePathMax)));
  if (st.st_uid != 0 || (st.st_mode & (S_IWGRP | S_IWOTH)))
    return Error::make(ErrorCode::kDenied, quote_for_message(dir, kQuotePathMax) + " must be a directory only root can change");
  return fd;
}

Result<void> copy_template(const std::string& from, int to, const std::string& shown) {
  UniqueFd in(::open(from.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!in) return Error::from_errno("open UEFI variable store template " + quote_for_message(from, kQuotePathMax));
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(in.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::from_errno("read " + quote_for_message(from, kQuotePathMax));
    if (n == 0) break;
    VL_CHECK(sys::write_all(to, std::string_view(buf, static_cast<size_t>(n))));
  }
  VL_TRY(sys::check(::fsync(to), "sync " + quote_for_message(shown, kQuotePathMax)));
  return {};
}

}  // namespace

Result<bool> prepare_nvram(const HostConfig& config, const VmName& vm, const Uefi& uefi, uid_t uid) {
  VL_CHECK(check_firmware(uefi.code, "code image"));
  VL_CHECK(check_firmware(uefi.vars_template, "variable store template"));
  UniqueFd dir = VL_TRY(open_nvram_dir(config, /*create=*/true));
  std::string path = config.nvram_path(vm);
  std::string name = vm.str() + "_VARS.fd";
  UniqueFd existing(::openat(dir.get(), name.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
  if (existing) {
    struct stat st {};
    VL_TRY(sys::check(::fstat(existing.get(), &st), "stat " + quote_for_message(path, kQuotePathMax)));
    if (!S_ISREG(st.st_mode) || st.st_nlink != 1)
      return Error::make(ErrorCode::kDenied, "UEFI variable store " + quote_for_message(path, kQuotePathMax) + " must be a regular file with one link");
    // PRIV: the fd of a regular file in a directory only root can change; O_PATH, so chmod
    // goes through the fd's /proc entry as disk_owner does.
    VL_TRY(sys::check(::fchownat(existing.get(), "", uid, uid, AT_EMPTY_PATH), "chown " + quote_for_message(path, kQuotePathMax)));
    std::string proc = "/proc/self/fd/" + std::to_string(existing.get());
    VL_TRY(sys::check(::chmod(proc.c_str(), 0600), "chmod " + quote_for_message(path, kQuotePathMax)));
    return false;
  }
  if (errno != ENOENT) return Error::from_errno("open " + quote_for_message(path, kQuotePathMax));
  // PRIV: an unnamed file in root's directory, filled from root-owned firmware, then given to
  // the VM's uid and linked under the name no one else can create there.
  UniqueFd tmp(::openat(dir.get(), ".", O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600));
  if (!tmp) return Error::from_errno("create UEFI variable store in " + quote_for_message(config.nvram_dir(), kQuotePathMax));
  VL_CHECK(copy_template(uefi.vars_template, tmp.get(), path));
  VL_TRY(sys::check(::fchown(tmp.get(), uid, uid), "chown " + quote_for_message(path, kQuotePathMax)));
  VL_TRY(sys::check(::fchmod(tmp.get(), 0600), "chmod " + quote_for_message(path, kQuotePathMax)));
  std::string proc = "/proc/self/fd/" + std::to_string(tmp.get());
  VL_TRY(sys::check(::linkat(AT_FDCWD, proc.c_str(), dir.get(), name.c_str(), AT_SYMLINK_FOLLOW), "create " + quote_for_message(path, kQuotePathMax)));
  return true;
}

Result<void> remove_nvram(const HostConfig& config, const VmName& vm) {
  auto dir = open_nvram_dir(config, /*create=*/false);
  if (!dir) return dir.error().sys_errno == ENOENT ? Result<void>() : Result<void>(dir.error());
  std::string name = vm.str() + "_VARS.fd";
  if (::unlinkat(dir->get(), name.c_str(), 0) < 0 && errno != ENOENT)
    return Error::from_errno("remove " + quote_for_message(config.nvram_path(vm), kQuotePathMax));
  return {};
}

}  // namespace vl::helper
