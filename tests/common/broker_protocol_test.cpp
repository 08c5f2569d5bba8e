#include "common/broker_protocol.h"

#include <doctest/doctest.h>
#include <signal.h>

#include <string>

namespace {

std::string kill_request(const std::string& signal) {
  return R"({"op":"kill","vm":"web1","signal":)" + signal + "}";
}

}  // namespace

TEST_SUITE("common/broker_protocol") {
  TEST_CASE("kill takes SIGTERM, SIGKILL or SIGINT, judged on the number as sent, before any narrowing") {
    for (int allowed : {SIGTERM, SIGKILL, SIGINT}) {
      auto r = vl::parse_broker_request(kill_request(std::to_string(allowed)));
      REQUIRE_MESSAGE(r.ok(), r.error().context);
      CHECK(r->op == vl::BrokerOp::kKill);
      CHECK(r->signal == allowed);
    }
    const char* refused[] = {
        "0", "1", "-9", "19", "64",
        "4294967305",            // 2^32 + 9: SIGKILL once truncated to int
        "4294967311",            // 2^32 + 15
        "-4294967287",           // -2^32 + 9
        "9223372036854775817",   // 2^63 + 9, an unsigned 64-bit number
        "18446744073709551625",  // 2^64 + 9, beyond 64 bits
        "9.0", "\"9\"", "null", "[9]",
    };
    for (const char* signal : refused) {
      CAPTURE(std::string(signal));
      CHECK_FALSE(vl::parse_broker_request(kill_request(signal)).ok());
    }
  }

  TEST_CASE("a kill request survives a round trip; start and cleanup carry no signal") {
    auto vm = vl::VmName::parse("web1").value();
    auto back = vl::parse_broker_request(vl::encode_broker_request({vl::BrokerOp::kKill, vm, SIGTERM}));
    REQUIRE(back.ok());
    CHECK(back->signal == SIGTERM);
    CHECK_FALSE(vl::parse_broker_request(R"({"op":"cleanup","vm":"web1","signal":9})").ok());
    CHECK(vl::parse_broker_request(R"({"op":"cleanup","vm":"web1"})").ok());
    auto reattach = vl::parse_broker_request(R"({"op":"reattach","vm":"web1"})");
    REQUIRE(reattach.ok());
    CHECK(reattach->op == vl::BrokerOp::kReattach);
    CHECK(vl::encode_broker_request(*reattach) == R"({"op":"reattach","vm":"web1"})");
    CHECK_FALSE(vl::parse_broker_request(R"({"op":"reattach","vm":"web1","bridge":"br-x"})").ok());
  }
}
