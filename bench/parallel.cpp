// VMS VMs at once, on the real system (root broker, daemon as nobody, vmctl, TCG guests) inside a
// private network namespace, against the bare baseline under the same load, alternating rounds:
//   1. start: VMS bare execs of the plans started at once, each driven over QMP to running
//      (bench_support.h), until the last runs; against `vmctl start --parallel VMS`;
//   2. graceful stop: VMS bare guests sent `system_powerdown` at once, each quit once its guest
//      has powered off, until the last has exited (the slowest guest's time); against
//      `vmctl stop --all` (the power button, the daemon's quit, the broker's cleanup).
// Targets (docs/performance.md): start within 1.3x the bare time; stop within bare + 1 s.
// Usage (root): parallel BUILD_DIR [VMS] [ROUNDS]
#include "bench/bench_system.h"

namespace {

using namespace vl::bench;

// Runs `each(i)` for every VM in a thread of its own; returns the wall time until all returned.
template <typename Each>
double all_at_once(size_t n, Each each) {
  auto t0 = Clock::now();
  std::vector<std::thread> threads;
  for (size_t i = 0; i < n; ++i) threads.emplace_back([&, i] { each(i); });
  for (auto& t : threads) t.join();
  return ms_since(t0);
}

// The guest's own power-off, as the bare baseline sees it: the button, then (with
// -no-shutdown, as every plan has) the emulator's status turning to "shutdown", then `quit`.
void bare_power_off(BareVm& vm) {
  if (!vm.qmp->execute("system_powerdown")) die("bare: system_powerdown failed");
  for (auto until = Clock::now() + std::chrono::seconds(60);;) {
    auto status = vm.qmp->execute("query-status");
    if (status && (*status)["status"] == "shutdown") break;
    if (Clock::now() > until) die("bare: a guest did not power off within 60 s");
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  (void)bare_stop(vm);
}

// Long enough for every guest to have booted and enabled its power button, in both contenders.
constexpr std::chrono::seconds kBooted{3};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) die("usage: parallel BUILD_DIR [VMS] [ROUNDS]");
  const int vms = argc > 2 ? std::atoi(argv[2]) : 50;
  const int rounds = argc > 3 ? std::atoi(argv[3]) : 5;
  if (vms < 1 || vms > 200 || rounds < 1) die("VMS must be 1 to 200, ROUNDS at least 1");
  BenchSystem system(argv[1]);
  auto vmctl = [&](std::vector<std::string> args) { return system.vmctl(std::move(args)); };

  std::vector<std::string> names;
  for (int i = 0; i < vms; ++i) {
    names.push_back("p" + std::to_string(i));
    system.define(names.back(), 0x200 + i);
  }
  std::vector<std::string> start = {"start", "--parallel", std::to_string(vms)};
  start.insert(start.end(), names.begin(), names.end());
  const std::vector<std::string> stop = {"stop", "--all"};
  // Warm-up, not counted: plans cached, uids assigned, page cache filled.
  vmctl(start);
  vmctl({"stop", "--force", "--all"});
  std::vector<vl::Plan> plans;
  for (const std::string& name : names) {
    auto p = vl::plan_from_json(vmctl({"plan", name}));
    if (!p) die(p.error().message());
    plans.push_back(std::move(*p));
  }

  std::vector<double> bare_starts, vm_starts, bare_stops, vm_stops;
  auto bare_round = [&] {
    std::vector<BareVm> running(plans.size());
    bare_starts.push_back(all_at_once(plans.size(), [&](size_t i) {
      double ms = 0;
      running[i] = bare_start(plans[i], "bare" + std::to_string(i), system.root() + "/bare-" + std::to_string(i) + ".sock", &ms);
    }));
    std::this_thread::sleep_for(kBooted);
    bare_stops.push_back(all_at_once(plans.size(), [&](size_t i) { bare_power_off(running[i]); }));
  };
  auto vmlaunch_round = [&] {
    auto t0 = Clock::now();
    vmctl(start);
    vm_starts.push_back(ms_since(t0));
    std::this_thread::sleep_for(kBooted);
    t0 = Clock::now();
    vmctl(stop);
    vm_stops.push_back(ms_since(t0));
  };
  for (int round = 0; round < rounds; ++round) {
    std::printf("%d VMs at once, round %d of %d...\n", vms, round + 1, rounds);
    if (round % 2 == 0) bare_round(), vmlaunch_round();
    else vmlaunch_round(), bare_round();
  }
  auto median = [](std::vector<double> v) { return stats_of(std::move(v)).median; };
  std::printf("%d at once, start -> all running, bare:             %s\n", vms, describe(stats_of(bare_starts)).c_str());
  std::printf("%d at once, start -> all running, vmctl --parallel: %s\n", vms, describe(stats_of(vm_starts)).c_str());
  std::printf("  ratio of medians: %.2fx (target 1.3x)\n", median(vm_starts) / median(bare_starts));
  std::printf("%d at once, graceful stop -> all gone, bare:        %s\n", vms, describe(stats_of(bare_stops)).c_str());
  std::printf("%d at once, graceful stop -> all gone, vmctl stop --all: %s\n", vms, describe(stats_of(vm_stops)).c_str());
  std::printf("  difference of medians: %+.0f ms (target +1000 ms)\n", median(vm_stops) - median(bare_stops));
  return 0;  // ~BenchSystem stops the VMs, the daemon and the broker
}
