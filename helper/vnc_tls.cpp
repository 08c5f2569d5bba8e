#include "helper/vnc_tls.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <iterator>

#include "common/sys.h"
#include "common/unique_fd.h"
#include "helper/runtime_dir.h"

namespace vl::helper {

namespace {

// The names tls-creds-x509 reads in its dir (endpoint=server).
constexpr const char* kCaCert = "ca-cert.pem";
constexpr const char* kServerCert = "server-cert.pem";
constexpr const char* kServerKey = "server-key.pem";
constexpr const char* kFiles[] = {kCaCert, kServerCert, kServerKey};
constexpr char kBaseDir[] = "vnc-tls";
// A certificate chain is a few KiB; anything far larger is not one.
constexpr size_t kMaxPemBytes = 256 * 1024;

Result<void> check_root_dir_fd(int fd, const std::string& path) {
  struct stat st {};
  VL_TRY(sys::check(::fstat(fd, &st), "stat " + quote_for_message(path, kQuotePathMax)));
  if (!S_ISDIR(st.st_mode) || st.st_uid != 0 || (st.st_mode & (S_IWGRP | S_IWOTH)))
    return Error::make(ErrorCode::kDenied, quote_for_message(path, kQuotePathMax) + " must be a directory only root can change");
  return {};
}

Result<std::string> read_credential(int dir, const std::string& dir_path, const char* name, bool secret) {
  std::string path = dir_path + "/" + name;
  // PRIV: a fixed name below a directory only root can change; O_NOFOLLOW and O_NONBLOCK, so
  // neither a symlink nor a FIFO is read.
  UniqueFd fd(::openat(dir, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  if (!fd && errno == ENOENT)
    return Error::make(ErrorCode::kNotFound, "VNC over TLS is on ([vnc] tls), but " + quote_for_message(path, kQuotePathMax) + " is missing");
  if (!fd && errno == ELOOP)
    return Error::make(ErrorCode::kDenied, "VNC TLS credential " + quote_for_message(path, kQuotePathMax) + " is a symlink; refusing it");
  if (!fd) return Error::from_errno("open VNC TLS credential " + quote_for_message(path, kQuotePathMax));
  struct stat st {};
  VL_TRY(sys::check(::fstat(fd.get(), &st), "stat " + quote_for_message(path, kQuotePathMax)));
  if (!S_ISREG(st.st_mode) || st.st_nlink != 1 || st.st_uid != 0 || (st.st_mode & (S_IWGRP | S_IWOTH)))
    return Error::make(ErrorCode::kDenied, "VNC TLS credential " + quote_for_message(path, kQuotePathMax) +
                                               " must be a regular file with one link that only root can change");
  if (secret && (st.st_mode & (S_IRWXG | S_IRWXO)))
    return Error::make(ErrorCode::kDenied, "VNC TLS key " + quote_for_message(path, kQuotePathMax) +
                                               " is readable by users other than root; run 'chmod 0600 " + path + "'");
  auto text = sys::read_all(fd.get(), kMaxPemBytes);
  if (!text) return text.error().wrap("read " + quote_for_message(path, kQuotePathMax));
  return text;
}

Result<void> write_credentials(int base, const HostConfig& config, const VmName& vm, const VncCredentials& creds,
                               uid_t uid, gid_t gid) {
  std::string dir_path = config.vnc_tls_dir(vm);
  // PRIV: a VM name (no '/', no '.') below root's own directory; 0700 until it is filled.
  VL_TRY(sys::check(::mkdirat(base, vm.str().c_str(), 0700), "create " + quote_for_message(dir_path, kQuotePathMax)));
  UniqueFd dir(::openat(base, vm.str().c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!dir) return Error::from_errno("open " + quote_for_message(dir_path, kQuotePathMax));
  const std::string* contents[] = {&creds.ca_cert, &creds.server_cert, &creds.server_key};
  for (size_t i = 0; i < std::size(kFiles); ++i) {
    std::string path = dir_path + "/" + kFiles[i];
    // PRIV: a new file (O_EXCL) in the directory root just created; given to the VM's uid once
    // written, through the fd.
    UniqueFd fd = VL_TRY(sys::check_fd(::openat(dir.get(), kFiles[i], O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600),
                                       "create " + quote_for_message(path, kQuotePathMax)));
    VL_CHECK(sys::write_all(fd.get(), *contents[i]));
    VL_TRY(sys::check(::fchown(fd.get(), uid, gid), "chown " + quote_for_message(path, kQuotePathMax)));
    VL_TRY(sys::check(::fchmod(fd.get(), 0600), "chmod " + quote_for_message(path, kQuotePathMax)));
  }
  // PRIV: the directory root just created and filled; the VM's group may enter, not write.
  VL_TRY(sys::check(::fchown(dir.get(), 0, gid), "chown " + quote_for_message(dir_path, kQuotePathMax)));
  VL_TRY(sys::check(::fchmod(dir.get(), 0750), "chmod " + quote_for_message(dir_path, kQuotePathMax)));
  return {};
}

}  // namespace

Result<VncCredentials> read_vnc_credentials(const HostConfig& config, const VmName& vm) {
  const std::string& shared = config.vnc.tls_dir;
  // The operator's path (symlinks above it are the operator's, like /etc/vmlaunch's); what is
  // checked is the directory opened.
  UniqueFd dir(::open(shared.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir && errno == ENOENT)
    return Error::make(ErrorCode::kNotFound, "VNC over TLS is on ([vnc] tls in " + config.source + "), but its directory " +
                                                 quote_for_message(shared, kQuotePathMax) + " is missing");
  if (!dir) return Error::from_errno("open " + quote_for_message(shared, kQuotePathMax));
  VL_CHECK(check_root_dir_fd(dir.get(), shared));
  VncCredentials creds;
  creds.source_dir = shared;
  // A per-VM identity, if the operator made one: tls_dir/NAME/.
  UniqueFd own(::openat(dir.get(), vm.str().c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (own) {
    creds.source_dir = shared + "/" + vm.str();
    VL_CHECK(check_root_dir_fd(own.get(), creds.source_dir));
    dir = std::move(own);
  } else if (errno != ENOENT) {
    return Error::from_errno("open " + quote_for_message(shared + "/" + vm.str(), kQuotePathMax) + " (a per-VM credentials directory must be a directory, not a symlink)");
  }
  creds.ca_cert = VL_TRY(read_credential(dir.get(), creds.source_dir, kCaCert, false));
  creds.server_cert = VL_TRY(read_credential(dir.get(), creds.source_dir, kServerCert, false));
  creds.server_key = VL_TRY(read_credential(dir.get(), creds.source_dir, kServerKey, true));
  return creds;
}

Result<void> install_vnc_credentials(const HostConfig& config, const VmName& vm, const VncCredentials& creds,
                                     uid_t uid, gid_t gid) {
  // A leftover of a launch whose cleanup did not finish: the emulator it served is gone
  // (the runtime directory, created before this, is the VM's launch lock).
  VL_CHECK(remove_vnc_credentials(config, vm));
  UniqueFd base = VL_TRY(open_runtime_subdir(config, kBaseDir, /*create=*/true));
  auto written = write_credentials(base.get(), config, vm, creds, uid, gid);
  if (!written) (void)remove_vnc_credentials(config, vm);  // the error below is the one that matters
  return written;
}

Result<void> remove_vnc_credentials(const HostConfig& config, const VmName& vm) {
  auto base = open_runtime_subdir(config, kBaseDir, /*create=*/false);
  if (!base) return is_missing(base.error()) ? Result<void>() : Result<void>(base.error());
  std::string dir_path = config.vnc_tls_dir(vm);
  UniqueFd dir(::openat(base->get(), vm.str().c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!dir && errno == ENOENT) return {};
  if (!dir) return Error::from_errno("open " + quote_for_message(dir_path, kQuotePathMax));
  // Only root can add entries here (0750, root's): these three names are all there can be.
  // unlinkat never follows a symlink.
  for (const char* name : kFiles)
    if (::unlinkat(dir.get(), name, 0) < 0 && errno != ENOENT)
      return Error::from_errno("remove " + quote_for_message(dir_path + "/" + name, kQuotePathMax));
  if (::unlinkat(base->get(), vm.str().c_str(), AT_REMOVEDIR) < 0 && errno != ENOENT)
    return Error::from_errno("remove " + quote_for_message(dir_path, kQuotePathMax));
  return {};
}

}  // namespace vl::helper
