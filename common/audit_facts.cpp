#include "common/audit_facts.h"

#include <limits>
#include <nlohmann/json.hpp>
#include <type_traits>

namespace vl {

namespace {

using Json = nlohmann::json;

Json process_json(const ProcessFacts& p) {
  return {{"pid", p.pid},           {"status", p.status},           {"net_ns", p.net_ns},
          {"mnt_ns", p.mnt_ns},     {"host_net_ns", p.host_net_ns}, {"host_mnt_ns", p.host_mnt_ns},
          {"argv", p.argv},         {"argv_truncated", p.argv_truncated}, {"host_ns_of", p.host_ns_of}};
}

Json vm_json(const VmFacts& v) {
  Json taps = Json::array(), disks = Json::array();
  for (const TapFacts& t : v.taps)
    taps.push_back({{"name", t.name}, {"exists", t.exists}, {"master", t.master}, {"learning", t.learning},
                    {"static_macs", t.static_macs}});
  for (const DiskFacts& d : v.disks)
    disks.push_back({{"path", d.path}, {"exists", d.exists}, {"uid", d.uid}, {"mode", d.mode}});
  Json j = {{"name", v.name}, {"running", v.running}, {"taps", taps}, {"disks", disks}};
  j["uid"] = v.uid ? Json(*v.uid) : Json(nullptr);
  j["process"] = v.process ? process_json(*v.process) : Json(nullptr);
  return j;
}

Json host_json(const HostFacts& h) {
  Json live = Json::array(), taps = Json::array(), rules = Json::array(), bridges = Json::array();
  for (const LiveVm& l : h.live) live.push_back({{"name", l.name}, {"uid", l.uid}, {"taps", l.taps}});
  for (const TunFacts& t : h.taps) taps.push_back({{"name", t.name}, {"owner", t.owner}, {"master", t.master}});
  for (const MacRule& r : h.nft.mac_rules) rules.push_back({{"chain", r.chain}, {"tap", r.tap}, {"mac", r.mac}});
  for (const BridgeFacts& b : h.bridges)
    bridges.push_back({{"name", b.name}, {"exists", b.exists}, {"addresses", b.addresses}});
  Json nft = {{"table", h.nft.table}, {"tap_hooks", h.nft.tap_hooks}, {"tap_map", h.nft.tap_map},
              {"vm_chains", h.nft.vm_chains}, {"mac_rules", rules}};
  return {{"live", live}, {"taps", taps}, {"nft", nft}, {"journals", h.journals},
          {"udev_rules", h.udev_rules}, {"bridges", bridges}};
}

// Strict, exception-free reads (common/ builds without exceptions, and nlohmann's typed reads
// of a wrongly typed value would abort): each returns false for a missing or mistyped field.
bool read(const Json& j, const char* key, std::string& out) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string()) return false;
  out = it->get<std::string>();
  return true;
}

bool read(const Json& j, const char* key, bool& out) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_boolean()) return false;
  out = it->get<bool>();
  return true;
}

template <typename T>
bool read(const Json& j, const char* key, T& out) requires std::is_integral_v<T> {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number_unsigned()) return false;
  uint64_t v = it->get<uint64_t>();
  if (v > static_cast<uint64_t>(std::numeric_limits<T>::max())) return false;
  out = static_cast<T>(v);
  return true;
}

bool read(const Json& j, const char* key, std::vector<std::string>& out) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_array()) return false;
  for (const Json& s : *it) {
    if (!s.is_string()) return false;
    out.push_back(s.get<std::string>());
  }
  return true;
}

bool read(const Json& j, const char* key, std::map<std::string, std::string>& out) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_object()) return false;
  for (const auto& [k, v] : it->items()) {
    if (!v.is_string()) return false;
    out[k] = v.get<std::string>();
  }
  return true;
}

// Reads each element of the array `key` with `one`.
template <typename T, typename F>
bool read_each(const Json& j, const char* key, std::vector<T>& out, F one) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_array()) return false;
  for (const Json& e : *it) {
    T item;
    if (!e.is_object() || !one(e, item)) return false;
    out.push_back(std::move(item));
  }
  return true;
}

