#include "helper/runtime_dir.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <memory>

#include "common/sys.h"

namespace vl::helper {

namespace {

constexpr char kSocket[] = "qmp.sock";
constexpr char kAgentSocket[] = "agent.sock";
constexpr char kConsoleSocket[] = "console.sock";
constexpr char kState[] = "state.json";
constexpr char kStateTmp[] = "state.json.tmp";
constexpr char kClaim[] = "claim.json";
constexpr char kClaimTmp[] = "claim.json.tmp";
constexpr char kEmulatorTail[] = "emulator.log";

// Who besides root may add entries to a directory root works in.
enum class Writers {
  kRootOnly,      // vms/ and vms/NAME
  kStickyShared,  // RUNTIME: others too, but the sticky bit keeps root's entries root's
};

// Opens `name` below `at` as a directory, never through a symlink, and checks that only root
// can change which entries it has. `path` names it in errors.
Result<UniqueFd> open_root_dir(int at, const std::string& name, const std::string& path, Writers writers) {
  UniqueFd fd(::openat(at, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd) {
    if (errno == ELOOP || errno == ENOTDIR)
      return Error::make(ErrorCode::kDenied, quote_for_message(path, kQuotePathMax) + " is not a directory (a symlink?); refusing to work below it");
    return Error::from_errno("open " + quote_for_message(path, kQuotePathMax));
  }
  struct stat st {};
  VL_TRY(sys::check(::fstat(fd.get(), &st), "stat " + quote_for_message(path, kQuotePathMax)));
  bool others_write = (st.st_mode & (S_IWGRP | S_IWOTH)) != 0;
  if (st.st_uid != 0 || (others_write && !(writers == Writers::kStickyShared && (st.st_mode & S_ISVTX))))
    return Error::make(ErrorCode::kDenied,
                       quote_for_message(path, kQuotePathMax) + " must be a directory owned by root and writable by root only" +
                           (writers == Writers::kStickyShared ? " (or sticky)" : "") + "; refusing to work below it");
  return fd;
}

Result<UniqueFd> open_vm_dir(const RuntimeDirs& dirs, const HostConfig& config, const VmName& vm) {
  return open_root_dir(dirs.vms.get(), vm.str(), config.vm_runtime_dir(vm), Writers::kRootOnly);
}

}  // namespace

bool is_missing(const Error& error) { return error.code == ErrorCode::kSystem && error.sys_errno == ENOENT; }

Result<RuntimeDirs> open_runtime_dirs(const HostConfig& config, bool create) {
  const std::string& runtime = config.runtime_dir;
  std::string vms = runtime + "/vms";
  if (create && ::mkdir(runtime.c_str(), 0755) < 0 && errno != EEXIST) return Error::from_errno("create " + quote_for_message(runtime, kQuotePathMax));
  RuntimeDirs dirs;
  dirs.runtime = VL_TRY(open_root_dir(AT_FDCWD, runtime, runtime, Writers::kStickyShared));
  // PRIV: root's own directory, created inside a directory just checked to be root's.
  if (create && ::mkdirat(dirs.runtime.get(), "vms", 0755) < 0 && errno != EEXIST)
    return Error::from_errno("create " + quote_for_message(vms, kQuotePathMax));
  dirs.vms = VL_TRY(open_root_dir(dirs.runtime.get(), "vms", vms, Writers::kRootOnly));
  return dirs;
}

Result<UniqueFd> open_runtime_subdir(const HostConfig& config, const char* name, bool create) {
  RuntimeDirs dirs = VL_TRY(open_runtime_dirs(config, create));
  std::string path = config.runtime_dir + "/" + name;
  // PRIV: a fixed name inside a directory just checked to be root's (or sticky).
  if (create && ::mkdirat(dirs.runtime.get(), name, 0711) < 0 && errno != EEXIST)
    return Error::from_errno("create " + quote_for_message(path, kQuotePathMax));
  return open_root_dir(dirs.runtime.get(), name, path, Writers::kRootOnly);
}

Result<void> create_runtime_dir(const HostConfig& config, const VmName& vm, gid_t daemon_gid) {
  RuntimeDirs dirs = VL_TRY(open_runtime_dirs(config, true));
  std::string dir = config.vm_runtime_dir(vm);
  if (::mkdirat(dirs.vms.get(), vm.str().c_str(), 0700) < 0) {
    if (errno == EEXIST)
      return Error::make(ErrorCode::kConflict, "VM '" + vm.str() + "' is already running, or its last run was "
                                               "not cleaned up (" + quote_for_message(dir, kQuotePathMax) + " exists; run 'vmlaunch-helper cleanup " +
                                               vm.str() + "')");
    return Error::from_errno("create " + quote_for_message(dir, kQuotePathMax));
  }
  auto owned = [&]() -> Result<void> {
    UniqueFd fd = VL_TRY(open_vm_dir(dirs, config, vm));
    // PRIV: the directory root just created; the group is the configured daemon group.
    VL_TRY(sys::check(::fchown(fd.get(), 0, daemon_gid), "set owner of " + quote_for_message(dir, kQuotePathMax)));
    VL_TRY(sys::check(::fchmod(fd.get(), 0750), "set mode of " + quote_for_message(dir, kQuotePathMax)));
    return {};
  }();
  if (!owned) ::unlinkat(dirs.vms.get(), vm.str().c_str(), AT_REMOVEDIR);
  return owned;
}

namespace {

// Binds and listens on RUNTIME/vms/NAME/FILE (root:daemon_gid 0660): a socket between the
// emulator, which gets the listening fd, and the daemon, which connects by path.
Result<UniqueFd> bind_vm_socket(const HostConfig& config, const VmName& vm, const char* file, const char* what,
                                gid_t daemon_gid) {
  RuntimeDirs dirs = VL_TRY(open_runtime_dirs(config, false));
  UniqueFd dir = VL_TRY(open_vm_dir(dirs, config, vm));
  std::string path = config.vm_runtime_dir(vm) + "/" + file;
  sockaddr_un sa{};
  if (path.size() >= sizeof sa.sun_path) return Error::invalid(std::string(what) + " socket path " + quote_for_message(path, kQuotePathMax) + " is too long");
  UniqueFd fd = VL_TRY(sys::check_fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), std::string("create ") + what + " socket"));
  sa.sun_family = AF_UNIX;
  path.copy(sa.sun_path, sizeof sa.sun_path - 1);
  // bind() takes a path; every directory on it was just checked to be changeable by root only.
  VL_TRY(sys::check(::bind(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa), "bind " + quote_for_message(path, kQuotePathMax)));
  // PRIV: the socket root just bound, in root's own directory; the group is the daemon's.
  if (::fchownat(dir.get(), file, 0, daemon_gid, AT_SYMLINK_NOFOLLOW) < 0 || ::fchmodat(dir.get(), file, 0660, 0) < 0 ||
      ::listen(fd.get(), 4) < 0) {
    Error e = Error::from_errno(std::string("set up ") + what + " socket " + quote_for_message(path, kQuotePathMax));
    ::unlinkat(dir.get(), file, 0);
    return e;
  }
  return fd;
}

}  // namespace

