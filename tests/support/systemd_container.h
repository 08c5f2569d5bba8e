// A real systemd (PID 1) booted in a throwaway container, for tests of systemd mode and of the
// installed package.
//
// The container's root is an overlay of the host's `/` (read-only lower layer) with a tmpfs as
// its upper layer: everything the test or the container writes lands in the tmpfs, and the
// host's files are never changed. nspawn 252 refuses `--directory=/` with `--volatile=overlay`,
// so the overlay is mounted here and booted as a directory, with a private network namespace
// (only `lo` inside: the test's bridges and taps never touch the host's interfaces). Commands
// run inside with `nsenter -t PID -a`, PID being the container's systemd.
//
// Use: construct, write files into root() (programs, units, configuration, enablement links),
// boot(), run(...). The destructor always tears down, also when a check failed: `systemctl
// poweroff` with a deadline, then SIGKILL to the container's PID 1 (which ends its whole pid
// namespace) and to nspawn, then the unmounts. Nothing is left on the host: no process, no
// mount, no interface.
#pragma once

#include <dirent.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <doctest/doctest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "common/spawn.h"
#include "common/sys.h"
#include "tests/support/temp_dir.h"

namespace vl::test {

class SystemdContainer final {
 public:
  struct Output {
    int exit_code = -1;
    std::string out;  ///< stdout and stderr
  };

  /// Mounts the overlay; `name` is the container's machine name (its hostname).
  explicit SystemdContainer(std::string name) : name_(std::move(name)) {
    REQUIRE_MESSAGE(std::filesystem::exists("/usr/bin/systemd-nspawn"),
                    "systemd-nspawn is missing: install package systemd-container (packaging/install-deps)");
    layers_ = tmp_.path() + "/layers";
    root_ = tmp_.path() + "/root";
    std::filesystem::create_directories(layers_);
    std::filesystem::create_directories(root_);
    REQUIRE(::mount("tmpfs", layers_.c_str(), "tmpfs", 0, "mode=0755") == 0);
    layers_mounted_ = true;
    std::filesystem::create_directories(layers_ + "/upper");
    std::filesystem::create_directories(layers_ + "/work");
    std::string options = "lowerdir=/,upperdir=" + layers_ + "/upper,workdir=" + layers_ + "/work";
    if (::mount("overlay", root_.c_str(), "overlay", 0, options.c_str()) != 0) {
      int saved = errno;
      tear_down();  // a constructor that fails runs no destructor
      FAIL("mount overlay: " << strerror(saved));
    }
    root_mounted_ = true;
    // The host's machine-id would make the container's journal the host's; firstboot is off.
    std::filesystem::remove(root_ + "/etc/machine-id");
    std::ofstream(root_ + "/etc/machine-id") << "";
  }

  ~SystemdContainer() { tear_down(); }
  SystemdContainer(const SystemdContainer&) = delete;
  SystemdContainer& operator=(const SystemdContainer&) = delete;

  /// The container's `/`, writable before and after boot (the overlay's merged view).
  const std::string& root() const { return root_; }
  /// Host pid of the container's systemd (after boot()).
  pid_t leader() const { return leader_; }

  /// Writes `text` to PATH inside the container (parents created), with `mode`.
  void write(const std::string& path, const std::string& text, mode_t mode = 0644) {
    std::string host = root_ + path;
    std::filesystem::create_directories(std::filesystem::path(host).parent_path());
    std::filesystem::remove(host);
    std::ofstream(host) << text;
    REQUIRE(::chmod(host.c_str(), mode) == 0);
  }

  /// Copies a host file to PATH inside the container, with `mode`.
  void install(const std::string& from, const std::string& path, mode_t mode = 0755) {
    std::string host = root_ + path;
    std::filesystem::create_directories(std::filesystem::path(host).parent_path());
    std::filesystem::copy_file(from, host, std::filesystem::copy_options::overwrite_existing);
    REQUIRE(::chmod(host.c_str(), mode) == 0);
  }

