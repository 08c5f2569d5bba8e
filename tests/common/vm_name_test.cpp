#include "common/vm_name.h"

#include <doctest/doctest.h>

#include <set>

using vl::VmName;

TEST_SUITE("common/vm_name") {
  TEST_CASE("accepts the documented grammar") {
    for (const char* name : {"a", "web1", "db-primary", "a-1", "abcdefghijklm", "x0-y1"}) {
      CAPTURE(name);
      CHECK(VmName::parse(name).ok());
    }
  }

  TEST_CASE("rejects everything else, naming the rule") {
    struct Case {
      std::string_view name;
      const char* reason;
    };
    const Case cases[] = {
        {"", "empty"},
        {"abcdefghijklmn", "longer than 13"},
        {"../x", "only lower-case"},
        {"Web1", "only lower-case"},
        {"web_1", "only lower-case"},
        {"1web", "must start"},
        {"-web", "must start"},
        {"web-", "must not end"},
        {"web 1", "only lower-case"},
        {"web\n1", "only lower-case"},
        {std::string_view("we\0b", 4), "only lower-case"},
        {"w\xc3\xa9" "b", "only lower-case"},
        {"\xff\xfe", "only lower-case"},
        {"web1/..", "only lower-case"},
    };
    for (const auto& c : cases) {
      CAPTURE(c.name);
      auto r = VmName::parse(c.name);
      REQUIRE_FALSE(r.ok());
      CHECK(r.error().code == vl::ErrorCode::kInvalid);
      CHECK(r.error().context.find(c.reason) != std::string::npos);
    }
  }

  TEST_CASE("hostile bytes are escaped in the message") {
    auto r = VmName::parse("a\nb\x01");
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().context.find('\n') == std::string::npos);
    CHECK(r.error().context.find("\\x0a") != std::string::npos);
  }

  TEST_CASE("tap names fit IFNAMSIZ and never collide") {
    auto longest = VmName::parse("abcdefghijklm");
    REQUIRE(longest.ok());
    CHECK(longest->tap_name(9) == "abcdefghijklm-9");
    CHECK(longest->tap_name(9).size() == 15);

    // VM names that look like another VM's tap name still map to distinct taps.
    std::set<std::string> taps;
    size_t produced = 0;
    for (const char* n : {"a", "a-1", "a-1-0", "a-10", "a1", "a-0"}) {
      auto vm = VmName::parse(n);
      REQUIRE(vm.ok());
      for (unsigned nic = 0; nic < VmName::kMaxNics; ++nic, ++produced) taps.insert(vm->tap_name(nic));
    }
    CHECK(taps.size() == produced);
  }
}
