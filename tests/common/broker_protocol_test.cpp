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

  TEST_CASE("a reply with wrongly typed fields is an error, not an abort") {
    // Found by fuzz/broker_protocol_fuzzer: typed reads of these fields aborted the reader
    // (the daemon, or the root broker reading a launch's report pipe).
    const char* malformed[] = {
        R"({"ok":false,"error":{"code":"conflict","errno":17,"message":17}})",
        R"({"ok":false,"error":{"code":7,"errno":17,"message":"x"}})",
        R"({"ok":false,"error":{"code":"conflict","errno":"17","message":"x"}})",
        R"({"ok":false,"error":{"errno":1e300}})",
        R"({"ok":false,"error":{"errno":-1}})",
        R"({"ok":false,"error":"boom"})",
        R"({"ok":false,"error":[1]})",
        R"({"ok":true,"pid":"42"})",
        R"({"ok":true,"pid":4.5e300})",
        R"({"ok":true,"pid":-1})",
        R"({"ok":true,"pid":4294967338})",
        R"({"ok":"true"})",
        R"([true])",
    };
    for (const char* text : malformed) {
      CAPTURE(std::string(text));
      auto r = vl::parse_broker_reply(text);
      REQUIRE_FALSE(r.ok());
      CHECK(r.error().context.find("malformed broker reply") != std::string::npos);
    }
  }

  TEST_CASE("a reply survives a round trip; missing error fields take their defaults") {
    vl::BrokerReply failed{false, 0, vl::Error::from_errno(17, "VM web1 is running")};
    auto back = vl::parse_broker_reply(vl::encode_broker_reply(failed));
    REQUIRE(back.ok());
    CHECK_FALSE(back->ok);
    CHECK(back->error.code == vl::ErrorCode::kSystem);
    CHECK(back->error.sys_errno == 17);
    CHECK(back->error.context == "VM web1 is running");
    auto started = vl::parse_broker_reply(vl::encode_broker_reply({true, 4242, {}}));
    REQUIRE(started.ok());
    CHECK(started->pid == 4242);
    auto bare = vl::parse_broker_reply(R"({"ok":false})");
    REQUIRE(bare.ok());
    CHECK(bare->error.code == vl::ErrorCode::kInternal);
    CHECK(bare->error.context == "unknown broker error");
  }

  TEST_CASE("inspect names a VM and nothing else; its reply carries the facts as an object, within the reply cap") {
    auto inspect = vl::parse_broker_request(R"({"op":"inspect","vm":"web1"})");
    REQUIRE(inspect.ok());
    CHECK(inspect->op == vl::BrokerOp::kInspect);
    CHECK(vl::encode_broker_request(*inspect) == R"({"op":"inspect","vm":"web1"})");
    CHECK_FALSE(vl::parse_broker_request(R"({"op":"inspect","vm":"web1","pid":1})").ok());
    CHECK_FALSE(vl::parse_broker_request(R"({"op":"inspect","vm":"../etc"})").ok());
    vl::BrokerReply reply{true, 0, {}, R"({"vm":{}})"};
    auto back = vl::parse_broker_reply(vl::encode_broker_reply(reply));
    REQUIRE(back.ok());
    CHECK(back->facts == R"({"vm":{}})");
    CHECK_FALSE(vl::parse_broker_reply(R"({"ok":true,"facts":"x"})").ok());
    std::string huge = R"({"ok":true,"facts":{"x":")" + std::string(vl::kMaxBrokerReply, 'a') + R"("}})";
    CHECK_FALSE(vl::parse_broker_reply(huge).ok());
  }
}
