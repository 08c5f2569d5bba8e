// vmlaunch against libvirt, side by side in one run, on the same guest, domain XML and bridge:
//   1. first starts: libvirtd with an empty capabilities cache and vmlaunch (broker and
//      daemon) with an empty plan cache, each from its daemon's start to its first VM running;
//      the same after a restart with the cache kept; and the start alone once a daemon started
//      with an empty cache has served for 5 s;
//   2. warm start and stop, round-robin: a bare exec of the plan to QMP running, `vmctl start`,
//      `virsh start`; then `quit`, `vmctl stop --force`, `virsh destroy`;
//   3. VMS VMs at once: VMS bare execs, `vmctl start --parallel VMS`, VMS concurrent
//      `virsh start`, and their stops; resident memory of vmlaunchd (and the broker) against
//      libvirtd + virtlogd with the VMs running.
// It prints the results and writes them as a Markdown table to REPORT.
//
// Run by bench/vs-libvirt, which prepares what this expects: the network namespace
// vmlaunch-bench with the bridge br-bench, private /etc/libvirt, /var/lib/libvirt,
// /run/libvirt, /var/cache/libvirt and /var/log/libvirt (marked by /run/libvirt/.vmlaunch-bench),
// /dev/kvm root:kvm 0660 and /dev/net/tun 0666 as a Debian host has them.
//
// Usage (root): vs_libvirt BUILD_DIR WORK_DIR RUNS VMS REPORT
#include <signal.h>
#include <sys/stat.h>

#include <functional>

#include "bench/bench_support.h"

