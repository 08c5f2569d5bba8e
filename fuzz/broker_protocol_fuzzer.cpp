// Broker messages (common/broker_protocol.h): requests the root broker decodes from the
// daemon's uid, and replies the daemon decodes from the broker. Whatever decodes must encode
// back to a message that decodes to the same thing. An inspect reply's facts
// (common/audit_facts.h) likewise.
#include <cstddef>
#include <cstdint>

#include "common/audit_facts.h"
#include "common/broker_protocol.h"
#include "fuzz/fuzz_support.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text = vl::fuzz::as_text(data, size);

  if (auto request = vl::parse_broker_request(text)) {
    auto again = vl::parse_broker_request(vl::encode_broker_request(*request));
    FUZZ_CHECK(again.ok());
    FUZZ_CHECK(again->op == request->op && again->vm == request->vm && again->signal == request->signal);
  }

  if (auto reply = vl::parse_broker_reply(text)) {
    auto again = vl::parse_broker_reply(vl::encode_broker_reply(*reply));
    FUZZ_CHECK(again.ok());
    FUZZ_CHECK(again->ok == reply->ok);
    if (reply->ok) {
      FUZZ_CHECK(again->pid == reply->pid);
      FUZZ_CHECK(again->facts == reply->facts);
    } else {
      FUZZ_CHECK(again->error.code == reply->error.code);
      FUZZ_CHECK(again->error.sys_errno == reply->error.sys_errno);
      FUZZ_CHECK(again->error.context == reply->error.context);
    }
  }
  if (auto facts = vl::audit_facts_from_json(text)) {
    std::string encoded = vl::audit_facts_to_json(*facts);
    auto again = vl::audit_facts_from_json(encoded);
    FUZZ_CHECK(again.ok());
    FUZZ_CHECK(vl::audit_facts_to_json(*again) == encoded);
  }

  return 0;
}
