// The real system the control-plane benchmarks measure: a private network namespace with the
// zone bridge kBridge, a configuration rooted in a temporary directory, the root broker and the
// daemon (as nobody), driven through vmctl.
#pragma once

#include <signal.h>

#include "bench/bench_support.h"
#include "tests/support/netns.h"
#include "tests/support/temp_dir.h"

namespace vl::bench {

/// Runs as long as the benchmark: at exit (die included) it stops every VM, the daemon and the
/// broker, and puts back the mode of /dev/net/tun, which it opens to other users for the run.
class BenchSystem final {
 public:
  explicit BenchSystem(std::string build) : build_(std::move(build)), root_(tmp_.path()) {
    ::chmod(root_.c_str(), 0755);
    for (const char* d : {"domains", "images", "cache"}) std::filesystem::create_directory(root_ + "/" + d);
    if (::chown((root_ + "/cache").c_str(), 65534, 65534) < 0) die("chown cache");
    if (::stat("/dev/net/tun", &tun_) < 0) die("stat /dev/net/tun");
    instance_ = this;
    std::atexit([] {  // die() exits without running destructors
      if (instance_) instance_->clean_up();
    });
    ::chmod("/dev/net/tun", 0666);
    std::ofstream(config()) << vmlaunch_config(root_, root_ + "/images");
    if (std::system("ip link add br-bench type bridge && ip link set br-bench up") != 0) die("bridge");
    UniqueFd null_fd(::open("/dev/null", O_WRONLY | O_CLOEXEC));
    auto broker = spawn({build_ + "/helper/vmlaunch-helper", {"vmlaunch-helper", "--config", config(), "serve"}, {}, {{null_fd.get(), 2}}});
    wait_for_path(root_ + "/run/helper.sock");
    auto daemon = spawn({"/usr/bin/setpriv", {"setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                                              build_ + "/daemon/vmlaunchd", "--config", config(), "run"},
                         {}, {{null_fd.get(), 2}}});
    if (broker) broker_ = *broker;
    if (daemon) daemon_ = *daemon;  // setpriv execs vmlaunchd in place
    if (!broker || !daemon) die("start broker/daemon");
    stop_vms_ = {build_ + "/vmctl/vmctl", "--config", config(), "stop", "--force", "--all"};
    wait_for_path(root_ + "/run/control.sock");
  }
  ~BenchSystem() { clean_up(); }
  BenchSystem(const BenchSystem&) = delete;
  BenchSystem& operator=(const BenchSystem&) = delete;

  const std::string& root() const { return root_; }
  std::string config() const { return root_ + "/vmlaunch.toml"; }
  pid_t daemon() const { return daemon_; }

  /// Runs `vmctl ARGS` against this system; dies if it fails.
  std::string vmctl(std::vector<std::string> args) const {
    std::vector<std::string> argv = {"vmctl", "--config", config()};
    argv.insert(argv.end(), args.begin(), args.end());
    return run(build_ + "/vmctl/vmctl", argv);
  }

  /// Defines VM `name` with its own copy of the test guest and, if `mac` is given, one NIC.
  void define(const std::string& name, std::optional<int> mac) const {
    std::string image = root_ + "/images/" + name + ".img";
    write_domain(root_ + "/domains/" + name + ".xml", domain_xml(name, image, mac));
    copy_image(build_ + "/tests/guest/guest.img", image);
  }

 private:
  void clean_up() {
    if (instance_ != this) return;  // done already
    instance_ = nullptr;
    if (!stop_vms_.empty()) (void)run_quietly(stop_vms_);
    for (pid_t pid : {daemon_, broker_})
      if (pid > 0 && ::kill(pid, SIGTERM) == 0) (void)wait_for(pid);
    if (tun_.st_mode) ::chmod("/dev/net/tun", tun_.st_mode & 07777);
  }

  static inline BenchSystem* instance_ = nullptr;
  test::ScopedNetns ns_;
  test::TempDir tmp_;
  std::string build_, root_;
  struct stat tun_{};
  pid_t broker_ = 0, daemon_ = 0;
  std::vector<std::string> stop_vms_;
};

}  // namespace vl::bench
