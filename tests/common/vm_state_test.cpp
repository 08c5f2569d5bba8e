#include "common/vm_state.h"

#include <doctest/doctest.h>

namespace {

vl::VmState sample() {
  vl::VmState s;
  s.vm = "web1";
  s.pid = 4242;
  s.start_time = 100;
  s.uid = 70000;
  s.emulator = "/usr/bin/qemu-system-x86_64";
  s.zone = "dmz";
  s.started_at = 1700000000;
  return s;
}

}  // namespace

TEST_SUITE("common/vm_state") {
  TEST_CASE("a unit's invocation ID round-trips; a launch outside a unit has none") {
    vl::VmState in_unit = sample();
    in_unit.invocation = "03b5f054dd0c49aaad2d72a718dec91b";
    auto read = vl::vm_state_from_json(vl::vm_state_to_json(in_unit));
    REQUIRE_MESSAGE(read.ok(), read.error().message());
    CHECK(*read == in_unit);
    std::string standalone = vl::vm_state_to_json(sample());
    CHECK(standalone.find("invocation") == std::string::npos);
    auto plain = vl::vm_state_from_json(standalone);
    REQUIRE(plain.ok());
    CHECK(plain->invocation.empty());
  }

  TEST_CASE("an invocation ID that is not 32 lower-case hex digits makes the state file malformed") {
    for (const char* bad : {"", "03B5F054DD0C49AAAD2D72A718DEC91B", "03b5f054dd0c49aaad2d72a718dec91", "03b5f054dd0c49aaad2d72a718dec91b0",
                            "03b5f054-dd0c-49aa-ad2d-72a718dec91b", "x' OR _PID=1"}) {
      CAPTURE(bad);
      std::string text = vl::vm_state_to_json(sample());
      text.insert(text.rfind('}'), std::string(",\"invocation\": \"") + bad + "\"");
      auto read = vl::vm_state_from_json(text);
      REQUIRE_FALSE(read.ok());
      CHECK(read.error().message() == "VM state file is malformed");
    }
    CHECK_FALSE(vl::is_invocation_id("03b5f054dd0c49aaad2d72a718dec91g"));
    CHECK(vl::is_invocation_id("0123456789abcdef0123456789abcdef"));
  }
}
