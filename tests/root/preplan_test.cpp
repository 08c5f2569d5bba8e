// Planning ahead (daemon/preplanner.h): the daemon converts every defined domain in the
// background, at its start and when a definition changes, so that no start waits for libvirt.
// Observed through the plan cache and the conversion count `status` reports; no timings.
#include <doctest/doctest.h>

#include <signal.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "tests/support/system_env.h"

using vl::test::SystemEnv;
using Json = nlohmann::json;

namespace {

std::string mac_of(int i) {
  char buf[18];
  std::snprintf(buf, sizeof buf, "52:54:00:00:20:%02x", i);
  return buf;
}

Json status_of(SystemEnv& env, const std::string& vm) {
  auto r = env.vmctl({"status", "--json", vm});
  REQUIRE_MESSAGE(r.exit_code == 0, r.out);
  Json j = Json::parse(r.out, nullptr, false);
  REQUIRE((j.is_array() && j.size() == 1));
  return j[0];
}

// Polls `status` until `done` holds, for up to three minutes: a cold conversion pays libvirt's
// capabilities probe, and CI runs under load.
template <typename Pred>
Json wait_for_status(SystemEnv& env, const std::string& vm, Pred done) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(3);
  Json last;
  while (std::chrono::steady_clock::now() < deadline) {
    last = status_of(env, vm);
    if (done(last)) return last;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  FAIL("status of " << vm << " never reached the expected state: " << last.dump() << "\n" << env.log());
  return last;
}

Json wait_until_ready(SystemEnv& env, const std::string& vm) {
  return wait_for_status(env, vm, [](const Json& s) { return s.value("plan", "") == "ready"; });
}

// The plan cache's entries (daemon/plan_cache.h), with their modification times.
std::map<std::string, std::filesystem::file_time_type> cache_entries(SystemEnv& env) {
  std::map<std::string, std::filesystem::file_time_type> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(env.root() + "/cache/plans", ec))
    if (e.path().extension() == ".argv") out[e.path().filename()] = e.last_write_time();
  return out;
}

