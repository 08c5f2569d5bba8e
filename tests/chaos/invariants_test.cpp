// The chaos suite's judgement on hand-made snapshots: a healthy host passes, and each way a
// host can be left half-done is named.
#include <doctest/doctest.h>

#include <functional>

#include "tests/chaos/invariants.h"

using namespace vl::chaos;

namespace {

constexpr uid_t kUid = 70001;

HostSetup setup() {
  return {.root = "/t", .config_path = "/t/vmlaunch.toml", .helper_exe = "/b/vmlaunch-helper", .uid_first = 70000,
          .broker = 10, .vnc = true, .uid_of = {{"web1", kUid}, {"db1", 70002}}};
}

// web1 running as pid 100 with its relay 101, db1 stopped: everything in place.
HostView healthy() {
  HostView v;
  v.rows["web1"] = {"running", "", 100, static_cast<int>(kUid), 0};
  v.rows["db1"] = {"stopped", "", 0, 70002, -1};
  v.links["br-dmz"] = {"br-dmz", 2, 0, true, "bridge"};
  v.links["web1-0"] = {"web1-0", 7, 2, true, "tun"};
  v.nft.table = true;
  v.nft.chains = {"prerouting", "input", "vm-web1"};
  v.nft.tap_map = {{"web1-0", "vm-web1"}};
  v.procs = {{10, 0, 'S', 1, "/b/vmlaunch-helper", "vmlaunch-helper --config /t/vmlaunch.toml serve "},
             {100, kUid, 'S', 4, "/usr/bin/qemu-system-x86_64", "qemu-system-x86_64 -name guest=web1 "},
             {101, 0, 'S', 1, "/b/vmlaunch-helper", "vmlaunch-helper --config /t/vmlaunch.toml launch web1 --report-fd 3 "}};
  v.files["web1"] = {true, kUid, kUid, 0600, true, true, 100, ""};
  v.files["db1"] = {true, 0, 0, 0644, false, false, std::nullopt, "no state"};
  return v;
}

std::string check(const HostView& v) {
  std::string all;
  for (const auto& s : check_invariants(v, setup(), [](pid_t pid) { return pid == 100 || pid == 101 || pid == 10; }))
    all += s + "\n";
  return all;
}

}  // namespace

TEST_SUITE("chaos/invariants") {
  TEST_CASE("a healthy host passes") { CHECK(check(healthy()) == ""); }

  TEST_CASE("each half-done state is named") {
    struct Case {
      const char* what;
      std::function<void(HostView&)> spoil;
      const char* expected;
    };
    const Case cases[] = {
        {"tap on no bridge", [](HostView& v) { v.links["web1-0"].master = 0; }, "web1: tap web1-0 is not a port of br-dmz"},
        {"tap down", [](HostView& v) { v.links["web1-0"].up = false; }, "web1: tap web1-0 is down"},
        {"tap gone", [](HostView& v) { v.links.erase("web1-0"); }, "web1: running, but tap web1-0 is missing"},
        {"chain gone", [](HostView& v) { v.nft.chains.erase("vm-web1"); }, "web1: running, but chain vm-web1 is missing"},
        {"map element gone", [](HostView& v) { v.nft.tap_map.clear(); }, "web1: map taps does not send web1-0 to vm-web1"},
        {"emulator dead", [](HostView& v) { v.rows["web1"].pid = 999; }, "web1: running, but no process 999"},
        {"emulator of another uid", [](HostView& v) { v.procs[1].uid = 70005; }, "web1: emulator runs as uid 70005"},
        {"emulator a zombie", [](HostView& v) { v.procs[1].state = 'Z', v.procs[1].threads = 1; }, "web1: emulator pid 100 is a zombie"},
        {"disk still root's", [](HostView& v) { v.files["web1"].disk_uid = 0; }, "web1: disk is 0:70001 0600, not 70001 0600"},
        {"state.json of another pid", [](HostView& v) { v.files["web1"].state_pid = 55; }, "web1: state.json says pid 55"},
        {"no VNC display", [](HostView& v) { v.rows["web1"].vnc = -1; }, "web1: running without a VNC display"},
        {"stopped with a tap", [](HostView& v) { v.links["db1-0"] = {"db1-0", 9, 2, true, "tun"}; }, "db1: stopped, but tap db1-0 exists"},
        {"stopped with a chain", [](HostView& v) { v.nft.chains.insert("vm-db1"); }, "db1: stopped, but chain vm-db1 exists"},
        {"stopped with a runtime dir", [](HostView& v) { v.files["db1"].runtime_dir = true; }, "db1: stopped, but its runtime directory exists"},
        {"stopped with a journal", [](HostView& v) { v.files["db1"].journal = true; }, "db1: stopped, but its disk journal exists"},
        {"disk not handed back", [](HostView& v) { v.files["db1"].disk_uid = 70002; }, "db1: stopped, but the disk is 70002:0 0644, not back to 0:0 0644"},
        {"a process of a stopped VM's uid", [](HostView& v) { v.procs.push_back({200, 70002, 'S', 1, "/usr/bin/qemu-system-x86_64", ""}); },
         "db1: stopped, but pid 200 (/usr/bin/qemu-system-x86_64) runs as its uid 70002"},
        {"orphan emulator", [](HostView& v) { v.procs.push_back({201, 70009, 'S', 1, "/usr/bin/qemu-system-x86_64", ""}); },
         "orphan process 201 (/usr/bin/qemu-system-x86_64) of VM uid 70009"},
        {"a launch for a stopped VM", [](HostView& v) { v.procs.push_back({202, 0, 'S', 1, "/b/vmlaunch-helper", "vmlaunch-helper --config /t/vmlaunch.toml launch db1 --report-fd 3 "}); },
         "stray helper process 202"},
        {"three relays for one VM", [](HostView& v) {
           for (pid_t pid : {203, 204}) v.procs.push_back({pid, 0, 'S', 1, "/b/vmlaunch-helper", "vmlaunch-helper --config /t/vmlaunch.toml launch web1 --report-fd 3 "});
         },
         "stray helper process 204"},
        {"orphan tap", [](HostView& v) { v.links["x-0"] = {"x-0", 11, 0, false, "tun"}; }, "orphan tap x-0"},
        {"orphan chain", [](HostView& v) { v.nft.chains.insert("vm-x"); }, "orphan chain vm-x"},
        {"orphan map element", [](HostView& v) { v.nft.tap_map["x-0"] = "vm-x"; }, "orphan map element x-0 -> vm-x"},
        {"transitional state", [](HostView& v) { v.rows["db1"].state = "stopping"; }, "db1: unsettled state stopping"},
    };
    for (const auto& c : cases) {
      INFO(c.what);
      HostView v = healthy();
      c.spoil(v);
      std::string found = check(v);
      CHECK_MESSAGE(found.find(c.expected) != std::string::npos, found);
    }
  }

  TEST_CASE("processes of other hosts' runs are not this run's concern") {
    HostView v = healthy();
    v.procs.push_back({300, 0, 'S', 1, "/b/vmlaunch-helper", "vmlaunch-helper --config /other/vmlaunch.toml launch db1 "});
    v.procs.push_back({301, 12345, 'S', 1, "/usr/bin/qemu-system-x86_64", ""});  // outside the uid range
    v.procs.push_back({302, 70009, 'Z', 1, "", ""});  // a reaped-late zombie holds nothing
    CHECK(check(v) == "");
  }
}
