#include "helper/serial_log.h"

#include <dirent.h>
#include <fcntl.h>
#include <seccomp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <string>

#include "common/sys.h"
#include "helper/log_relay.h"

namespace vl::helper {

namespace {

// The relay's fds: the pipe on 0, the current part on 1 (and 2, so that nothing else is left
// there), the previous part on 3.
constexpr int kPipeFd = 0;
constexpr int kCurrentFd = 1;
constexpr int kPreviousFd = 3;

// Copies the pipe into the current part, moving it to the previous part whenever it is full.
// Runs in the relay only, after the lockdown: no allocation, and errors are not reported
// (formatting one would allocate); a write lost to a full disk is lost, and the draining goes
// on.
class SerialRelay final {
 public:
  SerialRelay() = default;
  SerialRelay(const SerialRelay&) = delete;
  SerialRelay& operator=(const SerialRelay&) = delete;

  void run() {
    for (;;) {
      ssize_t n = ::read(kPipeFd, buf_, sizeof buf_);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return;
      size_t done = 0;
      while (done < static_cast<size_t>(n)) {
        size_t take = std::min(static_cast<size_t>(n) - done, kSerialLogPart - size_);
        write_out(kCurrentFd, buf_ + done, take);
        size_ += take;
        done += take;
        if (size_ >= kSerialLogPart) rotate();
      }
    }
  }

 private:
  static void write_out(int fd, const char* p, size_t n) {
    while (n > 0) {
      ssize_t k = ::write(fd, p, n);
      if (k < 0 && errno == EINTR) continue;
      if (k <= 0) return;
      p += k;
      n -= static_cast<size_t>(k);
    }
  }

  // Both files are O_APPEND: after a truncation, writing starts again at 0.
  void rotate() {
    (void)::ftruncate(kPreviousFd, 0);
    off_t at = 0;
    for (;;) {
      ssize_t k = ::pread(kCurrentFd, copy_, sizeof copy_, at);
      if (k < 0 && errno == EINTR) continue;
      if (k <= 0) break;
      write_out(kPreviousFd, copy_, static_cast<size_t>(k));
      at += k;
    }
    (void)::ftruncate(kCurrentFd, 0);
    size_ = 0;
  }

  char buf_[16384];
  char copy_[65536];
  size_t size_ = 0;  ///< the current part starts empty (open_serial_log)
};

// Whether every entry of the directory `dir` is a serial log of vmlaunch's naming
// (NAME.serial.log or NAME.serial.log.1): true of an empty directory too.
Result<bool> holds_only_serial_logs(int dir, const std::string& path) {
  UniqueFd copy = VL_TRY(sys::check_fd(::openat(dir, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC), "open '" + path + "'"));
  DIR* d = ::fdopendir(copy.get());
  if (!d) return Error::from_errno("read '" + path + "'");
  (void)copy.release();  // closedir closes it
  bool only_logs = true;
  while (const dirent* e = ::readdir(d)) {
    std::string_view name = e->d_name;
    if (name == "." || name == "..") continue;
    if (!name.ends_with(".serial.log") && !name.ends_with(".serial.log.1")) {
      only_logs = false;
      break;
    }
  }
  ::closedir(d);
  return only_logs;
}

// LOG: created if missing, then required to be a directory of root's that only root can
// change, and made root:daemon_gid 0750 so that the daemon, and nobody else, can read the logs.
// A directory that existed must be that already, or hold nothing but serial logs (an earlier
// installation's, whose daemon group may differ): one that others use too (LOG set to /var/log
// by mistake) is refused rather than made the daemon group's and closed to everyone else.
Result<UniqueFd> open_log_dir(const HostConfig& config, gid_t daemon_gid) {
  const std::string& path = config.log_dir;
  // PRIV: LOG comes from root's configuration.
  const bool created = ::mkdir(path.c_str(), 0750) == 0;
  if (!created && errno != EEXIST) return Error::from_errno("create log directory '" + path + "'");
  UniqueFd dir = VL_TRY(sys::check_fd(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC),
                                      "open log directory '" + path + "'"));
  struct stat st {};
  VL_TRY(sys::check(::fstat(dir.get(), &st), "stat '" + path + "'"));
  if (st.st_uid != 0 || (st.st_mode & 0022))
    return Error::make(ErrorCode::kDenied, "log directory '" + path + "' must be owned by root and writable by root only");
  const bool ours = st.st_gid == daemon_gid && (st.st_mode & 07777) == 0750;
  if (!created && !ours && !VL_TRY(holds_only_serial_logs(dir.get(), path)))
    return Error::make(ErrorCode::kDenied, "log directory '" + path + "' holds other files and is not root:" +
                                               config.daemon_group + " mode 0750: give [paths] log a directory "
                                               "of vmlaunch's own");
  // PRIV: the directory just checked to be root's.
  if (::fchown(dir.get(), 0, daemon_gid) < 0 || ::fchmod(dir.get(), 0750) < 0)
    return Error::from_errno("set owner and mode of '" + path + "'");
  return dir;
}

// One part: a regular file of root's with one link, root:daemon_gid 0640.
Result<UniqueFd> open_part(int dir, const std::string& dir_path, const std::string& name, int flags, gid_t daemon_gid) {
  std::string path = dir_path + "/" + name;
  UniqueFd fd = VL_TRY(sys::check_fd(::openat(dir, name.c_str(), flags | O_RDWR | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0640),
                                     "open '" + path + "'"));
  struct stat st {};
  VL_TRY(sys::check(::fstat(fd.get(), &st), "stat '" + path + "'"));
  if (!S_ISREG(st.st_mode) || st.st_nlink != 1 || st.st_uid != 0)
    return Error::make(ErrorCode::kDenied, "'" + path + "' is not a regular file of root's with one link");
  // PRIV: a file of root's in root's own directory; the group is the daemon's.
  if (::fchown(fd.get(), 0, daemon_gid) < 0 || ::fchmod(fd.get(), 0640) < 0)
    return Error::from_errno("set owner and mode of '" + path + "'");
  return fd;
}

}  // namespace

