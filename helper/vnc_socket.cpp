#include "helper/vnc_socket.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <memory>

#include "common/sys.h"
#include "common/unique_fd.h"
#include "helper/runtime_dir.h"

namespace vl::helper {

namespace {

constexpr char kBaseDir[] = "vnc";
// QEMU puts one socket there. Anything deeper is an emulator playing games; it is still removed,
// but no deeper than this.
constexpr int kMaxDepth = 8;

// Empties the directory `dir` (named `path` in messages). unlinkat never follows a symlink, and
// a subdirectory is opened with O_NOFOLLOW below the fd of its parent: nothing outside is touched.
Result<void> empty_dir(int dir, const std::string& path, int depth) {
  if (depth > kMaxDepth) return Error::make(ErrorCode::kDenied, quote_for_message(path, kQuotePathMax) + " is nested too deep");
  UniqueFd copy(::fcntl(dir, F_DUPFD_CLOEXEC, 0));
  if (!copy) return Error::from_errno("duplicate the fd of " + quote_for_message(path, kQuotePathMax));
  std::unique_ptr<DIR, int (*)(DIR*)> d(::fdopendir(copy.get()), ::closedir);
  if (!d) return Error::from_errno("list " + quote_for_message(path, kQuotePathMax));
  (void)copy.release();  // the DIR owns it now
  ::rewinddir(d.get());
  while (const dirent* e = ::readdir(d.get())) {
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    std::string sub = path + "/" + name;
    // PRIV: an entry of a directory opened by fd, below root's RUNTIME/vnc.
    if (::unlinkat(dir, name.c_str(), 0) == 0 || errno == ENOENT) continue;
    if (errno != EISDIR) return Error::from_errno("remove " + quote_for_message(sub, kQuotePathMax));
    UniqueFd child(::openat(dir, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!child) return Error::from_errno("open " + quote_for_message(sub, kQuotePathMax));
    VL_CHECK(empty_dir(child.get(), sub, depth + 1));
    if (::unlinkat(dir, name.c_str(), AT_REMOVEDIR) < 0 && errno != ENOENT)
      return Error::from_errno("remove " + quote_for_message(sub, kQuotePathMax));
  }
  return {};
}

}  // namespace

Result<void> create_vnc_socket_dir(const HostConfig& config, const VmName& vm, uid_t uid, gid_t daemon_gid) {
  // A leftover of a launch whose cleanup did not finish: its emulator is gone (the runtime
  // directory, created before this, is the VM's launch lock).
  VL_CHECK(remove_vnc_socket_dir(config, vm));
  UniqueFd base = VL_TRY(open_runtime_subdir(config, kBaseDir, /*create=*/true));
  std::string path = config.vnc_socket_dir(vm);
  // PRIV: a VM name (no '/', no '.') below root's own directory; root's 0700 until handed over.
  VL_TRY(sys::check(::mkdirat(base.get(), vm.str().c_str(), 0700), "create " + quote_for_message(path, kQuotePathMax)));
  UniqueFd dir(::openat(base.get(), vm.str().c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  Result<void> done = dir ? Result<void>() : Result<void>(Error::from_errno("open " + quote_for_message(path, kQuotePathMax)));
  // PRIV: the directory root just created, handed to the VM's uid (which binds the socket
  // there) with the daemon's group, inherited by the socket through the setgid bit. The mode
  // first, while the group is still root's: a chmod that sets S_ISGID on a directory of a group
  // the caller is not in needs CAP_FSETID, which kvm-vm@.service does not grant (the kernel
  // would drop the bit silently); a chown of a directory keeps it.
  if (done && ::fchmod(dir.get(), 02750) < 0) done = Error::from_errno("chmod " + quote_for_message(path, kQuotePathMax));
  if (done && ::fchown(dir.get(), uid, daemon_gid) < 0) done = Error::from_errno("chown " + quote_for_message(path, kQuotePathMax));
  struct stat st {};
  if (done && ::fstat(dir.get(), &st) < 0) done = Error::from_errno("stat " + quote_for_message(path, kQuotePathMax));
  if (done && ((st.st_mode & 07777) != 02750 || st.st_uid != uid || st.st_gid != daemon_gid))
    done = Error::make(ErrorCode::kSystem, quote_for_message(path, kQuotePathMax) + " did not get owner " + std::to_string(uid) + ":" +
                                               std::to_string(daemon_gid) + " and mode 02750");
  if (!done) (void)::unlinkat(base.get(), vm.str().c_str(), AT_REMOVEDIR);  // still empty: nobody else can enter it
  return done;
}

Result<void> remove_vnc_socket_dir(const HostConfig& config, const VmName& vm) {
  auto base = open_runtime_subdir(config, kBaseDir, /*create=*/false);
  if (!base) return is_missing(base.error()) ? Result<void>() : Result<void>(base.error());
  std::string path = config.vnc_socket_dir(vm);
  UniqueFd dir(::openat(base->get(), vm.str().c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!dir && errno == ENOENT) return {};
  if (!dir) return Error::from_errno("open " + quote_for_message(path, kQuotePathMax));
  // PRIV: taken back from the VM's uid first, so that nothing it still runs can add entries
  // while they are removed.
  VL_TRY(sys::check(::fchown(dir.get(), 0, 0), "chown " + quote_for_message(path, kQuotePathMax)));
  VL_TRY(sys::check(::fchmod(dir.get(), 0700), "chmod " + quote_for_message(path, kQuotePathMax)));
  VL_CHECK(empty_dir(dir.get(), path, 0));
  if (::unlinkat(base->get(), vm.str().c_str(), AT_REMOVEDIR) < 0 && errno != ENOENT)
    return Error::from_errno("remove " + quote_for_message(path, kQuotePathMax));
  return {};
}

}  // namespace vl::helper
