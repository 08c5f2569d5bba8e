#include "helper/disk_secret.h"

#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>

#include "common/sys.h"

namespace vl::helper {

namespace {

constexpr int kAllSeals = F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE;

// The passphrase must not outlive its use in root's memory longer than needed: a core dump or
// a swapped page of the helper would hold it.
void wipe(std::string& s) {
  if (!s.empty()) ::explicit_bzero(s.data(), s.size());
  s.clear();
}

std::string owner_and_mode(const struct stat& st) {
  char mode[8];
  std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
  return "owned by " + std::to_string(st.st_uid) + ":" + std::to_string(st.st_gid) + ", mode " + mode + ", " +
         std::to_string(st.st_nlink) + " link(s)";
}

Result<std::string> checked_passphrase(std::string text, const std::string& where) {
  if (text.size() > kMaxPassphraseBytes) {
    wipe(text);
    return Error::invalid("the passphrase in " + where + " is longer than " + std::to_string(kMaxPassphraseBytes) + " bytes");
  }
  if (text.empty()) return Error::invalid("the passphrase in " + where + " is empty");
  return text;
}

}  // namespace

Result<std::string> read_key_file(const HostConfig& config, const VmName& vm) {
  const std::string& dir_path = config.keys_dir;
  std::string path = config.key_file_path(vm);
  // PRIV: the directory named by root's configuration; O_NOFOLLOW on each opened name, and
  // every check below is on the opened fd.
  UniqueFd dir(::open(dir_path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!dir && errno == ENOENT) return Error::make(ErrorCode::kNotFound, "no key file " + quote_for_message(path, kQuotePathMax));
  if (!dir) return Error::from_errno("open the key directory " + quote_for_message(dir_path, kQuotePathMax));
  struct stat st {};
  VL_TRY(sys::check(::fstat(dir.get(), &st), "stat " + quote_for_message(dir_path, kQuotePathMax)));
  if (st.st_uid != 0 || (st.st_mode & (S_IWGRP | S_IWOTH)))
    return Error::make(ErrorCode::kDenied, "the key directory " + quote_for_message(dir_path, kQuotePathMax) + " is " +
                                               owner_and_mode(st) + ": it must be root's, writable by no one else");
  std::string name = vm.str() + ".key";
  // O_NONBLOCK: a FIFO planted here is refused below, not waited on.
  UniqueFd fd(::openat(dir.get(), name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC));
  if (!fd && errno == ENOENT) return Error::make(ErrorCode::kNotFound, "no key file " + quote_for_message(path, kQuotePathMax));
  if (!fd && errno == ELOOP)
    return Error::make(ErrorCode::kDenied, "key file " + quote_for_message(path, kQuotePathMax) + " is a symlink; refusing it");
  if (!fd) return Error::from_errno("open key file " + quote_for_message(path, kQuotePathMax));
  VL_TRY(sys::check(::fstat(fd.get(), &st), "stat " + quote_for_message(path, kQuotePathMax)));
  if (!S_ISREG(st.st_mode) || st.st_nlink != 1 || st.st_uid != 0 || st.st_gid != 0 || (st.st_mode & 07177))
    return Error::make(ErrorCode::kDenied, "key file " + quote_for_message(path, kQuotePathMax) + " is " + owner_and_mode(st) +
                                               ": it must be a regular file with one link, root:root, mode 0600 or 0400 "
                                               "(chown root:root " + path + "; chmod 0600 " + path + ")");
  auto text = sys::read_all(fd.get(), kMaxPassphraseBytes + 2);
  if (!text) return text.error().wrap("read key file " + quote_for_message(path, kQuotePathMax));
  // `echo PASSPHRASE > FILE` ends it with a newline that is no part of the passphrase.
  if (text->ends_with('\n')) text->pop_back();
  return checked_passphrase(std::move(text).value(), "key file " + quote_for_message(path, kQuotePathMax));
}

Result<std::string> read_passphrase_fd(int fd) {
  // A sealed memfd cannot change while it is read, and reading it never blocks: a pipe or a
  // socket whose writer stalls would hold the launch (and the VM's lock) forever.
  int seals = ::fcntl(fd, F_GET_SEALS);
  constexpr int kNeeded = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE;
  if (seals < 0 || (seals & kNeeded) != kNeeded)
    return Error::invalid("the passphrase given at start is not a sealed memfd");
  std::string text(kMaxPassphraseBytes + 1, '\0');
  ssize_t n = sys::retry_eintr([&] { return ::pread(fd, text.data(), text.size(), 0); });
  if (n < 0) {
    wipe(text);
    return Error::from_errno("read the passphrase given at start");
  }
  // Only `n` bytes are the passphrase; the rest of the buffer is zero and dropped.
  text.resize(static_cast<size_t>(n));
  return checked_passphrase(std::move(text), "the passphrase given at start");
}

Result<UniqueFd> passphrase_memfd(std::string_view passphrase) {
  UniqueFd fd = VL_TRY(sys::check_fd(::memfd_create("vmlaunch-disk-secret", MFD_CLOEXEC | MFD_ALLOW_SEALING),
                                     "memfd_create for the disk passphrase"));
  VL_CHECK(sys::write_all(fd.get(), passphrase));
  VL_TRY(sys::check(::fcntl(fd.get(), F_ADD_SEALS, kAllSeals), "seal the disk passphrase's memfd"));
  return fd;
}

Result<UniqueFd> disk_secret_for(const HostConfig& config, const Domain& domain, int operator_fd) {
  auto passphrase = operator_fd >= 0 ? read_passphrase_fd(operator_fd) : read_key_file(config, domain.name);
  if (!passphrase && passphrase.error().code == ErrorCode::kNotFound) {
    std::string target;
    for (const Disk& d : domain.disks)
      if (d.luks && target.empty()) target = d.target;
    return Error::make(ErrorCode::kNotFound, "disk '" + target + "' of VM '" + domain.name.str() +
                                                 "' is encrypted, and no passphrase was given: put it in " +
                                                 quote_for_message(config.key_file_path(domain.name), kQuotePathMax) +
                                                 " (root:root 0600) or start the VM with 'vmctl start --ask-passphrase'");
  }
  if (!passphrase) return std::move(passphrase).error();
  auto fd = passphrase_memfd(*passphrase);
  wipe(*passphrase);
  return fd;
}

}  // namespace vl::helper
