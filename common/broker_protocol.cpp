#include "common/broker_protocol.h"

#include <signal.h>

#include <cstdint>

#include <nlohmann/json.hpp>

namespace vl {

namespace {

using Json = nlohmann::json;

constexpr std::pair<BrokerOp, const char*> kOpNames[] = {
    {BrokerOp::kStart, "start"}, {BrokerOp::kKill, "kill"}, {BrokerOp::kCleanup, "cleanup"},
    {BrokerOp::kReattach, "reattach"}};

// Takes the number as sent: narrowing it to int first would let 2^32 + 9 pass as SIGKILL.
bool signal_allowed(int64_t s) { return s == SIGTERM || s == SIGKILL || s == SIGINT; }

Json error_json(const Error& e) {
  return {{"code", error_code_name(e.code)}, {"errno", e.sys_errno}, {"message", e.context}};
}

}  // namespace

std::string encode_broker_request(const BrokerRequest& r) {
  Json j;
  for (const auto& [op, name] : kOpNames)
    if (op == r.op) j["op"] = name;
  j["vm"] = r.vm.str();
  if (r.op == BrokerOp::kKill) j["signal"] = r.signal;
  return j.dump();
}

Result<BrokerRequest> parse_broker_request(std::string_view text) {
  if (text.size() > kMaxBrokerMessage) return Error::invalid("broker request too large");
  Json j = Json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return Error::invalid("broker request is not a JSON object");
  auto op_it = j.find("op");
  auto vm_it = j.find("vm");
  if (op_it == j.end() || !op_it->is_string() || vm_it == j.end() || !vm_it->is_string())
    return Error::invalid("broker request needs string 'op' and 'vm'");
  const BrokerOp* op = nullptr;
  for (const auto& [o, name] : kOpNames)
    if (*op_it == name) op = &o;
  if (!op) return Error::invalid("unknown broker op");
  VmName vm = VL_TRY(VmName::parse(vm_it->get<std::string>()));
  BrokerRequest request{*op, vm, 0};
  size_t expected_keys = 2;
  if (*op == BrokerOp::kKill) {
    auto s = j.find("signal");
    // An unsigned number above INT64_MAX would wrap when read as int64: refuse it first.
    if (s == j.end() || !s->is_number_integer() || (s->is_number_unsigned() && s->get<uint64_t>() > INT64_MAX) ||
        !signal_allowed(s->get<int64_t>()))
      return Error::invalid("kill needs 'signal': SIGTERM, SIGKILL or SIGINT");
    request.signal = static_cast<int>(s->get<int64_t>());
    ++expected_keys;
  }
  if (j.size() != expected_keys) return Error::invalid("broker request has unknown keys");
  return request;
}

std::string encode_error(const Error& error) { return error_json(error).dump(); }

std::string encode_broker_reply(const BrokerReply& r) {
  Json j = {{"ok", r.ok}};
  if (r.ok) j["pid"] = r.pid;
  else j["error"] = error_json(r.error);
  return j.dump();
}

Result<BrokerReply> parse_broker_reply(std::string_view text) {
  Json j = Json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("ok") || !j["ok"].is_boolean())
    return Error::invalid("malformed broker reply");
  BrokerReply reply;
  reply.ok = j["ok"].get<bool>();
  if (reply.ok) {
    reply.pid = j.value("pid", 0);
    return reply;
  }
  const Json& e = j.value("error", Json::object());
  reply.error = Error{error_code_from_name(e.value("code", "internal")), e.value("errno", 0),
                      e.value("message", std::string("unknown broker error"))};
  return reply;
}

}  // namespace vl
