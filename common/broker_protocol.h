// The protocol between vmlaunchd and the root broker (vmlaunch-helper serve).
//
// One request per SOCK_SEQPACKET message, one reply per request, in order on each connection.
// Requests on different connections are handled concurrently: the daemon keeps up to
// kBrokerConnections connections, one request in flight on each. Messages are JSON objects of at
// most kMaxBrokerMessage bytes, except the reply to `inspect` (kMaxBrokerReply). The request set
// is closed: start, kill, cleanup, reattach, inspect, each naming one VM; nothing else is ever
// parsed into a request.
#pragma once

#include <string>

#include "common/error.h"
#include "common/vm_name.h"

namespace vl {

inline constexpr size_t kMaxBrokerMessage = 4096;
/// The largest reply: an `inspect` reply's facts (common/audit_facts.h) are bounded by it.
inline constexpr size_t kMaxBrokerReply = 64 * 1024;
/// How many connections (and so requests in flight) the daemon uses at most.
inline constexpr size_t kBrokerConnections = 16;

/// kInspect reads, as root, the facts `vmctl audit` judges (common/audit_facts.h); it changes
/// nothing.
enum class BrokerOp : unsigned char { kStart, kKill, kCleanup, kReattach, kInspect };

/// A validated broker request.
struct BrokerRequest {
  BrokerOp op;
  VmName vm;
  int signal = 0;  ///< kKill only: SIGTERM, SIGKILL or SIGINT
};

/// The broker's answer: success (with the emulator's pid for kStart, the facts for kInspect)
/// or an error.
struct BrokerReply {
  bool ok = false;
  int pid = 0;
  Error error;
  std::string facts = {};  ///< kInspect: a JSON object (common/audit_facts.h); "" otherwise
};

std::string encode_broker_request(const BrokerRequest& request);
/// Strict: unknown ops, unknown keys, bad names, signals outside the allowed set are errors.
Result<BrokerRequest> parse_broker_request(std::string_view text);

std::string encode_broker_reply(const BrokerReply& reply);
Result<BrokerReply> parse_broker_reply(std::string_view text);

/// Serializes an Error for another process: code, errno and context, nothing else.
std::string encode_error(const Error& error);

}  // namespace vl
