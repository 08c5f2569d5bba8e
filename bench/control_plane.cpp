// Benchmarks of the control plane, on the real system (root broker, daemon as nobody, vmctl,
// TCG guests) inside a private network namespace:
//   1. launch overhead: `vmctl start` -> running, minus a bare exec of the same plan -> QMP
//      running (tap and monitor fds prepared beforehand), side by side, warm plan cache;
//   2. `vmctl list` and `vmctl status` with 1,000 defined VMs;
//   3. daemon RSS and idle wakeups with N running VMs.
// Usage (root): control_plane BUILD_DIR [RUNNING_VMS]
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
#include <filesystem>
#include <fstream>
#include <thread>

#include "common/argv_policy.h"
#include "common/plan.h"
#include "common/spawn.h"
#include "common/sys.h"
#include "tests/support/netns.h"
#include "tests/support/qmp.h"
#include "tests/support/temp_dir.h"

namespace {

using Clock = std::chrono::steady_clock;
std::string g_build, g_root;

// What a failed run must not leave behind: the processes it started, and the mode of
// /dev/net/tun, which it opens to other users for the run.
pid_t g_broker = 0, g_daemon = 0;
struct stat g_tun{};
std::vector<std::string> g_stop_vms;  // the vmctl command that stops every VM, once there is one

int run_quietly(const std::vector<std::string>& argv);

void clean_up_at_exit() {
  if (!g_stop_vms.empty()) (void)run_quietly(g_stop_vms);
  for (pid_t pid : {g_daemon, g_broker})
    if (pid > 0 && ::kill(pid, SIGTERM) == 0) (void)vl::wait_for(pid);
  if (g_tun.st_mode) ::chmod("/dev/net/tun", g_tun.st_mode & 07777);
}

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "control_plane: %s\n", what.c_str());
  std::exit(1);
}

