#include "common/broker_protocol.h"

#include <signal.h>

#include <cstdint>

#include <nlohmann/json.hpp>

namespace vl {

namespace {

using Json = nlohmann::json;

constexpr std::pair<BrokerOp, const char*> kOpNames[] = {
    {BrokerOp::kStart, "start"}, {BrokerOp::kKill, "kill"}, {BrokerOp::kCleanup, "cleanup"},
    {BrokerOp::kReattach, "reattach"}, {BrokerOp::kInspect, "inspect"}};

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
  if (r.ok && !r.facts.empty()) j["facts"] = Json::parse(r.facts, nullptr, false);
  if (!r.ok) j["error"] = error_json(r.error);
  return j.dump();
}

namespace {

// An integer in [lo, hi], judged on the number as sent: a float, or an unsigned number above
// INT64_MAX read as int64, must not slip through a conversion.
bool int_in_range(const Json& v, int64_t lo, int64_t hi) {
  if (!v.is_number_integer()) return false;
  if (v.is_number_unsigned()) return v.get<uint64_t>() <= static_cast<uint64_t>(hi);
  return v.get<int64_t>() >= lo && v.get<int64_t>() <= hi;
}

}  // namespace

// Strict like the request: every field is type-checked before it is read, since nlohmann's
// typed reads of a wrongly typed field abort the process when exceptions are off. The daemon
// reads these from the broker, and the broker reads the launch's report pipe in this format.
Result<BrokerReply> parse_broker_reply(std::string_view text) {
  auto malformed = [](const char* why) { return Error::invalid(std::string("malformed broker reply: ") + why); };
  if (text.size() > kMaxBrokerReply) return malformed("too large");
  Json j = Json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return malformed("not a JSON object");
  auto ok = j.find("ok");
  if (ok == j.end() || !ok->is_boolean()) return malformed("'ok' must be a boolean");
  BrokerReply reply;
  reply.ok = ok->get<bool>();
  if (reply.ok) {
    if (auto pid = j.find("pid"); pid != j.end()) {
      if (!int_in_range(*pid, 0, INT32_MAX)) return malformed("'pid' must be a process id");
      reply.pid = static_cast<int>(pid->get<int64_t>());
    }
    if (auto facts = j.find("facts"); facts != j.end()) {
      if (!facts->is_object()) return malformed("'facts' must be an object");
      reply.facts = facts->dump();
    }
    return reply;
  }
  reply.error = Error::make(ErrorCode::kInternal, "unknown broker error");
  auto e = j.find("error");
  if (e == j.end()) return reply;
  if (!e->is_object()) return malformed("'error' must be an object");
  if (auto code = e->find("code"); code != e->end()) {
    if (!code->is_string()) return malformed("'error.code' must be a string");
    reply.error.code = error_code_from_name(code->get_ref<const std::string&>());
  }
  if (auto err = e->find("errno"); err != e->end()) {
    if (!int_in_range(*err, 0, INT32_MAX)) return malformed("'error.errno' must be an errno value");
    reply.error.sys_errno = static_cast<int>(err->get<int64_t>());
  }
  if (auto message = e->find("message"); message != e->end()) {
    if (!message->is_string()) return malformed("'error.message' must be a string");
    reply.error.context = message->get_ref<const std::string&>();
  }
  return reply;
}

}  // namespace vl
