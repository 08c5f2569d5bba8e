#include "helper/exec.h"

#include <cap-ng.h>
#include <fcntl.h>
#include <grp.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

#include "common/sys.h"
#include "helper/launch.h"
#include "helper/net_namespace.h"

namespace vl::helper {

namespace {

Result<void> clear_bounding_and_ambient() {
  // PRIV: only removes capabilities.
  VL_TRY(sys::check(::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient capabilities"));
  capng_clear(CAPNG_SELECT_BOUNDS);
  if (capng_apply(CAPNG_SELECT_BOUNDS) != 0) return Error::make(ErrorCode::kSystem, "clear capability bounding set");
  return {};
}

Result<void> change_ids(const VmCredentials& c) {
  // PRIV: the ids come from the root-owned uid map and the configured VM group; the order
  // (groups, gid, uid) is the only one in which each call is still permitted.
  VL_TRY(sys::check(::setgroups(1, &c.vm_group), "setgroups"));
  VL_TRY(sys::check(::setresgid(c.gid, c.gid, c.gid), "setresgid"));
  VL_TRY(sys::check(::setresuid(c.uid, c.uid, c.uid), "setresuid"));
  // setresuid from root clears permitted and effective sets but keeps inheritable ones.
  capng_clear(CAPNG_SELECT_CAPS);
  if (capng_apply(CAPNG_SELECT_CAPS) != 0) return Error::make(ErrorCode::kSystem, "clear capabilities");
  return {};
}

Result<void> verify_ids(const VmCredentials& c) {
  uid_t ru, eu, su;
  gid_t rg, eg, sg;
  gid_t groups[2];
  if (::getresuid(&ru, &eu, &su) < 0 || ::getresgid(&rg, &eg, &sg) < 0)
    return Error::from_errno("read back ids");
  int n = ::getgroups(2, groups);
  if (ru != c.uid || eu != c.uid || su != c.uid || rg != c.gid || eg != c.gid || sg != c.gid || n != 1 ||
      groups[0] != c.vm_group)
    return Error::make(ErrorCode::kInternal, "privilege drop did not take effect");
  if (::setuid(0) == 0) return Error::make(ErrorCode::kInternal, "could regain root after the privilege drop");
  capng_get_caps_process();
  if (capng_have_capabilities(CAPNG_SELECT_CAPS) != CAPNG_NONE)
    return Error::make(ErrorCode::kInternal, "capabilities left after the privilege drop");
  return {};
}

// "'kvm' (gid 995)": the name the operator knows, and the number chmod/chgrp would take.
std::string group_for_message(gid_t gid) {
  const group* g = ::getgrgid(gid);  // the launch process is single-threaded
  std::string number = "(gid " + std::to_string(gid) + ")";
  return g ? quote_for_message(g->gr_name) + " " + number : number;
}

}  // namespace

Result<void> check_emulator(const std::string& path) {
  struct stat st {};
  VL_TRY(sys::check(::stat(path.c_str(), &st), "emulator " + quote_for_message(path, kQuotePathMax)));
  if (!S_ISREG(st.st_mode) || st.st_uid != 0 || (st.st_mode & (S_IWGRP | S_IWOTH)) || !(st.st_mode & S_IXOTH))
    return Error::make(ErrorCode::kDenied, "emulator " + quote_for_message(path, kQuotePathMax) + " must be a root-owned executable "
                                           "not writable by group or others");
  return {};
}

Result<void> check_readable_by_vm(const std::vector<std::string>& files, const VmCredentials& creds) {
  if (files.empty()) return {};
  int fds[2];
  VL_TRY(sys::check(::pipe2(fds, O_CLOEXEC), "pipe"));
  UniqueFd rd(fds[0]), wr(fds[1]);
  pid_t pid = ::fork();
  if (pid < 0) return Error::from_errno("fork the readability check");
  if (pid == 0) {
    // Only system calls from here: this child of a root process becomes the VM's user (the
    // same ids, in the same order, as drop_privileges_and_exec), tries each file and reports
    // the first failure as {index, errno}. It never gets back to root, and execs nothing.
    // PRIV: the ids come from the root-owned uid map and the configured VM group.
    int report[2] = {-1, 0};
    if (::setgroups(1, &creds.vm_group) < 0 || ::setresgid(creds.gid, creds.gid, creds.gid) < 0 ||
        ::setresuid(creds.uid, creds.uid, creds.uid) < 0) {
      report[1] = errno;
    } else {
      for (size_t i = 0; i < files.size(); ++i) {
        int fd = ::open(files[i].c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0) {
          report[0] = static_cast<int>(i);
          report[1] = errno;
          break;
        }
        ::close(fd);
      }
    }
    (void)!::write(wr.get(), report, sizeof report);
    ::_exit(0);
  }
  wr.reset();
  int report[2] = {-1, 0};
  ssize_t n;
  do n = ::read(rd.get(), report, sizeof report);
  while (n < 0 && errno == EINTR);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (n != sizeof report) return Error::make(ErrorCode::kSystem, "the readability check of the boot files ended without an answer");
  if (report[0] < 0 && report[1] != 0) return Error::from_errno(report[1], "become uid " + std::to_string(creds.uid) + " to check the boot files");
  if (report[0] < 0) return {};
  const std::string& file = files[static_cast<size_t>(report[0])];
  return Error::make(ErrorCode::kDenied,
                     "the VM's user (uid " + std::to_string(creds.uid) + ") cannot read " + quote_for_message(file, kQuotePathMax) + " (" +
                         std::strerror(report[1]) + "); make it readable by that uid or by group " +
                         group_for_message(creds.vm_group) + ", as QEMU opens it as the VM's user");
}

Error drop_privileges_and_exec(const ExecSpec& spec, const VmCredentials& creds, const JailSpec& jail_spec) {
  if (auto v = validate_fd_mappings(spec.fds); !v) return std::move(v).error();
  std::vector<char*> argv, env;
  for (const auto& a : spec.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (const auto& e : spec.env) env.push_back(const_cast<char*>(e.c_str()));
  env.push_back(nullptr);

  if (int r = place_fds(spec.fds.data(), spec.fds.size()); r < 0)
    return Error::from_errno(-r, "place fds for the emulator");
  // The helper's own fds sit at kReportFdTarget and above (the report pipe, whose closing by
  // execve means success, and its private log fd): they outlive fd placement, not execve.
  for (const FdMapping& m : spec.fds)
    if (m.target >= kReportFdTarget && ::fcntl(m.target, F_SETFD, FD_CLOEXEC) < 0)
      return Error::from_errno("mark fd " + std::to_string(m.target) + " close-on-exec");
  // Opened after the fds are placed, which closes every fd not in the plan; both leave the
  // process in the host's namespaces again if anything fails before the ids change.
  auto net = OwnNetworkNamespace::enter();
  if (!net) return std::move(net).error();
  auto jail = Jail::enter(jail_spec);
  if (!jail) return std::move(jail).error();
  if (auto r = clear_bounding_and_ambient(); !r) return std::move(r).error();
  if (auto r = change_ids(creds); !r) return std::move(r).error();
  if (auto r = verify_ids(creds); !r) return std::move(r).error();
  // QEMU binds the VNC socket itself, as the VM's user, in a directory whose group is the
  // daemon's (vnc_socket.h): the daemon can connect only if the socket is group-writable. Set
  // after the ids change, so no file of root's is ever created with this mask.
  ::umask(007);
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) return Error::from_errno("set no_new_privs");
  if (auto r = jail->restrict_files(); !r) return std::move(r).error();
  if (auto r = install_seccomp_baseline(); !r) return std::move(r).error();
  ::execve(spec.path.c_str(), argv.data(), env.data());
  return Error::from_errno("execute " + quote_for_message(spec.path, kQuotePathMax));
}

}  // namespace vl::helper
