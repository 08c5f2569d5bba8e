// What the benchmarks share: running programs, timing and statistics, the benchmark's vmlaunch
// configuration and domain XML, and the bare baseline every launch path is compared with (an
// exec of the launch plan with a tap and a monitor prepared beforehand, driven over QMP to
// running).
//
// Benchmarks are programs run by hand as root, not product code: a failed step ends the run
// with a message (die), and the caller's exit handlers clean up.
#pragma once

#include <fcntl.h>
#include <grp.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/argv_policy.h"
#include "common/plan.h"
#include "common/spawn.h"
#include "common/sys.h"
#include "tests/support/qmp.h"

namespace vl::bench {

using Clock = std::chrono::steady_clock;

/// The PATH every program the benchmarks start gets.
inline const std::vector<std::string> kEnvironment = {"PATH=/usr/sbin:/usr/bin:/sbin:/bin"};

[[noreturn]] inline void die(const std::string& what) {
  std::fprintf(stderr, "%s: %s\n", program_invocation_short_name, what.c_str());
  std::exit(1);
}

inline double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

/// Median (the upper one of an even count), extremes and count of a sample.
struct Stats {
  double median = 0, min = 0, max = 0;
  size_t n = 0;
};

inline Stats stats_of(std::vector<double> v) {
  if (v.empty()) return {};
  std::sort(v.begin(), v.end());
  return {v[v.size() / 2], v.front(), v.back(), v.size()};
}

/// "median 45.9 ms (min 40.1, max 52.0, n=15)"
inline std::string describe(const Stats& s) {
  char buf[128];
  std::snprintf(buf, sizeof buf, "median %.1f ms (min %.1f, max %.1f, n=%zu)", s.median, s.min, s.max, s.n);
  return buf;
}

/// Runs a program with stdout and stderr on /dev/null; returns its wait status, -1 if it
/// could not start.
inline int run_quietly(const std::vector<std::string>& argv) {
  UniqueFd null_fd(::open("/dev/null", O_WRONLY | O_CLOEXEC));
  auto pid = spawn({argv[0], argv, kEnvironment, {{null_fd.get(), 1}, {null_fd.get(), 2}}});
  if (!pid) return -1;
  auto status = wait_for(*pid);
  return status ? *status : -1;
}

inline bool succeeded(int status) { return status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0; }

/// Runs a program and returns its stdout; dies if it fails (with its stderr, which is kept).
inline std::string run(const std::string& path, const std::vector<std::string>& argv) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) < 0) die("pipe");
  UniqueFd r(fds[0]), w(fds[1]);
  auto pid = spawn({path, argv, kEnvironment, {{w.get(), 1}}});
  if (!pid) die(path + ": " + pid.error().message());
  w.reset();
  std::string out = sys::read_all(r.get(), 1 << 24).value();
  int status = wait_for(*pid).value();
  if (!succeeded(status)) {
    std::string command;
    for (const std::string& a : argv) command += (command.empty() ? "" : " ") + a;
    die("failed: " + command);
  }
  return out;
}

/// Waits (polling, up to `seconds`) until a path exists; dies if it never does.
inline void wait_for_path(const std::string& p, int seconds = 30) {
  auto deadline = Clock::now() + std::chrono::seconds(seconds);
  while (!std::filesystem::exists(p)) {
    if (Clock::now() > deadline) die(p + " never appeared");
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

/// A field of /proc/PID/status as a number ("VmRSS" in KiB), -1 if absent.
inline long status_field(pid_t pid, const std::string& key) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(key + ":", 0) == 0) return std::atol(line.c_str() + key.size() + 1);
  return -1;
}

/// The benchmark's zone bridge: every VM of every contender is attached to it.
inline constexpr const char* kBridge = "br-bench";

/// vmlaunch's configuration for a benchmark rooted at `root` (domains/, cache/, run/ below it),
/// disks under `images`, daemon as nobody:nogroup, one zone on kBridge.
inline std::string vmlaunch_config(const std::string& root, const std::string& images) {
  return "[paths]\ndomains = \"" + root + "/domains\"\nruntime = \"" + root + "/run\"\nstate = \"" + root +
         "/state\"\ncache = \"" + root + "/cache\"\nudev_rules = \"" + root + "/udev\"\nuserdb = \"" + root +
         "/userdb\"\n[users]\ndaemon_user = \"nobody\"\ndaemon_group = \"nogroup\"\nadmin_group = \"root\"\n"
         "[storage]\nroots = [\"" + images + "\"]\n[zones.bench]\nbridge = \"" + kBridge + "\"\n";
}

