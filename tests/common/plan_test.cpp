#include "common/plan.h"

#include <doctest/doctest.h>

using vl::FdSlot;
using vl::Plan;

namespace {
Plan sample_plan() {
  Plan p;
  p.vm = "web1";
  p.emulator = "/usr/bin/qemu-system-x86_64";
  p.argv = {p.emulator, "-S", "-name", "guest=web1"};
  p.fds = {{FdSlot::Kind::kMonitor, 3, -1}, {FdSlot::Kind::kTap, 4, 0}};
  p.vnc = vl::VncSetup{"/run/vmlaunch/vnc/web1/vnc.sock", true};
  p.serial_ptys = 1;
  p.cache_key = "abc";
  return p;
}
}  // namespace

TEST_SUITE("common/plan") {
  TEST_CASE("a plan survives a JSON round trip") {
    Plan p = sample_plan();
    auto back = vl::plan_from_json(vl::plan_to_json(p, false));
    REQUIRE_MESSAGE(back.ok(), back.error().context);
    CHECK(*back == p);
  }

  TEST_CASE("hostile plans are rejected") {
    const char* cases[] = {
        "",
        "[]",
        R"({"vm":"web1"})",
        R"({"vm":"web1","emulator":"/usr/bin/qemu","argv":["/bin/sh"],"fds":[],"serial_ptys":0,"cache_key":""})",
        R"({"vm":"web1","emulator":"/e","argv":["/e"],"fds":[{"fd":2,"kind":"monitor"}],"serial_ptys":0,"cache_key":""})",
        R"({"vm":"web1","emulator":"/e","argv":["/e"],"fds":[{"fd":3,"kind":"monitor"},{"fd":3,"kind":"tap","nic":0}],"serial_ptys":0,"cache_key":""})",
        R"({"vm":"web1","emulator":"/e","argv":["/e"],"fds":[{"fd":3,"kind":"tap","nic":0},{"fd":4,"kind":"tap","nic":0}],"serial_ptys":0,"cache_key":""})",
        R"({"vm":"web1","emulator":"/e","argv":["/e"],"fds":[{"fd":3,"kind":"disk"}],"serial_ptys":0,"cache_key":""})",
        R"({"vm":"web1","emulator":"/e","argv":["/e"],"fds":[],"serial_ptys":0,"cache_key":"","env":["LD_PRELOAD=/x"]})",
        R"({"vm":"web1","emulator":"/e","argv":["/e", 5],"fds":[],"serial_ptys":0,"cache_key":""})",
    };
    for (const char* c : cases) {
      CAPTURE(c);
      CHECK_FALSE(vl::plan_from_json(c).ok());
    }
  }
}
