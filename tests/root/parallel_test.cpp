// Batches that wait for guests wait for all of them together (vmctl(1), BATCH OPERATION).
// Observed through the states `list` reports while the batch runs; no timings.
#include <doctest/doctest.h>

#include <chrono>
#include <filesystem>
#include <future>
#include <nlohmann/json.hpp>
#include <thread>

#include "tests/support/system_env.h"

using vl::test::SystemEnv;
using Json = nlohmann::json;

TEST_SUITE("root/parallel") {
  TEST_CASE("stop --all presses every guest's power button at once, more than the start's parallelism") {
    SystemEnv env;
    constexpr int kVms = 6;  // more than the 4 starts vmctl runs at once by default
    std::vector<std::string> names;
    for (int i = 1; i <= kVms; ++i) {
      names.push_back("slow" + std::to_string(i));
      char mac[18];
      std::snprintf(mac, sizeof mac, "52:54:00:00:30:%02x", i);
      env.define({.name = names.back(), .mac = mac});
      // Ignores the power button: each stop lasts until its deadline.
      std::filesystem::copy_file(vl::test::build_path("VMLAUNCH_GUEST_STUBBORN_IMG"),
                                 env.root() + "/images/" + names.back() + ".img",
                                 std::filesystem::copy_options::overwrite_existing);
    }
    std::vector<std::string> start = {"start", "--parallel", std::to_string(kVms)};
    start.insert(start.end(), names.begin(), names.end());
    auto started = env.vmctl(start);
    REQUIRE_MESSAGE(started.exit_code == 0, started.out << env.log());

    auto stop = std::async(std::launch::async, [&] { return env.vmctl({"stop", "--all", "--timeout", "30"}); });
    // Until the first deadline, every guest waits at once; a bounded batch would leave some
    // running until the first of them is forced off.
    int most_stopping = 0;
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (most_stopping < kVms && std::chrono::steady_clock::now() < until &&
           stop.wait_for(std::chrono::milliseconds(50)) != std::future_status::ready) {
      auto listed = env.vmctl({"list", "--json"});
      REQUIRE_MESSAGE(listed.exit_code == 0, listed.out);
      int stopping = 0;
      for (const Json& row : Json::parse(listed.out)) stopping += row["state"] == "stopping";
      most_stopping = std::max(most_stopping, stopping);
    }
    CHECK(most_stopping == kVms);
    auto stopped = stop.get();
    CHECK_MESSAGE(stopped.exit_code == 0, stopped.out);
    for (const Json& row : Json::parse(env.vmctl({"list", "--json"}).out)) CHECK(row["state"] == "stopped");
  }
}
