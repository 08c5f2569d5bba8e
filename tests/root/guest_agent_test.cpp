// `vmctl stop --mode agent` against a real Linux guest (tests/guest/init.sh, scenario agent)
// whose stand-in agent answers on the virtio-serial port virt-install declares. The guest runs
// under TCG and has no ACPI handling (busybox, no acpid): a power button press does nothing, so
// a stop that ends before its deadline went through the agent.
#include <doctest/doctest.h>

#include <chrono>
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

}  // namespace

TEST_SUITE("root/guest_agent") {
  TEST_CASE("stop --mode agent powers a Linux guest off through its agent, before any deadline") {
    vl::test::LinuxGuestFiles files;
    SystemEnv env;
    vl::test::DomainSpec spec{.name = "agent1", .mac = "52:54:00:00:30:01"};
    spec.memory_mib = 256;
    spec.nic_model = "virtio";
    spec.kernel = files.kernel();
    spec.initrd = files.initrd();
    spec.cmdline = "console=ttyS0 quiet panic=-1 vlg.scenario=agent vlg.ip=10.0.0.2";
    spec.guest_agent = true;
    env.define(spec);
    auto started = env.vmctl({"start", "agent1"});
    REQUIRE_MESSAGE(started.exit_code == 0, started.out << env.log());

    // While the guest boots (about 4 s under TCG, more on a loaded host) nothing answers: each
    // such stop fails after the agent's 10 s and leaves the VM running. Then one succeeds.
    auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(5);
    vl::test::CommandResult stop;
    int refused = 0;
    while (std::chrono::steady_clock::now() < deadline) {
      stop = env.vmctl({"stop", "agent1", "--mode", "agent", "--timeout", "120"});
      if (stop.exit_code == 0) break;
      ++refused;
      CHECK_MESSAGE(stop.out.find("the guest agent did not answer within 10 s") != std::string::npos, stop.out);
      REQUIRE(state_of(env, "agent1") == "running");
    }
    REQUIRE_MESSAGE(stop.exit_code == 0, stop.out << env.log());
    CHECK(state_of(env, "agent1") == "stopped");
    MESSAGE("stops refused while the guest booted: " << refused);
  }
}