bool read_process(const Json& j, ProcessFacts& p) {
  return read(j, "pid", p.pid) && read(j, "status", p.status) && read(j, "net_ns", p.net_ns) &&
         read(j, "mnt_ns", p.mnt_ns) && read(j, "host_net_ns", p.host_net_ns) && read(j, "host_mnt_ns", p.host_mnt_ns) &&
         read(j, "argv", p.argv) && read(j, "argv_truncated", p.argv_truncated) && read(j, "host_ns_of", p.host_ns_of);
}

bool read_vm(const Json& j, VmFacts& v) {
  bool ok = read(j, "name", v.name) && read(j, "running", v.running) &&
            read_each(j, "taps", v.taps, [](const Json& e, TapFacts& t) {
              return read(e, "name", t.name) && read(e, "exists", t.exists) && read(e, "master", t.master) &&
                     read(e, "learning", t.learning) && read(e, "static_macs", t.static_macs);
            }) &&
            read_each(j, "disks", v.disks, [](const Json& e, DiskFacts& d) {
              return read(e, "path", d.path) && read(e, "exists", d.exists) && read(e, "uid", d.uid) && read(e, "mode", d.mode);
            });
  if (!ok || !j.contains("uid") || !j.contains("process")) return false;
  if (!j["uid"].is_null()) {
    uint32_t uid = 0;
    if (!read(j, "uid", uid)) return false;
    v.uid = uid;
  }
  if (!j["process"].is_null()) {
    if (!j["process"].is_object() || !read_process(j["process"], v.process.emplace())) return false;
  }
  return true;
}

bool read_host(const Json& j, HostFacts& h) {
  auto nft = j.find("nft");
  if (nft == j.end() || !nft->is_object()) return false;
  return read_each(j, "live", h.live, [](const Json& e, LiveVm& l) {
           return read(e, "name", l.name) && read(e, "uid", l.uid) && read(e, "taps", l.taps);
         }) &&
         read_each(j, "taps", h.taps, [](const Json& e, TunFacts& t) {
           return read(e, "name", t.name) && read(e, "owner", t.owner) && read(e, "master", t.master);
         }) &&
         read(*nft, "table", h.nft.table) && read(*nft, "tap_hooks", h.nft.tap_hooks) &&
         read(*nft, "tap_map", h.nft.tap_map) && read(*nft, "vm_chains", h.nft.vm_chains) &&
         read_each(*nft, "mac_rules", h.nft.mac_rules, [](const Json& e, MacRule& r) {
           return read(e, "chain", r.chain) && read(e, "tap", r.tap) && read(e, "mac", r.mac);
         }) &&
         read(j, "journals", h.journals) && read(j, "udev_rules", h.udev_rules) &&
         read_each(j, "bridges", h.bridges, [](const Json& e, BridgeFacts& b) {
           return read(e, "name", b.name) && read(e, "exists", b.exists) && read(e, "addresses", b.addresses);
         });
}

}  // namespace

std::string audit_facts_to_json(const AuditFacts& facts) {
  // Paths, names and the command line are bytes, not always UTF-8: a strict dump() would abort
  // (no exceptions here). Invalid sequences become U+FFFD.
  return Json{{"vm", vm_json(facts.vm)}, {"host", host_json(facts.host)}}.dump(-1, ' ', false, Json::error_handler_t::replace);
}

Result<AuditFacts> audit_facts_from_json(std::string_view text) {
  Json j = Json::parse(text, nullptr, false);
  AuditFacts facts;
  if (j.is_discarded() || !j.is_object() || !j.contains("vm") || !j.contains("host") || !j["vm"].is_object() ||
      !j["host"].is_object() || !read_vm(j["vm"], facts.vm) || !read_host(j["host"], facts.host))
    return Error::invalid("malformed inspect facts from the broker");
  return facts;
}

}  // namespace vl