Result<UniqueFd> bind_monitor_socket(const HostConfig& config, const VmName& vm, gid_t daemon_gid) {
  return bind_vm_socket(config, vm, kSocket, "monitor", daemon_gid);
}

Result<UniqueFd> bind_agent_socket(const HostConfig& config, const VmName& vm, gid_t daemon_gid) {
  return bind_vm_socket(config, vm, kAgentSocket, "guest agent", daemon_gid);
}

Result<UniqueFd> bind_console_socket(const HostConfig& config, const VmName& vm, gid_t daemon_gid) {
  return bind_vm_socket(config, vm, kConsoleSocket, "serial console", daemon_gid);
}

Result<UniqueFd> create_emulator_tail(const HostConfig& config, const VmName& vm, gid_t daemon_gid) {
  RuntimeDirs dirs = VL_TRY(open_runtime_dirs(config, false));
  UniqueFd dir = VL_TRY(open_vm_dir(dirs, config, vm));
  std::string path = config.vm_runtime_dir(vm) + "/" + kEmulatorTail;
  UniqueFd fd = VL_TRY(sys::check_fd(
      ::openat(dir.get(), kEmulatorTail, O_WRONLY | O_APPEND | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0640),
      "create " + quote_for_message(path, kQuotePathMax)));
  // PRIV: the file root just created, in root's own directory; the group is the daemon's.
  if (::fchown(fd.get(), 0, daemon_gid) < 0) {
    Error e = Error::from_errno("set owner of " + quote_for_message(path, kQuotePathMax));
    ::unlinkat(dir.get(), kEmulatorTail, 0);
    return e;
  }
  return fd;
}