/// The benchmark's domain: the 512-byte test guest under TCG, 16 MiB, an IDE disk and, if
/// `mac` is given, one e1000 NIC on kBridge. libvirt and vmlaunch get the same text.
inline std::string domain_xml(const std::string& name, const std::string& disk, std::optional<int> mac) {
  std::string xml = "<domain type='qemu'><name>" + name + "</name><memory unit='MiB'>16</memory>"
                    "<os><type arch='x86_64' machine='pc'>hvm</type></os><features><acpi/></features><devices>"
                    "<emulator>/usr/bin/qemu-system-x86_64</emulator><disk type='file' device='disk'>"
                    "<driver name='qemu' type='raw'/><source file='" + disk + "'/>"
                    "<target dev='hda' bus='ide'/></disk>";
  if (mac) {
    char buf[18];
    std::snprintf(buf, sizeof buf, "52:54:00:%02x:%02x:%02x", (*mac >> 16) & 0xff, (*mac >> 8) & 0xff, *mac & 0xff);
    xml += std::string("<interface type='bridge'><mac address='") + buf + "'/><source bridge='" + kBridge +
           "'/><model type='e1000'/></interface>";
  }
  return xml + "</devices></domain>";
}

/// Installs a definition as an operator does: root:nogroup (the daemon's group here) 0640,
/// or the helper and the daemon refuse it (common/domain_file.h).
inline void write_domain(const std::string& path, const std::string& xml) {
  std::ofstream(path) << xml;
  const group* daemon_group = ::getgrnam("nogroup");
  if (!daemon_group || ::chown(path.c_str(), 0, daemon_group->gr_gid) < 0 || ::chmod(path.c_str(), 0640) < 0)
    die("cannot set owner and mode of " + path);
}

/// A copy of the guest image, readable by every VM uid (each launch hands it to its own).
inline void copy_image(const std::string& from, const std::string& to) {
  std::filesystem::copy_file(from, to, std::filesystem::copy_options::overwrite_existing);
  ::chmod(to.c_str(), 0644);
}

/// An emulator started by a bare exec of a plan, running, with its QMP connection.
struct BareVm {
  pid_t pid = 0;
  std::optional<test::QmpConnection> qmp;
};

/// The bare baseline: exec the plan with a fresh tap (`tap`, not on any bridge) and a
/// monitor socket at `socket`, as the helper would (clean environment, QEMU's sandbox), and
/// drive QMP to running. `ms` gets exec -> running.
inline BareVm bare_start(const Plan& plan, const std::string& tap_name, const std::string& socket, double* ms) {
  ::unlink(socket.c_str());
  UniqueFd tap(::open("/dev/net/tun", O_RDWR | O_CLOEXEC));
  ifreq ifr{};
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
  tap_name.copy(ifr.ifr_name, IFNAMSIZ - 1);
  if (!tap || ::ioctl(tap.get(), TUNSETIFF, &ifr) < 0) die("TUNSETIFF " + tap_name);
  UniqueFd mon(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  socket.copy(sa.sun_path, sizeof sa.sun_path - 1);
  if (::bind(mon.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0 || ::listen(mon.get(), 1) < 0) die("bind " + socket);
  UniqueFd null_fd(::open("/dev/null", O_WRONLY | O_CLOEXEC));
  std::vector<FdMapping> fds = {{null_fd.get(), 1}, {null_fd.get(), 2}};
  for (const auto& s : plan.fds) {
    switch (s.kind) {
      case FdSlot::Kind::kMonitor: fds.push_back({mon.get(), s.fd}); break;
      case FdSlot::Kind::kTap:
        if (s.nic != 0) die("bare exec: the plan has more than one NIC, the baseline prepares one tap");
        fds.push_back({tap.get(), s.fd});
        break;
      case FdSlot::Kind::kAgent: die("bare exec: the plan has a guest agent channel, the baseline prepares none");
      case FdSlot::Kind::kSerial:
      case FdSlot::Kind::kSerialLog: die("bare exec: the plan has a serial port, the baseline prepares none");
      case FdSlot::Kind::kDiskSecret: die("bare exec: the plan has an encrypted disk, the baseline prepares no passphrase");
    }
  }
  std::vector<std::string> argv = plan.argv;
  for (std::string& arg : emulator_sandbox_args()) argv.push_back(std::move(arg));
  auto t0 = Clock::now();
  auto pid = spawn({plan.emulator, argv, emulator_environment(), fds});
  if (!pid) die(pid.error().message());
  BareVm vm{*pid, std::nullopt};
  auto qmp = test::QmpConnection::connect(socket);
  if (!qmp || !qmp->execute("qmp_capabilities") || !qmp->execute("cont")) die("bare exec: QMP to running failed");
  *ms = ms_since(t0);
  vm.qmp.emplace(std::move(*qmp));
  return vm;
}

/// Sends `quit` and waits for the emulator's exit; returns quit -> exit in ms.
inline double bare_stop(BareVm& vm) {
  auto t0 = Clock::now();
  (void)vm.qmp->execute("quit");
  (void)wait_for(vm.pid);
  double ms = ms_since(t0);
  vm = {};
  return ms;
}

}  // namespace vl::bench