int run_quietly(const std::vector<std::string>& argv) {
  vl::UniqueFd null_fd(::open("/dev/null", O_WRONLY | O_CLOEXEC));
  auto pid = vl::spawn({argv[0], argv, {"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, {{null_fd.get(), 1}, {null_fd.get(), 2}}});
  if (!pid) return -1;
  auto status = vl::wait_for(*pid);
  return status ? *status : -1;
}

double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

std::string median_line(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  char buf[128];
  std::snprintf(buf, sizeof buf, "median %.1f ms (min %.1f, max %.1f, n=%zu)", v[v.size() / 2], v.front(), v.back(), v.size());
  return buf;
}

// Runs a program, returns its stdout; dies on failure.
std::string run(const std::string& path, std::vector<std::string> argv, bool must_succeed = true) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) < 0) die("pipe");
  vl::UniqueFd r(fds[0]), w(fds[1]);
  vl::UniqueFd null_fd(::open("/dev/null", O_WRONLY | O_CLOEXEC));
  auto pid = vl::spawn({path, argv, {"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, {{w.get(), 1}, {null_fd.get(), 2}}});
  if (!pid) die(pid.error().message());
  w.reset();
  std::string out = vl::sys::read_all(r.get(), 1 << 24).value();
  int status = vl::wait_for(*pid).value();
  if (must_succeed && (!WIFEXITED(status) || WEXITSTATUS(status) != 0)) die(argv[0] + " " + argv[argv.size() > 3 ? 3 : 0] + " failed");
  return out;
}

std::string vmctl(std::vector<std::string> args) {
  std::vector<std::string> argv = {"vmctl", "--config", g_root + "/vmlaunch.toml"};
  argv.insert(argv.end(), args.begin(), args.end());
  return run(g_build + "/vmctl/vmctl", argv);
}

void wait_for_path(const std::string& p) {
  for (int i = 0; i < 2000 && !std::filesystem::exists(p); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  if (!std::filesystem::exists(p)) die(p + " never appeared");
}

// As an operator installs a definition: root:DAEMON_GROUP (nogroup here) 0640, or the helper
// and the daemon refuse it (common/domain_file.h).
void write_domain(const std::string& path, const std::string& xml) {
  std::ofstream(path) << xml;
  const group* daemon_group = ::getgrnam("nogroup");
  if (!daemon_group || ::chown(path.c_str(), 0, daemon_group->gr_gid) < 0 || ::chmod(path.c_str(), 0640) < 0)
    std::fprintf(stderr, "bench: cannot set owner and mode of %s\n", path.c_str());
}

void define(const std::string& name, int n, bool nic) {
  std::string xml = "<domain type='qemu'><name>" + name + "</name><memory unit='MiB'>16</memory>"
                    "<os><type arch='x86_64' machine='pc'>hvm</type></os><features><acpi/></features><devices>"
                    "<emulator>/usr/bin/qemu-system-x86_64</emulator><disk type='file' device='disk'>"
                    "<driver name='qemu' type='raw'/><source file='" + g_root + "/images/" + name + ".img'/>"
                    "<target dev='hda' bus='ide'/></disk>";
  if (nic) {
    char mac[18];
    std::snprintf(mac, sizeof mac, "52:54:00:%02x:%02x:%02x", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff);
    xml += std::string("<interface type='bridge'><mac address='") + mac + "'/><source bridge='br-bench'/><model type='e1000'/></interface>";
  }
  xml += "</devices></domain>";
  write_domain(g_root + "/domains/" + name + ".xml", xml);
  std::filesystem::copy_file(g_build + "/tests/guest/guest.img", g_root + "/images/" + name + ".img",
                             std::filesystem::copy_options::overwrite_existing);
  ::chmod((g_root + "/images/" + name + ".img").c_str(), 0644);
}

// The bare baseline: exec the plan ourselves with a tap and a monitor, drive QMP to running.
double bare_launch(const vl::Plan& plan, int i) {
  std::string sock = g_root + "/bare.sock";
  ::unlink(sock.c_str());
  vl::UniqueFd tap(::open("/dev/net/tun", O_RDWR | O_CLOEXEC));
  ifreq ifr{};
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
  std::snprintf(ifr.ifr_name, IFNAMSIZ, "bare%d", i);
  if (::ioctl(tap.get(), TUNSETIFF, &ifr) < 0) die("TUNSETIFF");
  vl::UniqueFd mon(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  sock.copy(sa.sun_path, sizeof sa.sun_path - 1);
  if (::bind(mon.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0 || ::listen(mon.get(), 1) < 0) die("bind");
  vl::UniqueFd null_fd(::open("/dev/null", O_WRONLY | O_CLOEXEC));
  std::vector<vl::FdMapping> fds = {{null_fd.get(), 1}, {null_fd.get(), 2}};
  for (const auto& s : plan.fds) fds.push_back({s.kind == vl::FdSlot::Kind::kMonitor ? mon.get() : tap.get(), s.fd});
  std::vector<std::string> argv = plan.argv;  // as the helper runs it: with its sandbox
  for (std::string& arg : vl::emulator_sandbox_args()) argv.push_back(std::move(arg));
  auto t0 = Clock::now();
  auto pid = vl::spawn({plan.emulator, argv, vl::emulator_environment(), fds});
  if (!pid) die(pid.error().message());
  auto qmp = vl::test::QmpConnection::connect(sock);
  if (!qmp || !qmp->execute("qmp_capabilities") || !qmp->execute("cont")) die("bare QMP");
  double ms = ms_since(t0);
  (void)qmp->execute("quit");
  (void)vl::wait_for(*pid);
  return ms;
}

long status_field(pid_t pid, const std::string& key) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(key + ":", 0) == 0) return std::atol(line.c_str() + key.size() + 1);
  return -1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) die("usage: control_plane BUILD_DIR [RUNNING_VMS]");
  g_build = argv[1];
  int running_vms = argc > 2 ? std::atoi(argv[2]) : 100;
  vl::test::ScopedNetns ns;
  vl::test::TempDir tmp;
  g_root = tmp.path();
  ::chmod(g_root.c_str(), 0755);
  for (const char* d : {"domains", "images", "cache"}) std::filesystem::create_directory(g_root + "/" + d);
  if (::chown((g_root + "/cache").c_str(), 65534, 65534) < 0) die("chown cache");
  if (::stat("/dev/net/tun", &g_tun) < 0) die("stat /dev/net/tun");
  std::atexit(clean_up_at_exit);
  ::chmod("/dev/net/tun", 0666);
  std::ofstream(g_root + "/vmlaunch.toml") << "[paths]\ndomains = \"" << g_root << "/domains\"\nruntime = \"" << g_root
      << "/run\"\nstate = \"" << g_root << "/state\"\ncache = \"" << g_root << "/cache\"\nudev_rules = \"" << g_root
      << "/udev\"\nuserdb = \"" << g_root << "/userdb\"\n[users]\ndaemon_user = \"nobody\"\ndaemon_group = \"nogroup\"\nadmin_group = \"root\"\n"
      << "[storage]\nroots = [\"" << g_root << "/images\"]\n[zones.bench]\nbridge = \"br-bench\"\n";
  if (std::system("ip link add br-bench type bridge && ip link set br-bench up") != 0) die("bridge");
  vl::UniqueFd null_fd(::open("/dev/null", O_WRONLY | O_CLOEXEC));
  std::string config = g_root + "/vmlaunch.toml";
  auto broker = vl::spawn({g_build + "/helper/vmlaunch-helper", {"vmlaunch-helper", "--config", config, "serve"}, {},
                           {{null_fd.get(), 2}}});
  wait_for_path(g_root + "/run/helper.sock");
  auto daemon = vl::spawn({"/usr/bin/setpriv", {"setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                                                g_build + "/daemon/vmlaunchd", "--config", config, "run"},
                           {}, {{null_fd.get(), 2}}});
  if (broker) g_broker = *broker;
  if (daemon) g_daemon = *daemon;
  if (!broker || !daemon) die("start broker/daemon");
  g_stop_vms = {g_build + "/vmctl/vmctl", "--config", config, "stop", "--force", "--all"};
  wait_for_path(g_root + "/run/control.sock");

  // 1. Launch overhead, warm plan cache, alternating the two ways.
  define("bench", 1, true);
  vmctl({"start", "bench"});
  vmctl({"stop", "--force", "bench"});
  auto plan = vl::plan_from_json(vmctl({"plan", "bench"}));
  if (!plan) die(plan.error().message());
  std::vector<double> via_vmctl, bare;
  for (int i = 0; i < 15; ++i) {
    auto t0 = Clock::now();
    vmctl({"start", "bench"});
    via_vmctl.push_back(ms_since(t0));
    vmctl({"stop", "--force", "bench"});
    bare.push_back(bare_launch(*plan, i));
  }
  std::sort(via_vmctl.begin(), via_vmctl.end());
  std::sort(bare.begin(), bare.end());
  std::printf("launch, vmctl start -> running:       %s\n", median_line(via_vmctl).c_str());
  std::printf("launch, bare exec of the plan -> running: %s\n", median_line(bare).c_str());
  std::printf("launch overhead (difference of medians): %.1f ms\n", via_vmctl[via_vmctl.size() / 2] - bare[bare.size() / 2]);

  // 2. vmctl list with 1,000 defined VMs.
  for (int i = 0; i < 1000; ++i) {
    std::string xml = "<domain type='qemu'><name>d" + std::to_string(i) + "</name><devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices></domain>";
    write_domain(g_root + "/domains/d" + std::to_string(i) + ".xml", xml);
  }
  vmctl({"list"});  // first listing parses every file once
  std::vector<double> lists;
  for (int i = 0; i < 20; ++i) {
    auto t0 = Clock::now();
    vmctl({"list"});
    lists.push_back(ms_since(t0));
  }
  auto t0 = Clock::now();
  for (int i = 0; i < 20; ++i) run(g_build + "/vmctl/vmctl", {"vmctl", "--version"});
  double exec_only = ms_since(t0) / 20;
  std::printf("vmctl list, 1001 defined VMs:         %s (vmctl --version alone: %.1f ms)\n", median_line(lists).c_str(), exec_only);
  std::vector<double> statuses;
  for (int i = 0; i < 20; ++i) {
    auto t1 = Clock::now();
    vmctl({"status", "bench"});
    statuses.push_back(ms_since(t1));
  }
  std::printf("vmctl status, 1001 defined VMs:       %s\n", median_line(statuses).c_str());
  for (int i = 0; i < 1000; ++i) std::filesystem::remove(g_root + "/domains/d" + std::to_string(i) + ".xml");

  // 3. Daemon RSS and idle wakeups with many running VMs.
  std::vector<std::string> names;
  for (int i = 0; i < running_vms; ++i) {
    names.push_back("r" + std::to_string(i));
    define(names.back(), 100 + i, false);
  }
  std::vector<std::string> start = {"start", "--parallel", "4"};
  start.insert(start.end(), names.begin(), names.end());
  vmctl(start);
  pid_t dpid = *daemon;  // setpriv execs vmlaunchd in place
  long before = status_field(dpid, "voluntary_ctxt_switches") + status_field(dpid, "nonvoluntary_ctxt_switches");
  std::this_thread::sleep_for(std::chrono::seconds(10));
  long after = status_field(dpid, "voluntary_ctxt_switches") + status_field(dpid, "nonvoluntary_ctxt_switches");
  std::printf("daemon with %d running VMs: VmRSS %ld KiB, %ld context switches in 10 s idle\n", running_vms,
              status_field(dpid, "VmRSS"), after - before);
  std::vector<std::string> stop = {"stop", "--force", "--all", "--parallel", "8"};
  vmctl(stop);
  return 0;  // clean_up_at_exit stops the daemon and the broker
}