Json list_row(SystemEnv& env, const std::string& vm) {
  auto r = env.vmctl({"list", "--json"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.out);
  for (const Json& row : Json::parse(r.out))
    if (row["name"] == vm) return row;
  FAIL("no row for " << vm);
  return {};
}

// The processes whose command line has all of `words` (NUL-separated arguments joined with
// spaces), by pid.
std::vector<pid_t> processes_with(const std::vector<std::string>& words) {
  std::vector<pid_t> found;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc", ec)) {
    std::string name = e.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream in(e.path() / "cmdline", std::ios::binary);
    std::string cmdline((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
    bool all = !cmdline.empty();
    for (const std::string& w : words) all = all && cmdline.find(w) != std::string::npos;
    if (all) found.push_back(static_cast<pid_t>(std::stol(name)));
  }
  return found;
}

// libvirt's QEMU capabilities probe of this environment's conversion roots (`-machine none`,
// its monitor socket under the root), whichever stage of its -daemonize it is in.
std::vector<pid_t> capability_probes(SystemEnv& env) { return processes_with({"-machine none", env.root() + "/"}); }

// A daemon whose pre-plan is in libvirt's capabilities probe stops (`kill_daemon`: how), and
// no probe may be left: an orphaned one waits for its monitor's client forever.
void probe_dies_with_daemon(SystemEnv& env, const std::function<void()>& kill_daemon) {
  env.stop_daemon();
  env.define({.name = "web1", .mac = mac_of(1)});  // a fresh cache: the probe runs at the daemon's start
  env.start_daemon();
  std::vector<pid_t> probes;
  auto seen_by = std::chrono::steady_clock::now() + std::chrono::minutes(2);
  while ((probes = capability_probes(env)).empty() && std::chrono::steady_clock::now() < seen_by)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  REQUIRE_MESSAGE(!probes.empty(), "no capabilities probe seen\n" << env.log());
  // Stopped, the probe stands for one the daemon's end catches mid-way, however fast it is.
  for (pid_t p : probes) ::kill(p, SIGSTOP);
  kill_daemon();
  auto gone_by = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (!(probes = capability_probes(env)).empty() && std::chrono::steady_clock::now() < gone_by)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  CHECK_MESSAGE(probes.empty(), probes.size() << " capabilities probe(s) outlived the daemon, the first pid " << probes.front());
  for (pid_t p : probes) ::kill(p, SIGKILL);  // not left to the next test
  // The next daemon plans: nothing of the interrupted conversion holds its root.
  env.start_daemon();
  CHECK(wait_until_ready(env, "web1")["plan"] == "ready");
}

}  // namespace

TEST_SUITE("root/preplan") {
  TEST_CASE("a daemon stopped during a pre-plan's capabilities probe leaves no probe emulator behind") {
    SystemEnv env;
    probe_dies_with_daemon(env, [&] { env.stop_daemon(); });
  }

  TEST_CASE("a daemon killed during a pre-plan's capabilities probe leaves no probe emulator behind") {
    SystemEnv env;
    probe_dies_with_daemon(env, [&] { env.kill_daemon(); });
  }

  TEST_CASE("a VM defined before the daemon starts is planned ahead: its first start runs no conversion") {
    SystemEnv env;
    env.stop_daemon();
    env.define({.name = "web1", .mac = mac_of(1)});
    REQUIRE(cache_entries(env).empty());
    env.start_daemon();

    Json ready = wait_until_ready(env, "web1");
    CHECK(ready["state"] == "stopped");
    CHECK(ready["conversions"] == "1");
    auto planned = cache_entries(env);
    CHECK(planned.size() == 1);

    auto started = env.vmctl({"start", "web1"});
    REQUIRE_MESSAGE(started.exit_code == 0, started.out << env.log());
    Json running = status_of(env, "web1");
    CHECK(running["state"] == "running");
    CHECK(running["conversions"] == "1");  // the start found its plan: libvirt did not run
    CHECK(cache_entries(env) == planned);  // nor was the entry written again
    CHECK(env.vmctl({"stop", "--force", "web1"}).exit_code == 0);
  }

  TEST_CASE("a definition edited while the daemon runs is planned again before its start") {
    SystemEnv env;
    env.define({.name = "web1", .mac = mac_of(1)});
    CHECK(wait_until_ready(env, "web1")["conversions"] == "1");

    env.define({.name = "web1", .mac = mac_of(2)});  // another MAC: another XML, another plan
    Json replanned = wait_for_status(env, "web1", [](const Json& s) {
      return s.value("conversions", "") == "2" && s.value("plan", "") == "ready";
    });
    CHECK(replanned["state"] == "stopped");
    CHECK(cache_entries(env).size() == 2);

    auto started = env.vmctl({"start", "web1"});
    REQUIRE_MESSAGE(started.exit_code == 0, started.out << env.log());
    CHECK(status_of(env, "web1")["conversions"] == "2");
    CHECK(env.vmctl({"stop", "--force", "web1"}).exit_code == 0);
  }

  TEST_CASE("a domain libvirt refuses fails its pre-plan, says so in list and status, and the others start") {
    SystemEnv env;
    env.stop_daemon();  // both defined at once, as at a host's boot
    env.define({.name = "good", .mac = mac_of(1)});
    std::string xml = env.define({.name = "bad", .mac = mac_of(2)});
    // libvirt refuses VNC passwords over 8 characters; vmlaunch's parser leaves that to it.
    xml.insert(xml.find("  </devices>"),
               "    <graphics type='vnc' autoport='yes' listen='127.0.0.1' passwd='much-too-long-password'/>\n");
    env.install_domain("bad", xml);
    env.start_daemon();

    Json bad = wait_for_status(env, "bad", [](const Json& s) { return s.value("plan", "").rfind("failed: ", 0) == 0; });
    CHECK_MESSAGE(bad["plan"].get<std::string>().find("VNC password") != std::string::npos, bad.dump());
    CHECK(bad["state"] == "stopped");
    Json row = list_row(env, "bad");
    CHECK_MESSAGE(row["reason"].get<std::string>().find("cannot be planned") != std::string::npos, row.dump());
    CHECK_MESSAGE(row["reason"].get<std::string>().find("VNC password") != std::string::npos, row.dump());

    wait_until_ready(env, "good");
    CHECK(list_row(env, "good")["reason"] == "");
    auto started = env.vmctl({"start", "good"});
    REQUIRE_MESSAGE(started.exit_code == 0, started.out << env.log());
    CHECK(status_of(env, "good")["conversions"] == "1");
    CHECK(env.vmctl({"stop", "--force", "good"}).exit_code == 0);
  }
}