namespace {

using namespace vl::bench;

std::string g_build, g_work, g_root;  // g_root: vmlaunch's configuration root
pid_t g_broker = 0, g_daemon = 0, g_libvirt_init = 0;

const char* kLibvirtSocket = "/run/libvirt/libvirt-sock";
// libvirt's QEMU capabilities cache: what a cold libvirtd has to probe again.
const char* kLibvirtCapsCache = "/var/cache/libvirt/qemu/capabilities";
constexpr int kColdRounds = 3, kParallelRounds = 3;
// How long a daemon started cold is left alone before its "settled" first start.
constexpr std::chrono::seconds kSettle{5};

// ---- vmlaunch ----

std::string config_path() { return g_root + "/vmlaunch.toml"; }

std::vector<std::string> vmctl_argv(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {g_build + "/vmctl/vmctl", "--config", config_path()};
  argv.insert(argv.end(), args.begin(), args.end());
  return argv;
}

std::string vmctl(const std::vector<std::string>& args) { return run(g_build + "/vmctl/vmctl", vmctl_argv(args)); }

// Waits for a process, killing it if it has not exited within `seconds`.
void stop_process(pid_t& pid, int sig, int seconds) {
  if (pid <= 0) return;
  ::kill(pid, sig);
  auto deadline = Clock::now() + std::chrono::seconds(seconds);
  int status = 0;
  while (::waitpid(pid, &status, WNOHANG) == 0) {
    if (Clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      (void)vl::wait_for(pid);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  pid = 0;
}

void stop_vmlaunch() {
  if (g_daemon > 0) (void)run_quietly(vmctl_argv({"stop", "--force", "--all"}));
  stop_process(g_daemon, SIGTERM, 10);
  stop_process(g_broker, SIGTERM, 10);
}

// Starts the broker and the daemon; returns once the daemon is started (not yet serving).
void start_vmlaunch() {
  vl::UniqueFd log(::open((g_work + "/vmlaunch.log").c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
  std::filesystem::remove(g_root + "/run/helper.sock");
  std::filesystem::remove(g_root + "/run/control.sock");
  auto broker = vl::spawn({g_build + "/helper/vmlaunch-helper", {"vmlaunch-helper", "--config", config_path(), "serve"},
                           kEnvironment, {{log.get(), 2}}});
  if (!broker) die("broker: " + broker.error().message());
  g_broker = *broker;
  wait_for_path(g_root + "/run/helper.sock");
  // setpriv execs vmlaunchd in place: the pid is the daemon's.
  auto daemon = vl::spawn({"/usr/bin/setpriv", {"setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                                                g_build + "/daemon/vmlaunchd", "--config", config_path(), "run"},
                           kEnvironment, {{log.get(), 2}}});
  if (!daemon) die("daemon: " + daemon.error().message());
  g_daemon = *daemon;
}

// Runs `argv` until it succeeds: while a daemon is coming up, its clients fail (no socket yet,
// or a socket not yet listening).
void retry_until_served(const std::vector<std::string>& argv, const std::string& log) {
  auto deadline = Clock::now() + std::chrono::seconds(120);
  while (!succeeded(run_quietly(argv))) {
    if (Clock::now() > deadline) die(argv[argv.size() - 2] + " " + argv.back() + " never succeeded (see " + g_work + "/" + log + ")");
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}


// ---- libvirt ----

std::vector<std::string> virsh_argv(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"/usr/bin/virsh", "-q", "-c", "qemu:///system"};
  argv.insert(argv.end(), args.begin(), args.end());
  return argv;
}

// libvirtd as a Debian host runs it (virtlogd beside it), under pid_ns_init so that its
// emulators are reaped at once; pid files in the private /run/libvirt, not in the host's /run.
void start_libvirtd() {
  std::filesystem::remove(kLibvirtSocket);
  vl::UniqueFd log(::open((g_work + "/libvirtd.log").c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
  auto pid = vl::spawn({g_build + "/bench/pid_ns_init",
                        {"pid_ns_init", "/bin/sh", "-c",
                         "virtlogd --daemon --pid-file=/run/libvirt/virtlogd.pid && "
                         "exec libvirtd --pid-file=/run/libvirt/libvirtd.pid"},
                        kEnvironment, {{log.get(), 1}, {log.get(), 2}}});
  if (!pid) die("libvirtd: " + pid.error().message());
  g_libvirt_init = *pid;
  wait_for_path(kLibvirtSocket);
}

// SIGTERM reaches libvirtd through pid_ns_init; its exit ends the namespace with virtlogd and
// any emulator left.
void stop_libvirtd() { stop_process(g_libvirt_init, SIGTERM, 30); }


std::vector<pid_t> children_of(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/task/" + std::to_string(pid) + "/children");
  std::vector<pid_t> out;
  for (pid_t child; in >> child;) out.push_back(child);
  return out;
}

std::string comm_of(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/comm");
  std::string comm;
  std::getline(in, comm);
  return comm;
}

// VmRSS of libvirtd + virtlogd (the children of the namespace's init), in KiB.
long libvirt_rss_kib() {
  long sum = 0;
  for (pid_t init : children_of(g_libvirt_init))
    for (pid_t p : children_of(init))
      if (std::string c = comm_of(p); c == "libvirtd" || c == "virtlogd") sum += status_field(p, "VmRSS");
  return sum;
}

// ---- measuring ----

// The latest modification time of the files in a directory, to see whether a cache was rewritten.
std::filesystem::file_time_type newest_write(const std::string& dir) {
  std::error_code ec;
  std::filesystem::file_time_type newest{};
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) newest = std::max(newest, e.last_write_time());
  if (ec) die(dir + " is not there: the cache is elsewhere");
  return newest;
}

double timed(const std::function<void()>& f) {
  auto t0 = Clock::now();
  f();
  return ms_since(t0);
}

// One system under test, for its first starts.
struct System {
  std::function<void()> start_daemon, stop_daemon, clear_cache;
  std::string cache_dir;  // if set, checked: a restart must not rewrite the cache
  std::vector<std::string> serving, start_vm, stop_vm;  // `serving` succeeds once the daemon serves
  std::string log;
};

struct FirstStarts {
  std::vector<double> cold, restarted, settled;
};

// The first start of a VM: after a cold start of the daemon (empty cache), from the daemon's
// start to the VM running; the same after a restart with the cache kept; and, the daemon
// started cold and left alone for kSettle, the start alone (what a daemon that prepares its
// work ahead gains).
void first_starts(const System& s, FirstStarts& out) {
  auto first_vm = [&] {
    s.start_daemon();
    retry_until_served(s.start_vm, s.log);
  };
  s.clear_cache();
  out.cold.push_back(timed(first_vm));
  run(s.stop_vm[0], s.stop_vm);
  s.stop_daemon();

  auto cached = s.cache_dir.empty() ? std::filesystem::file_time_type{} : newest_write(s.cache_dir);
  out.restarted.push_back(timed(first_vm));
  run(s.stop_vm[0], s.stop_vm);
  s.stop_daemon();
  if (!s.cache_dir.empty() && newest_write(s.cache_dir) != cached)
    std::printf("  %s was rewritten after a restart: the restart is not warm\n", s.cache_dir.c_str());

  s.clear_cache();
  s.start_daemon();
  retry_until_served(s.serving, s.log);
  std::this_thread::sleep_for(kSettle);
  out.settled.push_back(timed([&] { run(s.start_vm[0], s.start_vm); }));
  run(s.stop_vm[0], s.stop_vm);
  s.stop_daemon();
}

// Runs every argv at once; returns the wall time until the last has exited. Dies if one fails.
double all_at_once(const std::vector<std::vector<std::string>>& argvs) {
  vl::UniqueFd null_fd(::open("/dev/null", O_WRONLY | O_CLOEXEC));
  auto t0 = Clock::now();
  std::vector<pid_t> pids;
  for (const auto& argv : argvs) {
    auto pid = vl::spawn({argv[0], argv, kEnvironment, {{null_fd.get(), 1}, {null_fd.get(), 2}}});
    if (!pid) die(argv[0] + ": " + pid.error().message());
    pids.push_back(*pid);
  }
  bool ok = true;
  for (pid_t pid : pids) {
    auto status = vl::wait_for(pid);
    ok = status && succeeded(*status) && ok;
  }
  double ms = ms_since(t0);
  if (!ok) die("one of " + std::to_string(argvs.size()) + " concurrent " + argvs[0][argvs[0].size() - 2] + " failed");
  return ms;
}

std::string image_for(const std::string& name) {
  std::string path = g_work + "/images/" + name + ".img";
  copy_image(g_build + "/tests/guest/guest.img", path);
  return path;
}

// The same XML for both; libvirt's VMs get other MACs (both sets share the bridge).
void define_vmlaunch(const std::string& name, int mac) {
  write_domain(g_root + "/domains/" + name + ".xml", domain_xml(name, image_for(name), mac));
}

void define_libvirt(const std::string& name, int mac) {
  std::string file = g_work + "/libvirt-" + name + ".xml";
  std::ofstream(file) << domain_xml(name, image_for(name), mac);
  run("/usr/bin/virsh", virsh_argv({"define", file}));
}

struct Row {
  std::string what;
  std::optional<Stats> bare, vmlaunch, libvirt;
  std::string unit = "ms";
};

std::string cell(const std::optional<Stats>& s, const std::string& unit) {
  if (!s) return "—";
  char buf[96];
  if (s->n == 1) std::snprintf(buf, sizeof buf, "%.1f %s", s->median, unit.c_str());
  else std::snprintf(buf, sizeof buf, "%.1f %s (%.1f–%.1f)", s->median, unit.c_str(), s->min, s->max);
  return buf;
}

std::string overhead_cell(const std::optional<Stats>& s, const std::optional<Stats>& bare) {
  if (!s || !bare) return "—";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%+.1f ms", s->median - bare->median);
  return buf;
}

// vmlaunch's overhead over bare as a share of libvirt's; without a bare column, the plain ratio.
std::string ratio_cell(const Row& r) {
  if (!r.vmlaunch || !r.libvirt) return "—";
  double a = r.vmlaunch->median, b = r.libvirt->median;
  if (r.bare) a -= r.bare->median, b -= r.bare->median;
  if (b <= 0) return "—";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f×", a / b);
  return buf;
}

void report(const std::vector<Row>& rows, const std::string& path) {
  std::ofstream md(path);
  md << "| what | bare exec | vmlaunch | libvirt | vmlaunch over bare | libvirt over bare | vmlaunch ÷ libvirt |\n"
        "| --- | --- | --- | --- | --- | --- | --- |\n";
  for (const Row& r : rows) {
    md << "| " << r.what << " | " << cell(r.bare, r.unit) << " | " << cell(r.vmlaunch, r.unit) << " | "
       << cell(r.libvirt, r.unit) << " | " << (r.unit == "ms" ? overhead_cell(r.vmlaunch, r.bare) : "—") << " | "
       << (r.unit == "ms" ? overhead_cell(r.libvirt, r.bare) : "—") << " | " << ratio_cell(r) << " |\n";
    std::printf("%-44s bare %-24s vmlaunch %-26s libvirt %-26s ratio %s\n", r.what.c_str(), cell(r.bare, r.unit).c_str(),
                cell(r.vmlaunch, r.unit).c_str(), cell(r.libvirt, r.unit).c_str(), ratio_cell(r).c_str());
  }
}

Stats one(double v) { return stats_of({v}); }

void clean_up_at_exit() {
  stop_vmlaunch();
  stop_libvirtd();
}

void on_signal(int) {
  // The script that started this cleans up whatever is left in the namespace.
  std::_Exit(130);
}

// Refuses to run anywhere but in the namespace bench/vs-libvirt prepared.
void check_namespace() {
  struct stat here {}, named {};
  if (::stat("/proc/self/ns/net", &here) < 0 || ::stat("/run/netns/vmlaunch-bench", &named) < 0 ||
      here.st_ino != named.st_ino)
    die("not in the network namespace vmlaunch-bench: run bench/vs-libvirt instead");
  if (!std::filesystem::exists("/run/libvirt/.vmlaunch-bench"))
    die("/run/libvirt is not the benchmark's private directory: run bench/vs-libvirt instead");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 6) die("usage: vs_libvirt BUILD_DIR WORK_DIR RUNS VMS REPORT");
  g_build = argv[1];
  g_work = argv[2];
  int runs = std::atoi(argv[3]), vms = std::atoi(argv[4]);
  if (runs < 1 || vms < 1) die("RUNS and VMS must be positive");
  check_namespace();
  ::signal(SIGINT, on_signal);
  ::signal(SIGTERM, on_signal);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);

  g_root = g_work + "/vmlaunch";
  for (const std::string& d : {g_root, g_root + "/domains", g_root + "/cache", g_work + "/images"})
    std::filesystem::create_directories(d);
  if (::chown((g_root + "/cache").c_str(), 65534, 65534) < 0) die("chown cache");
  std::ofstream(config_path()) << vmlaunch_config(g_root, g_work + "/images");
  std::atexit(clean_up_at_exit);

  std::vector<std::string> parallel_vm, parallel_lv;
  define_vmlaunch("bench", 1);
  // The bare exec's plan: the same XML under another name, for a disk of its own (QEMU locks
  // its images, and the bare VM runs beside vmlaunch's).
  define_vmlaunch("bare", 2);
  for (int i = 0; i < vms; ++i) {
    parallel_vm.push_back("p" + std::to_string(i));
    define_vmlaunch(parallel_vm.back(), 0x100 + i);
  }

  // libvirt: define every domain with a first libvirtd, then stop it.
  std::printf("defining the domains in libvirt...\n");
  start_libvirtd();
  retry_until_served(virsh_argv({"version"}), "libvirtd.log");
  define_libvirt("lv-bench", 0x10001);
  for (int i = 0; i < vms; ++i) {
    parallel_lv.push_back("lv-p" + std::to_string(i));
    define_libvirt(parallel_lv.back(), 0x10100 + i);
  }
  stop_libvirtd();

  // 1. First starts.
  System libvirt{start_libvirtd, stop_libvirtd, [] { std::filesystem::remove_all(kLibvirtCapsCache); },
                 kLibvirtCapsCache, virsh_argv({"version"}), virsh_argv({"start", "lv-bench"}),
                 virsh_argv({"destroy", "lv-bench"}), "libvirtd.log"};
  System vmlaunch{start_vmlaunch, stop_vmlaunch,
                  [] {
                    for (const auto& e : std::filesystem::directory_iterator(g_root + "/cache")) std::filesystem::remove_all(e.path());
                  },
                  "", vmctl_argv({"list"}), vmctl_argv({"start", "bench"}), vmctl_argv({"stop", "--force", "bench"}),
                  "vmlaunch.log"};
  FirstStarts first_lv, first_vm;
  for (int round = 0; round < kColdRounds; ++round) {
    std::printf("first starts, round %d of %d...\n", round + 1, kColdRounds);
    first_starts(libvirt, first_lv);
    first_starts(vmlaunch, first_vm);
    std::printf("  libvirtd cold %.1f ms, restarted %.1f ms, settled %.1f ms; vmlaunch cold %.1f ms, restarted %.1f ms, settled %.1f ms\n",
                first_lv.cold.back(), first_lv.restarted.back(), first_lv.settled.back(), first_vm.cold.back(),
                first_vm.restarted.back(), first_vm.settled.back());
  }

  start_libvirtd();
  retry_until_served(virsh_argv({"version"}), "libvirtd.log");
  start_vmlaunch();
  retry_until_served(vmctl_argv({"list"}), "vmlaunch.log");

  // 2. Warm start and stop, round-robin, each round in another order.
  auto plan = vl::plan_from_json(vmctl({"plan", "bare"}));
  if (!plan) die(plan.error().message());
  std::vector<double> start_bare, start_vm, start_lv, stop_bare, stop_vm, stop_lv;
  BareVm bare;
  std::vector<std::function<void(bool)>> starts = {
      [&](bool keep) {
        double ms = 0;
        bare = bare_start(*plan, "bare0", g_work + "/bare.sock", &ms);
        if (keep) start_bare.push_back(ms);
      },
      [&](bool keep) {
        double ms = timed([] { vmctl({"start", "bench"}); });
        if (keep) start_vm.push_back(ms);
      },
      [&](bool keep) {
        double ms = timed([] { run("/usr/bin/virsh", virsh_argv({"start", "lv-bench"})); });
        if (keep) start_lv.push_back(ms);
      }};
  std::vector<std::function<void(bool)>> stops = {
      [&](bool keep) {
        double ms = bare_stop(bare);
        if (keep) stop_bare.push_back(ms);
      },
      [&](bool keep) {
        double ms = timed([] { vmctl({"stop", "--force", "bench"}); });
        if (keep) stop_vm.push_back(ms);
      },
      [&](bool keep) {
        double ms = timed([] { run("/usr/bin/virsh", virsh_argv({"destroy", "lv-bench"})); });
        if (keep) stop_lv.push_back(ms);
      }};
  std::printf("warm starts and stops, %d rounds...\n", runs);
  for (int round = -1; round < runs; ++round) {  // round -1 warms up and is not counted
    for (size_t k = 0; k < 3; ++k) starts[(k + static_cast<size_t>(round + 1)) % 3](round >= 0);
    for (size_t k = 0; k < 3; ++k) stops[(k + static_cast<size_t>(round + 1)) % 3](round >= 0);
  }

  // 3. VMS VMs at once.
  std::vector<vl::Plan> plans;
  for (const std::string& name : parallel_vm) {
    auto p = vl::plan_from_json(vmctl({"plan", name}));
    if (!p) die(p.error().message());
    plans.push_back(std::move(*p));
  }
  std::vector<double> par_bare, par_vm, par_lv, par_stop_bare, par_stop_vm, par_stop_lv;
  long rss_daemon = 0, rss_broker = 0, rss_libvirt = 0;
  std::vector<std::function<void()>> parallel = {
      [&] {
        std::vector<BareVm> vmsr(plans.size());
        std::vector<double> each(plans.size());
        auto t0 = Clock::now();
        std::vector<std::thread> threads;
        for (size_t i = 0; i < plans.size(); ++i)
          threads.emplace_back([&, i] {
            vmsr[i] = bare_start(plans[i], "bare" + std::to_string(i), g_work + "/bare-" + std::to_string(i) + ".sock", &each[i]);
          });
        for (auto& t : threads) t.join();
        par_bare.push_back(ms_since(t0));
        threads.clear();
        t0 = Clock::now();
        for (size_t i = 0; i < plans.size(); ++i) threads.emplace_back([&, i] { (void)bare_stop(vmsr[i]); });
        for (auto& t : threads) t.join();
        par_stop_bare.push_back(ms_since(t0));
      },
      [&] {
        std::vector<std::string> start = {"start", "--parallel", std::to_string(vms)};
        start.insert(start.end(), parallel_vm.begin(), parallel_vm.end());
        par_vm.push_back(timed([&] { vmctl(start); }));
        rss_daemon = std::max(rss_daemon, status_field(g_daemon, "VmRSS"));
        rss_broker = std::max(rss_broker, status_field(g_broker, "VmRSS"));
        std::vector<std::string> stop = {"stop", "--force", "--parallel", std::to_string(vms)};
        stop.insert(stop.end(), parallel_vm.begin(), parallel_vm.end());
        par_stop_vm.push_back(timed([&] { vmctl(stop); }));
      },
      [&] {
        std::vector<std::vector<std::string>> start, destroy;
        for (const std::string& name : parallel_lv) {
          start.push_back(virsh_argv({"start", name}));
          destroy.push_back(virsh_argv({"destroy", name}));
        }
        par_lv.push_back(all_at_once(start));
        rss_libvirt = std::max(rss_libvirt, libvirt_rss_kib());
        par_stop_lv.push_back(all_at_once(destroy));
      }};
  for (int round = 0; round < kParallelRounds; ++round) {
    std::printf("%d VMs at once, round %d of %d...\n", vms, round + 1, kParallelRounds);
    for (size_t k = 0; k < 3; ++k) parallel[(k + static_cast<size_t>(round)) % 3]();
  }

  std::string at_once = std::to_string(vms) + " VMs at once";
  std::vector<Row> rows = {
      {"start → running, warm", stats_of(start_bare), stats_of(start_vm), stats_of(start_lv)},
      {"stop: `quit` / `vmctl stop --force` / `virsh destroy`", stats_of(stop_bare), stats_of(stop_vm), stats_of(stop_lv)},
      {"first start, cold: daemon start → first VM running, empty cache", std::nullopt, stats_of(first_vm.cold),
       stats_of(first_lv.cold)},
      {"first start after a daemon restart, cache kept", std::nullopt, stats_of(first_vm.restarted), stats_of(first_lv.restarted)},
      {"first start " + std::to_string(kSettle.count()) + " s after a cold daemon start (start → running)", std::nullopt,
       stats_of(first_vm.settled), stats_of(first_lv.settled)},
      {at_once + ": start → all running", stats_of(par_bare), stats_of(par_vm), stats_of(par_lv)},
      {at_once + ": stop → all gone", stats_of(par_stop_bare), stats_of(par_stop_vm), stats_of(par_stop_lv)},
      {"resident memory with " + std::to_string(vms) + " VMs running: vmlaunchd / libvirtd + virtlogd", std::nullopt,
       one(static_cast<double>(rss_daemon) / 1024), one(static_cast<double>(rss_libvirt) / 1024), "MiB"},
      {"the same, vmlaunchd + its root broker", std::nullopt, one(static_cast<double>(rss_daemon + rss_broker) / 1024),
       one(static_cast<double>(rss_libvirt) / 1024), "MiB"},
  };
  report(rows, argv[5]);
  return 0;  // clean_up_at_exit stops both systems
}