namespace {

// Writes a VmState to RUNTIME/vms/NAME/FILE atomically (through TMP), root:gid with `mode`.
Result<void> write_state_file(const HostConfig& config, const VmState& state, const char* file, const char* tmp,
                              mode_t mode, gid_t gid) {
  auto vm = VmName::parse(state.vm);
  if (!vm) return std::move(vm).error();
  RuntimeDirs dirs = VL_TRY(open_runtime_dirs(config, false));
  UniqueFd dir = VL_TRY(open_vm_dir(dirs, config, *vm));
  std::string path = config.vm_runtime_dir(*vm) + "/" + file;
  ::unlinkat(dir.get(), tmp, 0);  // left by a launch that crashed while writing
  UniqueFd fd = VL_TRY(sys::check_fd(::openat(dir.get(), tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode),
                                     "create '" + path + ".tmp'"));
  auto written = sys::write_all(fd.get(), vm_state_to_json(state));
  // PRIV: the file root just created, in root's own directory; the group is the daemon's or root's.
  if (written && ::fchown(fd.get(), 0, gid) < 0) written = Error::from_errno("set owner of " + quote_for_message(path, kQuotePathMax));
  if (written && ::fsync(fd.get()) < 0) written = Error::from_errno("fsync " + quote_for_message(path, kQuotePathMax));
  if (written && ::renameat(dir.get(), tmp, dir.get(), file) < 0) written = Error::from_errno("write " + quote_for_message(path, kQuotePathMax));
  if (!written) ::unlinkat(dir.get(), tmp, 0);
  return written;
}

Result<VmState> read_state_file(const HostConfig& config, const VmName& vm, const char* file) {
  RuntimeDirs dirs = VL_TRY(open_runtime_dirs(config, false));
  UniqueFd dir = VL_TRY(open_vm_dir(dirs, config, vm));
  std::string path = config.vm_runtime_dir(vm) + "/" + file;
  UniqueFd fd = VL_TRY(sys::check_fd(::openat(dir.get(), file, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC),
                                     "open " + quote_for_message(path, kQuotePathMax)));
  struct stat st {};
  VL_TRY(sys::check(::fstat(fd.get(), &st), "stat " + quote_for_message(path, kQuotePathMax)));
  if (!S_ISREG(st.st_mode) || st.st_uid != 0 || st.st_nlink != 1)
    return Error::make(ErrorCode::kDenied, quote_for_message(path, kQuotePathMax) + " must be a regular file of root's with one link");
  auto text = sys::read_all(fd.get(), 1 << 16);
  if (!text) return text.error().wrap(quote_for_message(path, kQuotePathMax));
  auto state = vm_state_from_json(*text);
  if (!state) return state.error().wrap(path);
  if (state->vm != vm.str()) return Error::invalid(path + ": the state of VM " + quote_for_message(state->vm, kQuotePathMax));
  return state;
}

}  // namespace

Result<void> write_vm_state(const HostConfig& config, const VmState& state, gid_t daemon_gid) {
  return write_state_file(config, state, kState, kStateTmp, 0640, daemon_gid);
}

Result<VmState> read_vm_state(const HostConfig& config, const VmName& vm) { return read_state_file(config, vm, kState); }

Result<void> write_vm_claim(const HostConfig& config, const VmState& claim) {
  return write_state_file(config, claim, kClaim, kClaimTmp, 0600, 0);
}

Result<VmState> read_vm_claim(const HostConfig& config, const VmName& vm) { return read_state_file(config, vm, kClaim); }

Result<bool> runtime_dir_exists(const HostConfig& config, const VmName& vm) {
  auto dirs = open_runtime_dirs(config, false);
  if (!dirs) return is_missing(dirs.error()) ? Result<bool>(false) : Result<bool>(std::move(dirs).error());
  struct stat st {};
  if (::fstatat(dirs->vms.get(), vm.str().c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) return true;
  if (errno == ENOENT) return false;
  return Error::from_errno("stat " + quote_for_message(config.vm_runtime_dir(vm), kQuotePathMax));
}

Result<std::vector<VmName>> list_runtime_dirs(const HostConfig& config) {
  auto dirs = open_runtime_dirs(config, false);
  if (!dirs) {
    if (is_missing(dirs.error())) return std::vector<VmName>();
    return std::move(dirs).error();
  }
  std::unique_ptr<DIR, int (*)(DIR*)> dir(::fdopendir(dirs->vms.get()), ::closedir);
  if (!dir) return Error::from_errno("list '" + config.runtime_dir + "/vms'");
  (void)dirs->vms.release();  // the DIR owns it now
  std::vector<VmName> names;
  while (const dirent* e = ::readdir(dir.get()))
    if (auto name = VmName::parse(e->d_name)) names.push_back(*name);
  return names;
}

Result<void> remove_runtime_dir(const HostConfig& config, const VmName& vm) {
  auto dirs = open_runtime_dirs(config, false);
  if (!dirs) return is_missing(dirs.error()) ? Result<void>() : Result<void>(std::move(dirs).error());
  auto dir = open_vm_dir(*dirs, config, vm);
  if (!dir) return is_missing(dir.error()) ? Result<void>() : Result<void>(std::move(dir).error());
  std::string path = config.vm_runtime_dir(vm);
  // PRIV: names below directories just checked to be changeable by root only.
  for (const char* name : {kSocket, kAgentSocket, kConsoleSocket, kState, kStateTmp, kClaim, kClaimTmp, kEmulatorTail})
    if (::unlinkat(dir->get(), name, 0) < 0 && errno != ENOENT)
      return Error::from_errno("remove '" + path + "/" + name + "'");
  if (::unlinkat(dirs->vms.get(), vm.str().c_str(), AT_REMOVEDIR) < 0 && errno != ENOENT)
    return Error::from_errno("remove " + quote_for_message(path, kQuotePathMax));
  return {};
}

}  // namespace vl::helper
