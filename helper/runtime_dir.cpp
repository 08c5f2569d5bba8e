#include "helper/runtime_dir.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/sys.h"

namespace vl::helper {

namespace {

Result<void> ensure_dir(const std::string& dir, mode_t mode) {
  if (::mkdir(dir.c_str(), mode) < 0 && errno != EEXIST) return Error::from_errno("create '" + dir + "'");
  return {};
}

Result<void> unlink_if_present(const std::string& path) {
  if (::unlink(path.c_str()) < 0 && errno != ENOENT) return Error::from_errno("remove '" + path + "'");
  return {};
}

}  // namespace

Result<void> create_runtime_dir(const HostConfig& config, const VmName& vm, gid_t daemon_gid) {
  VL_CHECK(ensure_dir(config.runtime_dir, 0755));
  VL_CHECK(ensure_dir(config.runtime_dir + "/vms", 0755));
  // RUNTIME may be writable by the daemon's group: vms/ must be root's own directory, not a
  // symlink someone put there.
  struct stat st {};
  std::string vms = config.runtime_dir + "/vms";
  VL_TRY(sys::check(::lstat(vms.c_str(), &st), "stat '" + vms + "'"));
  if (!S_ISDIR(st.st_mode) || st.st_uid != 0 || (st.st_mode & 022))
    return Error::make(ErrorCode::kDenied, "'" + vms + "' must be a root-owned directory writable only by root");
  std::string dir = config.vm_runtime_dir(vm);
  if (::mkdir(dir.c_str(), 0700) < 0) {
    if (errno == EEXIST)
      return Error::make(ErrorCode::kConflict, "VM '" + vm.str() + "' is already running, or its last run was "
                                               "not cleaned up ('" + dir + "' exists; run 'vmlaunch-helper cleanup " +
                                               vm.str() + "')");
    return Error::from_errno("create '" + dir + "'");
  }
  // PRIV: a directory root just created; the group is the configured daemon group.
  if (::chown(dir.c_str(), 0, daemon_gid) < 0 || ::chmod(dir.c_str(), 0750) < 0) {
    Error e = Error::from_errno("set owner of '" + dir + "'");
    ::rmdir(dir.c_str());
    return e;
  }
  return {};
}

Result<UniqueFd> bind_monitor_socket(const HostConfig& config, const VmName& vm, gid_t daemon_gid) {
  std::string path = config.vm_runtime_dir(vm) + "/qmp.sock";
  sockaddr_un sa{};
  if (path.size() >= sizeof sa.sun_path) return Error::invalid("monitor socket path '" + path + "' is too long");
  UniqueFd fd = VL_TRY(sys::check_fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), "create monitor socket"));
  sa.sun_family = AF_UNIX;
  path.copy(sa.sun_path, sizeof sa.sun_path - 1);
  VL_TRY(sys::check(::bind(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa), "bind '" + path + "'"));
  // PRIV: the directory is root's own (0750), so the path cannot have been swapped.
  if (::chown(path.c_str(), 0, daemon_gid) < 0 || ::chmod(path.c_str(), 0660) < 0 || ::listen(fd.get(), 4) < 0) {
    Error e = Error::from_errno("set up monitor socket '" + path + "'");
    ::unlink(path.c_str());
    return e;
  }
  return fd;
}

Result<void> write_vm_state(const HostConfig& config, const VmState& state, gid_t daemon_gid) {
  auto vm = VmName::parse(state.vm);
  if (!vm) return std::move(vm).error();
  std::string path = config.vm_runtime_dir(*vm) + "/state.json";
  VL_CHECK(sys::write_file_atomic(path, vm_state_to_json(state), 0640));
  VL_TRY(sys::check(::chown(path.c_str(), 0, daemon_gid), "set owner of '" + path + "'"));
  return {};
}

Result<VmState> read_vm_state(const HostConfig& config, const VmName& vm) {
  return read_vm_state_file(config.vm_runtime_dir(vm) + "/state.json");
}

Result<void> remove_runtime_dir(const HostConfig& config, const VmName& vm) {
  std::string dir = config.vm_runtime_dir(vm);
  VL_CHECK(unlink_if_present(dir + "/qmp.sock"));
  VL_CHECK(unlink_if_present(dir + "/state.json"));
  if (::rmdir(dir.c_str()) < 0 && errno != ENOENT) return Error::from_errno("remove '" + dir + "'");
  return {};
}

}  // namespace vl::helper
