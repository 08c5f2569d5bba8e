// Benchmarks of the control plane, on the real system (root broker, daemon as nobody, vmctl,
// TCG guests) inside a private network namespace:
//   1. launch overhead: `vmctl start` -> running, minus a bare exec of the same plan -> QMP
//      running (tap and monitor fds prepared beforehand), side by side, warm plan cache;
//   2. `vmctl list` and `vmctl status` with 1,000 defined VMs;
//   3. daemon RSS and idle wakeups with N running VMs.
// Usage (root): control_plane BUILD_DIR [RUNNING_VMS]
#include "bench/bench_system.h"

namespace {

using namespace vl::bench;
std::string g_root;

// The bare baseline, one launch: exec the plan, QMP to running, then quit.
double bare_launch(const vl::Plan& plan, int i) {
  double ms = 0;
  BareVm vm = bare_start(plan, "bare" + std::to_string(i), g_root + "/bare.sock", &ms);
  (void)bare_stop(vm);
  return ms;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) die("usage: control_plane BUILD_DIR [RUNNING_VMS]");
  const int running_vms = argc > 2 ? std::atoi(argv[2]) : 100;
  BenchSystem system(argv[1]);
  g_root = system.root();
  auto vmctl = [&](std::vector<std::string> args) { return system.vmctl(std::move(args)); };
  auto define = [&](const std::string& name, int n, bool nic) { system.define(name, nic ? std::optional<int>(n) : std::nullopt); };

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
  std::printf("launch, vmctl start -> running:       %s\n", describe(stats_of(via_vmctl)).c_str());
  std::printf("launch, bare exec of the plan -> running: %s\n", describe(stats_of(bare)).c_str());
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
  for (int i = 0; i < 20; ++i) run(std::string(argv[1]) + "/vmctl/vmctl", {"vmctl", "--version"});
  double exec_only = ms_since(t0) / 20;
  std::printf("vmctl list, 1001 defined VMs:         %s (vmctl --version alone: %.1f ms)\n", describe(stats_of(lists)).c_str(), exec_only);
  std::vector<double> statuses;
  for (int i = 0; i < 20; ++i) {
    auto t1 = Clock::now();
    vmctl({"status", "bench"});
    statuses.push_back(ms_since(t1));
  }
  std::printf("vmctl status, 1001 defined VMs:       %s\n", describe(stats_of(statuses)).c_str());
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
  pid_t dpid = system.daemon();
  long before = status_field(dpid, "voluntary_ctxt_switches") + status_field(dpid, "nonvoluntary_ctxt_switches");
  std::this_thread::sleep_for(std::chrono::seconds(10));
  long after = status_field(dpid, "voluntary_ctxt_switches") + status_field(dpid, "nonvoluntary_ctxt_switches");
  std::printf("daemon with %d running VMs: VmRSS %ld KiB, %ld context switches in 10 s idle\n", running_vms,
              status_field(dpid, "VmRSS"), after - before);
  std::vector<std::string> stop = {"stop", "--force", "--all", "--parallel", "8"};
  vmctl(stop);
  return 0;  // ~BenchSystem stops the VMs, the daemon and the broker
}
