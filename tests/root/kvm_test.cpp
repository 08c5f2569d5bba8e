// type='kvm' domains on a Debian KVM host: the daemon plans them unprivileged, the helper
// launches them, and the emulator really runs under KVM. Only the boot-sector guest runs
// under KVM here (a Linux guest makes no progress under this machine's KVM); every other
// guest stays on TCG.
#include <doctest/doctest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/support/kvm_device.h"
#include "tests/support/system_env.h"

using vl::test::KvmDevice;
using vl::test::SystemEnv;
using Json = nlohmann::json;

namespace {

Json row_of(SystemEnv& env, const std::string& name) {
  auto r = env.vmctl({"list", "--json"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.out);
  for (const Json& row : Json::parse(r.out))
    if (row["name"] == name) return row;
  FAIL("no row for " << name);
  return {};
}

// The emulator's argv, NUL-separated words joined by spaces.
std::string cmdline_of(int pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline");
  std::string words((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (char& c : words)
    if (c == '\0') c = ' ';
  return words;
}

}  // namespace

TEST_SUITE("root/kvm") {
  TEST_CASE("a type='kvm' domain plans as the unprivileged daemon in group kvm, runs under KVM and stops") {
    KvmDevice kvm;  // root:kvm 0660, as udev leaves it on Debian
    SystemEnv env("kvm");
    env.define({.name = "fast1", .type = "kvm", .zone = "dmz"});
    auto started = env.vmctl({"start", "fast1"});
    REQUIRE_MESSAGE(started.exit_code == 0, started.out << env.log());
    Json row = row_of(env, "fast1");
    CHECK(row["state"] == "running");
    int pid = row["pid"].get<int>();
    std::string cmdline = cmdline_of(pid);
    CHECK_MESSAGE(cmdline.find("-accel kvm") != std::string::npos, cmdline);
    // The emulator holds /dev/kvm open as its own uid, through the group kvm alone.
    bool holds_kvm = false;
    for (const auto& e : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd")) {
      std::error_code ec;
      holds_kvm |= std::filesystem::read_symlink(e.path(), ec) == "/dev/kvm";
    }
    CHECK(holds_kvm);
    auto stopped = env.vmctl({"stop", "fast1", "--timeout", "60"});
    CHECK_MESSAGE(stopped.exit_code == 0, stopped.out << env.log());
    CHECK(row_of(env, "fast1")["state"] == "stopped");
  }

  TEST_CASE("a type='kvm' domain the daemon cannot describe says why: /dev/kvm and the group kvm") {
    KvmDevice kvm;
    SystemEnv env;  // the daemon's user is in no group: no access to /dev/kvm
    env.define({.name = "fast2", .type = "kvm"});
    auto started = env.vmctl({"start", "fast2"});
    CHECK(started.exit_code != 0);
    CHECK_MESSAGE(started.out.find("cannot open /dev/kvm") != std::string::npos, started.out);
    CHECK_MESSAGE(started.out.find("group 'kvm'") != std::string::npos, started.out);
    CHECK(row_of(env, "fast2")["state"] != "running");
  }
}
