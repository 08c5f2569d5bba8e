#include "common/plan.h"

#include <nlohmann/json.hpp>

#include "common/vm_name.h"

namespace vl {

using Json = nlohmann::ordered_json;

std::string vnc_tls_object(const std::string& dir, bool verify_client) {
  Json obj = {{"qom-type", "tls-creds-x509"}, {"id", kVncTlsCredsId}, {"dir", dir}, {"endpoint", "server"},
              {"verify-peer", verify_client}};
  return obj.dump();
}

std::string disk_secret_id(size_t disk) { return "disk" + std::to_string(disk) + "-secret"; }

std::string disk_secret_object(size_t disk, int fd) {
  Json obj = {{"qom-type", "secret"}, {"id", disk_secret_id(disk)}, {"format", "raw"},
              {"file", "/proc/self/fd/" + std::to_string(fd)}};
  return obj.dump();
}

const char* fd_kind_name(FdSlot::Kind kind) {
  switch (kind) {
    case FdSlot::Kind::kMonitor: return "monitor";
    case FdSlot::Kind::kTap: return "tap";
    case FdSlot::Kind::kAgent: return "agent";
    case FdSlot::Kind::kSerial: return "serial";
    case FdSlot::Kind::kSerialLog: return "serial-log";
    case FdSlot::Kind::kDiskSecret: return "disk-secret";
  }
  return "?";
}

std::vector<std::string> emulator_environment() {
  return {"LC_ALL=C", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/nonexistent"};
}

std::string plan_to_json(const Plan& plan, bool pretty) {
  Json j;
  j["vm"] = plan.vm;
  j["emulator"] = plan.emulator;
  j["argv"] = plan.argv;
  Json fds = Json::array();
  for (const FdSlot& s : plan.fds) {
    Json slot = {{"fd", s.fd}, {"kind", fd_kind_name(s.kind)}};
    if (s.kind == FdSlot::Kind::kTap) slot["nic"] = s.nic;
    fds.push_back(std::move(slot));
  }
  j["fds"] = std::move(fds);
  if (plan.vnc)
    j["vnc"] = {{"socket", plan.vnc->socket}, {"password", plan.vnc->has_password}};
  j["serial_ptys"] = plan.serial_ptys;
  j["cache_key"] = plan.cache_key;
  return j.dump(pretty ? 2 : -1);
}

namespace {

Result<std::string> get_string(const Json& j, const char* key, size_t max) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string()) return Error::invalid(std::string("plan: '") + key + "' must be a string");
  const auto& s = it->get_ref<const std::string&>();
  if (s.size() > max || s.find('\0') != std::string::npos)
    return Error::invalid(std::string("plan: '") + key + "' is too long or has NUL bytes");
  return s;
}

Result<int> get_int(const Json& j, const char* key, int lo, int hi) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number_integer())
    return Error::invalid(std::string("plan: '") + key + "' must be an integer");
  auto v = it->get<int64_t>();
  if (v < lo || v > hi) return Error::invalid(std::string("plan: '") + key + "' is out of range");
  return static_cast<int>(v);
}

}  // namespace

Result<Plan> plan_from_json(std::string_view text) {
  if (text.size() > kMaxPlanBytes) return Error::invalid("plan: larger than 256 KiB");
  Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return Error::invalid("plan: not a JSON object");
  for (const auto& [key, value] : j.items()) {
    static constexpr std::string_view kKeys[] = {"vm", "emulator", "argv", "fds", "vnc",
                                                 "serial_ptys", "cache_key"};
    if (std::find(std::begin(kKeys), std::end(kKeys), key) == std::end(kKeys))
      return Error::invalid("plan: unknown key " + quote_for_message(key.substr(0, 64)));
  }
  Plan plan;
  plan.vm = VL_TRY(get_string(j, "vm", 64));
  plan.emulator = VL_TRY(get_string(j, "emulator", 4096));
  plan.cache_key = VL_TRY(get_string(j, "cache_key", 128));
  plan.serial_ptys = VL_TRY(get_int(j, "serial_ptys", 0, 16));

  auto argv = j.find("argv");
  if (argv == j.end() || !argv->is_array() || argv->empty() || argv->size() > kMaxPlanArgs)
    return Error::invalid("plan: 'argv' must be a non-empty array of at most 1024 strings");
  for (const Json& a : *argv) {
    if (!a.is_string()) return Error::invalid("plan: 'argv' must contain only strings");
    const auto& s = a.get_ref<const std::string&>();
    if (s.find('\0') != std::string::npos) return Error::invalid("plan: argv word with a NUL byte");
    plan.argv.push_back(s);
  }
  if (plan.argv.front() != plan.emulator) return Error::invalid("plan: argv[0] is not the emulator");

  auto fds = j.find("fds");
  if (fds == j.end() || !fds->is_array() || fds->size() > 16)
    return Error::invalid("plan: 'fds' must be an array of at most 16 slots");
  for (const Json& f : *fds) {
    if (!f.is_object()) return Error::invalid("plan: fd slot is not an object");
    FdSlot slot;
    slot.fd = VL_TRY(get_int(f, "fd", kFirstPlanFd, kFirstPlanFd + 15));
    std::string kind = VL_TRY(get_string(f, "kind", 16));
    if (kind == "monitor") {
      slot.kind = FdSlot::Kind::kMonitor;
    } else if (kind == "agent") {
      slot.kind = FdSlot::Kind::kAgent;
    } else if (kind == "serial") {
      slot.kind = FdSlot::Kind::kSerial;
    } else if (kind == "serial-log") {
      slot.kind = FdSlot::Kind::kSerialLog;
    } else if (kind == "disk-secret") {
      slot.kind = FdSlot::Kind::kDiskSecret;
    } else if (kind == "tap") {
      slot.kind = FdSlot::Kind::kTap;
      slot.nic = VL_TRY(get_int(f, "nic", 0, 9));
    } else {
      return Error::invalid("plan: unknown fd kind " + quote_for_message(kind.substr(0, 16)));
    }
    for (const FdSlot& other : plan.fds) {
      if (other.fd == slot.fd) return Error::invalid("plan: fd " + std::to_string(slot.fd) + " used twice");
      if (other.kind == slot.kind && other.nic == slot.nic)
        return Error::invalid("plan: duplicate fd slot for the same object");
    }
    plan.fds.push_back(slot);
  }
  if (auto vnc = j.find("vnc"); vnc != j.end()) {
    if (!vnc->is_object()) return Error::invalid("plan: 'vnc' must be an object");
    VncSetup v;
    v.socket = VL_TRY(get_string(*vnc, "socket", 107));  // what fits sockaddr_un
    auto pw = vnc->find("password");
    if (pw == vnc->end() || !pw->is_boolean()) return Error::invalid("plan: 'vnc.password' must be a boolean");
    v.has_password = pw->get<bool>();
    plan.vnc = v;
  }
  return plan;
}

}  // namespace vl