Result<SerialLogFiles> open_serial_log(const HostConfig& config, const VmName& vm, gid_t daemon_gid) {
  UniqueFd dir = VL_TRY(open_log_dir(config, daemon_gid));
  std::string current = vm.str() + ".serial.log", previous = current + ".1";
  // PRIV: names below root's own directory, made of a validated VM name.
  SerialLogFiles files;
  if (::renameat(dir.get(), current.c_str(), dir.get(), previous.c_str()) == 0) files.rotated = true;
  else if (errno != ENOENT) return Error::from_errno("rename '" + config.serial_log_path(vm) + "' to '" + previous + "'");
  files.current = VL_TRY(open_part(dir.get(), config.log_dir, current, O_EXCL, daemon_gid));
  files.previous = VL_TRY(open_part(dir.get(), config.log_dir, previous, 0, daemon_gid));
  return files;
}

Result<void> unopen_serial_log(const HostConfig& config, const VmName& vm, bool rotated) {
  UniqueFd dir = VL_TRY(sys::check_fd(::open(config.log_dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC),
                                      "open log directory '" + config.log_dir + "'"));
  std::string current = vm.str() + ".serial.log", previous = current + ".1";
  // PRIV: names below root's own directory (checked by open_serial_log), of a validated VM name.
  if (rotated) {
    VL_TRY(sys::check(::renameat(dir.get(), previous.c_str(), dir.get(), current.c_str()),
                      "rename '" + previous + "' back to '" + config.serial_log_path(vm) + "'"));
    return {};
  }
  for (const std::string& name : {current, previous}) {
    struct stat st {};
    if (::fstatat(dir.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_size == 0)
      ::unlinkat(dir.get(), name.c_str(), 0);
  }
  ::rmdir(config.log_dir.c_str());  // only if empty: another VM's log keeps it
  return {};
}

Result<UniqueFd> start_serial_log(SerialLogFiles files) {
  int fds[2];
  VL_TRY(sys::check(::pipe2(fds, O_CLOEXEC), "create the pipe for the serial log"));
  UniqueFd pipe_read(fds[0]), pipe_write(fds[1]);
  auto relay = std::make_unique<SerialRelay>();  // before the fork: nothing to allocate after the lockdown
  RelaySpec spec{"vmlaunch-serial",
                 {{pipe_read.get(), kPipeFd},
                  {files.current.get(), kCurrentFd},
                  {files.current.get(), 2},
                  {files.previous.get(), kPreviousFd}},
                 {SCMP_SYS(pread64), SCMP_SYS(ftruncate)},
                 [&relay] { relay->run(); }};
  VL_CHECK(start_relay(spec, "the serial log relay"));
  return pipe_write;
}

}  // namespace vl::helper
