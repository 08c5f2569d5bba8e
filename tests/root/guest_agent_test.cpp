// `vmctl stop` and `vmctl stop --mode agent` against a real Linux guest (tests/guest/init.sh,
// scenario agent) whose stand-in agent answers on the virtio-serial port virt-install declares.
// The guest runs under TCG and has no ACPI handling (busybox, no acpid): a power button press
// does nothing, so a stop that ends before its deadline went through the agent. And a plain
// stop of a guest whose agent channel nobody answers falls back to the power button.
#include <doctest/doctest.h>

#include <poll.h>

#include <chrono>
#include <future>
#include <nlohmann/json.hpp>
#include <thread>

#include "tests/support/linux_guest.h"
#include "tests/support/system_env.h"

using vl::test::SystemEnv;
using Json = nlohmann::json;

namespace {

std::string state_of(SystemEnv& env, const std::string& name) {
  auto r = env.vmctl({"list", "--json"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.out);
  for (const Json& row : Json::parse(r.out))
    if (row["name"] == name) return row["state"];
  return "";
}

// The guest's serial console, through its socket once the VM runs. Output before that is in
// the serial log only; the guest prints its markers seconds later.
vl::UniqueFd open_console(SystemEnv& env, const std::string& name) {
  return vl::test::connect_console(env.root() + "/run/vms/" + name + "/console.sock");
}

// Reads the console into `text` until it holds `marker` or `limit` passes.
bool wait_for_console(int fd, std::string& text, const std::string& marker, std::chrono::seconds limit) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (text.find(marker) == std::string::npos && std::chrono::steady_clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    (void)::poll(&p, 1, 200);
    char buf[4096];
    ssize_t n;
    while ((n = ::read(fd, buf, sizeof buf)) > 0) text.append(buf, static_cast<size_t>(n));
  }
  return text.find(marker) != std::string::npos;
}

// Stops the agent guest with `stop_args` and checks it powered off through its agent: the
// agent answered the daemon's sync and got its shutdown request, and the VM reads stopped, not
// forced; the guest has no ACPI handling, so nothing else could have powered it off.
void check_stopped_by_agent(const std::string& name, std::vector<std::string> stop_args) {
  vl::test::LinuxGuestFiles files;
  SystemEnv env;
  vl::test::DomainSpec spec = vl::test::linux_guest_domain(files, name, "52:54:00:00:30:01", "agent");
  spec.guest_agent = true;
  env.define(spec);
  auto started = env.vmctl({"start", name});
  REQUIRE_MESSAGE(started.exit_code == 0, started.out << env.log());
  vl::UniqueFd console = open_console(env, name);
  std::string text;
  // About 4 s under TCG; generous for a loaded host.
  REQUIRE_MESSAGE(wait_for_console(console.get(), text, "VLG READY", std::chrono::minutes(3)), text);

  // The console is read while the stop runs: what the guest prints as it powers off is gone
  // once its emulator has exited.
  auto stopping = std::async(std::launch::async, [&] { return env.vmctl(stop_args); });
  auto limit = std::chrono::steady_clock::now() + std::chrono::minutes(5);
  while (!wait_for_console(console.get(), text, "VLG AGENT shutdown", std::chrono::seconds(1)) &&
         stopping.wait_for(std::chrono::seconds(0)) != std::future_status::ready && std::chrono::steady_clock::now() < limit) {
  }
  auto stop = stopping.get();
  CHECK_MESSAGE(stop.exit_code == 0, stop.out << env.log());
  auto status = env.vmctl({"status", "--json", name});
  CHECK_MESSAGE(status.out.find("\"stopped\"") != std::string::npos, status.out);
  CHECK_MESSAGE(status.out.find("forced") == std::string::npos, status.out);
  CHECK_MESSAGE(text.find("VLG AGENT sync ") != std::string::npos, text << stop.out);
  CHECK_MESSAGE(text.find("VLG AGENT shutdown") != std::string::npos, text << stop.out);
}

}  // namespace

TEST_SUITE("root/guest_agent") {
  TEST_CASE("stop --mode agent powers a Linux guest off through its agent, before any deadline") {
    check_stopped_by_agent("agent1", {"stop", "agent1", "--mode", "agent", "--timeout", "300"});
  }

  // Without --mode, like virsh shutdown: the agent first. The deadline is short enough that a
  // stop by the (ignored) power button ends forced, long enough for the agent under load.
  TEST_CASE("a plain stop of a guest whose agent answers goes through the agent") {
    check_stopped_by_agent("agent2", {"stop", "agent2", "--timeout", "90"});
  }

  TEST_CASE("a plain stop of a guest with an agent channel nobody answers falls back to the power button") {
    SystemEnv env;
    // The boot-sector guest answers the power button and has no agent behind its channel.
    vl::test::DomainSpec spec{.name = "agent3", .mac = "52:54:00:00:30:03"};
    spec.guest_agent = true;
    env.define(spec);
    auto started = env.vmctl({"start", "agent3"});
    REQUIRE_MESSAGE(started.exit_code == 0, started.out << env.log());
    auto stop = env.vmctl({"stop", "agent3", "--timeout", "120"});
    CHECK_MESSAGE(stop.exit_code == 0, stop.out << env.log());
    CHECK(state_of(env, "agent3") == "stopped");
    auto status = env.vmctl({"status", "--json", "agent3"});
    CHECK_MESSAGE(status.out.find("forced") == std::string::npos, status.out);
    // --mode agent still fails on the same guest, and leaves it running.
    REQUIRE(env.vmctl({"start", "agent3"}).exit_code == 0);
    auto agent_only = env.vmctl({"stop", "agent3", "--mode", "agent", "--timeout", "120"});
    CHECK(agent_only.exit_code != 0);
    CHECK(state_of(env, "agent3") == "running");
  }
}