  /// `systemctl enable` done offline: a link in TARGET.wants to UNIT (both names).
  void enable(const std::string& unit, const std::string& target, const std::string& unit_file) {
    std::string dir = root_ + "/etc/systemd/system/" + target + ".wants";
    std::filesystem::create_directories(dir);
    std::filesystem::remove(dir + "/" + unit);
    std::filesystem::create_symlink("/etc/systemd/system/" + unit_file, dir + "/" + unit);
  }

  /// Boots the container and waits until systemd says it finished booting (`running` or
  /// `degraded`). Returns how long that took.
  std::chrono::milliseconds boot() {
    auto t0 = std::chrono::steady_clock::now();
    log_.reset(::open((tmp_.path() + "/nspawn.log").c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
    UniqueFd null_fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    auto pid = spawn({"/usr/bin/systemd-nspawn",
                      {"systemd-nspawn", "--quiet", "--directory=" + root_, "--boot", "--register=no", "--keep-unit",
                       "--private-network",
                       // nspawn 252's own filter refuses Landlock (EPERM), which a launch refuses
                       // to take for a kernel without it: allow it, as a host's systemd does.
                       "--system-call-filter=landlock_create_ruleset landlock_add_rule landlock_restrict_self",
                       "-M", name_, "--", "systemd.firstboot=off"},
                      {"PATH=/usr/sbin:/usr/bin:/sbin:/bin"},
                      {{null_fd.get(), 0}, {log_.get(), 1}, {log_.get(), 2}}});
    REQUIRE_MESSAGE(pid.ok(), pid.error().message());
    nspawn_ = *pid;
    // The container's systemd: a descendant of nspawn that is PID 1 in its own namespace.
    for (int i = 0; i < 600 && leader_ <= 0; ++i) {
      leader_ = find_leader();
      if (leader_ <= 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
      REQUIRE_MESSAGE(!nspawn_exited(), "systemd-nspawn exited: " << nspawn_log());
    }
    REQUIRE_MESSAGE(leader_ > 0, "the container's systemd never appeared: " << nspawn_log());
    // The bus socket appears a moment after PID 1; is-system-running --wait needs it.
    Output state;
    for (int i = 0; i < 600; ++i) {
      state = run("timeout 120 systemctl is-system-running --wait");
      if (state.out.find("running") != std::string::npos || state.out.find("degraded") != std::string::npos) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    INFO(state.out);
    REQUIRE_MESSAGE((state.out.find("running") != std::string::npos || state.out.find("degraded") != std::string::npos),
                    nspawn_log());
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
  }

  /// Runs a shell command inside the container, as root, in all its namespaces.
  Output run(const std::string& command) {
    REQUIRE(leader_ > 0);
    auto r = try_run(command);
    REQUIRE_MESSAGE(r.ok(), r.error().message());
    return *r;
  }

  /// run(), without assertions: also safe while a failed check unwinds (the teardown).
  Result<Output> try_run(const std::string& command) {
    if (leader_ <= 0) return Error::make(ErrorCode::kNotFound, "the container is not running");
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) return Error::from_errno("pipe2");
    UniqueFd out_read(fds[0]), out_write(fds[1]);
    UniqueFd null_fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    pid_t pid = VL_TRY(spawn({"/usr/bin/nsenter",
                              {"nsenter", "-t", std::to_string(leader_), "-a", "/bin/sh", "-c", command},
                              {"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0"},
                              {{null_fd.get(), 0}, {out_write.get(), 1}, {out_write.get(), 2}}}));
    out_write.reset();
    Output r;
    auto out = sys::read_all(out_read.get(), 4 << 20);
    int status = VL_TRY(wait_for(pid));
    if (!out) return std::move(out).error();
    r.out = std::move(out).value();
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return r;
  }

  /// `systemctl poweroff` inside; waits (up to `deadline`) for the container to end. Returns
  /// the time from the request to nspawn's exit, or -1 ms if it did not end in time.
  std::chrono::milliseconds poweroff(std::chrono::seconds deadline) {
    if (nspawn_ <= 0) return std::chrono::milliseconds(0);
    auto t0 = std::chrono::steady_clock::now();
    (void)try_run("systemctl --no-block poweroff");
    while (std::chrono::steady_clock::now() - t0 < deadline) {
      if (nspawn_exited()) {
        leader_ = 0;
        return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return std::chrono::milliseconds(-1);
  }

  /// What nspawn and the container's console printed.
  std::string nspawn_log() const {
    auto text = sys::read_file(tmp_.path() + "/nspawn.log", 1 << 20);
    if (!text) return "";
    return text->size() > 4000 ? text->substr(text->size() - 4000) : *text;
  }

 private:
  bool nspawn_exited() {
    if (nspawn_ <= 0) return true;
    int status = 0;
    if (::waitpid(nspawn_, &status, WNOHANG) != nspawn_) return false;
    nspawn_ = 0;
    return true;
  }

  static bool descends_from(pid_t pid, pid_t ancestor) {
    for (int depth = 0; depth < 8 && pid > 1; ++depth) {
      auto status = sys::read_file("/proc/" + std::to_string(pid) + "/status", 8192);
      if (!status) return false;
      auto at = status->find("\nPPid:\t");
      if (at == std::string::npos) return false;
      pid = static_cast<pid_t>(std::atoi(status->c_str() + at + 7));
      if (pid == ancestor) return true;
    }
    return false;
  }

  // A process whose NSpid line ends in " 1" (PID 1 of its namespace) below nspawn.
  pid_t find_leader() const {
    DIR* d = ::opendir("/proc");
    if (!d) return 0;
    pid_t found = 0;
    while (dirent* e = ::readdir(d)) {
      pid_t pid = static_cast<pid_t>(std::atoi(e->d_name));
      if (pid <= 0) continue;
      auto status = sys::read_file("/proc/" + std::string(e->d_name) + "/status", 8192);
      if (!status) continue;
      auto at = status->find("\nNSpid:\t");
      if (at == std::string::npos) continue;
      std::string line = status->substr(at + 8, status->find('\n', at + 8) - at - 8);
      if (line.size() < 2 || line.compare(line.size() - 2, 2, "\t1") != 0) continue;
      if (descends_from(pid, nspawn_)) {
        found = pid;
        break;
      }
    }
    ::closedir(d);
    return found;
  }

  // No REQUIRE here: it may run while a failed check unwinds.
  void tear_down() {
    if (nspawn_ > 0 && leader_ > 0) (void)poweroff(std::chrono::seconds(60));
    if (leader_ > 0) ::kill(leader_, SIGKILL);  // PID 1 of the namespace: every process in it ends
    if (nspawn_ > 0) {
      for (int i = 0; i < 500 && !nspawn_exited(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
      if (nspawn_ > 0) {
        ::kill(nspawn_, SIGKILL);
        (void)wait_for(nspawn_);
        nspawn_ = 0;
      }
    }
    leader_ = 0;
    // Anything still holding the overlay (a process that left the namespace) delays the
    // unmount; lazily detached, the tmpfs goes once the last user does.
    if (root_mounted_ && ::umount2(root_.c_str(), 0) != 0) (void)::umount2(root_.c_str(), MNT_DETACH);
    root_mounted_ = false;
    if (layers_mounted_ && ::umount2(layers_.c_str(), 0) != 0) (void)::umount2(layers_.c_str(), MNT_DETACH);
    layers_mounted_ = false;
  }

  std::string name_;
  TempDir tmp_;
  std::string layers_;
  std::string root_;
  bool layers_mounted_ = false;
  bool root_mounted_ = false;
  UniqueFd log_;
  pid_t nspawn_ = 0;
  pid_t leader_ = 0;
};

}  // namespace vl::test
