#include "common/config.h"

#include <cctype>

// toml++ 3.3.0 asserts on inputs it then reports correctly as errors (a table header such
// as "[*]"); vmlaunch's default build keeps assertions, so a typo in the file aborted every
// program reading it. Its internal checks are off here, as in a release build. This is the
// only file that includes toml++.
#define TOML_ASSERT(expr) static_cast<void>(0)
#include <toml++/toml.h>

#include <algorithm>

#include "common/sys.h"

namespace vl {

namespace {

constexpr size_t kMaxConfigBytes = 1 << 20;

// Strict reader over one toml table: every access records the key as known, so that
// finish() can reject whatever the file has that the schema does not.
class TableReader {
 public:
  TableReader(const toml::table& table, std::string prefix, const std::string& source)
      : table_(table), prefix_(std::move(prefix)), source_(source) {}

  Error error_at(const toml::node& node, std::string_view key, std::string_view what) const {
    return Error::invalid(source_ + ":" + std::to_string(node.source().begin.line) + ": key " +
                          quote_for_message(prefix_ + std::string(key)) + ": " + std::string(what));
  }

  Result<void> read_string(std::string_view key, std::string& out) {
    const toml::node* node = find(key);
    if (!node) return {};
    auto value = node->value<std::string>();
    if (!node->is_string() || !value) return error_at(*node, key, "expected a string");
    out = *value;
    return {};
  }

  Result<void> read_path(std::string_view key, std::string& out) {
    VL_CHECK(read_string(key, out));
    if (const toml::node* node = find(key); node && !is_clean_absolute(out))
      return error_at(*node, key, "expected an absolute path without '.', '..' or '//' parts, not " + quote_for_message(out, kQuotePathMax));
    return {};
  }

  Result<void> read_bool(std::string_view key, bool& out) {
    const toml::node* node = find(key);
    if (!node) return {};
    if (!node->is_boolean()) return error_at(*node, key, "expected true or false");
    out = *node->value<bool>();
    return {};
  }

  Result<void> read_u32(std::string_view key, uint32_t& out) {
    const toml::node* node = find(key);
    if (!node) return {};
    if (!node->is_integer()) return error_at(*node, key, "expected an integer");
    int64_t v = *node->value<int64_t>();
    if (v < 0 || v > 0xfffffffeLL) return error_at(*node, key, "out of range");
    out = static_cast<uint32_t>(v);
    return {};
  }

  Result<void> read_path_list(std::string_view key, std::vector<std::string>& out) {
    return read_string_list(key, out, true);
  }

  /// An array of distinct strings; of clean absolute paths if `paths`.
  Result<void> read_string_list(std::string_view key, std::vector<std::string>& out, bool paths = false) {
    const toml::node* node = find(key);
    if (!node) return {};
    const toml::array* array = node->as_array();
    if (!array) return error_at(*node, key, "expected an array of strings");
    out.clear();
    for (const toml::node& item : *array) {
      auto value = item.value<std::string>();
      if (!item.is_string() || !value) return error_at(item, key, "expected an array of strings");
      if (paths && !is_clean_absolute(*value))
        return error_at(item, key, quote_for_message(*value, kQuotePathMax) + " is not a clean absolute path");
      if (std::find(out.begin(), out.end(), *value) != out.end())
        return error_at(item, key, quote_for_message(*value, kQuotePathMax) + " is listed twice");
      out.push_back(*value);
    }
    return {};
  }

  const toml::table* sub_table(std::string_view key, Result<void>& status) {
    const toml::node* node = find(key);
    if (!node) return nullptr;
    if (!node->is_table()) status = error_at(*node, key, "expected a table");
    return node->as_table();
  }

  Result<void> finish() const {
    for (const auto& [key, node] : table_)
      if (std::find(known_.begin(), known_.end(), key.str()) == known_.end())
        return error_at(node, key.str(), "unknown key");
    return {};
  }

  static bool is_clean_absolute(std::string_view p) {
    if (p.empty() || p.front() != '/' || p.find('\0') != std::string_view::npos) return false;
    if (p.size() > 1 && p.back() == '/') return false;
    size_t i = 1;
    while (i <= p.size()) {
      size_t j = p.find('/', i);
      if (j == std::string_view::npos) j = p.size();
      std::string_view part = p.substr(i, j - i);
      if (p.size() > 1 && (part.empty() || part == "." || part == "..")) return false;
      i = j + 1;
    }
    return true;
  }

 private:
  const toml::node* find(std::string_view key) {
    known_.emplace_back(key);
    return table_.get(key);
  }

  const toml::table& table_;
  std::string prefix_;
  const std::string& source_;
  std::vector<std::string> known_;
};

bool is_valid_name(std::string_view s, size_t max) {
  if (s.empty() || s.size() > max) return false;
  if (!(s[0] >= 'a' && s[0] <= 'z') && s[0] != '_') return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
  });
}

// Storage roots that would hand VM users the host itself.
bool is_forbidden_storage_root(std::string_view root) {
  constexpr std::string_view kSystemDirs[] = {"/", "/bin", "/boot", "/dev", "/etc", "/home",
                                              "/lib", "/proc", "/root", "/run", "/sbin",
                                              "/sys", "/usr", "/var", "/tmp"};
  return std::find(std::begin(kSystemDirs), std::end(kSystemDirs), root) != std::end(kSystemDirs);
}

// [tls]: the TCP listener is off unless `listen` names an address and port.
Result<void> read_tls(TableReader& top, TlsConfig& tls, const std::string& source) {
  Result<void> status;
  const toml::table* t = top.sub_table("tls", status);
  VL_CHECK(status);
  if (!t) return {};
  TableReader r(*t, "tls.", source);
  VL_CHECK(r.read_string("listen", tls.listen));
  VL_CHECK(r.read_path("cert", tls.cert));
  VL_CHECK(r.read_path("key", tls.key));
  VL_CHECK(r.read_path("ca", tls.ca));
  VL_CHECK(r.read_string_list("admin_dns", tls.admin_dns));
  VL_CHECK(r.read_string_list("readonly_dns", tls.readonly_dns));
  VL_CHECK(r.finish());
  if (!tls.listen.empty() && !split_host_port(tls.listen, 0))
    return r.error_at(*t, "listen", "'" + tls.listen + "' is not ADDRESS:PORT (\"0.0.0.0:16514\", \"[::]:16514\")");
  for (const auto* list : {&tls.admin_dns, &tls.readonly_dns})
    for (const std::string& dn : *list)
      if (dn.empty() || dn.size() > 1024 || dn.find('\0') != std::string::npos)
        return r.error_at(*t, list == &tls.admin_dns ? "admin_dns" : "readonly_dns", "'" + dn + "' is not a DN pattern");
  return {};
}

// [vnc]: TLS for every VM's VNC server, off by default.
Result<void> read_vnc(TableReader& top, VncTlsConfig& vnc, const std::string& source) {
  Result<void> status;
  const toml::table* t = top.sub_table("vnc", status);
  VL_CHECK(status);
  if (!t) return {};
  TableReader r(*t, "vnc.", source);
  VL_CHECK(r.read_bool("tls", vnc.tls));
  VL_CHECK(r.read_path("tls_dir", vnc.tls_dir));
  VL_CHECK(r.read_bool("tls_verify_client", vnc.verify_client));
  return r.finish();
}

Result<void> read_zones(TableReader& top, HostConfig& config, const std::string& source) {
  Result<void> status;
  const toml::table* zones = top.sub_table("zones", status);
  VL_CHECK(status);
  if (!zones) return {};
  for (const auto& [key, node] : *zones) {
    std::string name(key.str());
    TableReader zone_reader(*zones, "zones.", source);
    if (!is_valid_name(name, 32) || name[0] == '_')
      return zone_reader.error_at(node, name, "zone names are [a-z][a-z0-9_-]{0,31}");
    const toml::table* table = node.as_table();
    if (!table) return zone_reader.error_at(node, name, "expected a table with 'bridge'");
    TableReader reader(*table, "zones." + name + ".", source);
    Zone zone{name, ""};
    VL_CHECK(reader.read_string("bridge", zone.bridge));
    VL_CHECK(reader.finish());
    if (!is_valid_ifname(zone.bridge))
      return reader.error_at(node, "bridge", zone.bridge.empty() ? std::string("missing")
                                                                  : quote_for_message(zone.bridge) + " is not a valid interface name");
    if (const Zone* other = config.zone_of_bridge(zone.bridge))
      return reader.error_at(node, "bridge", "bridge " + quote_for_message(zone.bridge) + " is already zone " +
                                                 quote_for_message(other->name));
    config.zones.push_back(std::move(zone));
  }
  return {};
}

// uids VMs must never get: system accounts, systemd's dynamic users, nobody, and the
// 16-bit overflow ids.
Result<void> check_uid_range(const HostConfig& config, const toml::node& node,
                             const TableReader& reader) {
  struct Reserved {
    uint32_t first, last;
    const char* what;
  };
  constexpr Reserved kReserved[] = {{0, 999, "system users 0-999"},
                                    {61184, 65519, "systemd dynamic users 61184-65519"},
                                    {65534, 65535, "nobody/overflow ids 65534-65535"},
                                    {0xfffffffe, 0xffffffff, "(uid_t)-1"}};
  const UidRange& r = config.uids;
  if (r.count == 0) return reader.error_at(node, "vm_uid_count", "must be at least 1");
  uint64_t last = uint64_t{r.first} + r.count - 1;
  if (last >= 0xfffffffeULL) return reader.error_at(node, "vm_uid_count", "range ends past the largest uid");
  for (const auto& res : kReserved)
    if (r.first <= res.last && last >= res.first)
      return reader.error_at(node, "vm_uid_first", std::string("range overlaps ") + res.what);
  return {};
}

}  // namespace

bool is_valid_ifname(std::string_view name) {
  if (name.empty() || name.size() > 15 || name == "." || name == "..") return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '_' || c == '.';
  });
}

const Zone* HostConfig::zone_named(std::string_view name) const {
  for (const Zone& z : zones)
    if (z.name == name) return &z;
  return nullptr;
}

const Zone* HostConfig::zone_of_bridge(std::string_view bridge) const {
  for (const Zone& z : zones)
    if (z.bridge == bridge) return &z;
  return nullptr;
}

bool HostConfig::emulator_allowed(std::string_view path) const {
  return std::find(emulators.begin(), emulators.end(), path) != emulators.end();
}

std::optional<HostPort> split_host_port(std::string_view text, uint16_t default_port) {
  HostPort out;
  std::string_view rest;
  if (!text.empty() && text.front() == '[') {  // [v6]:port
    size_t close = text.find(']');
    if (close == std::string_view::npos || close == 1) return std::nullopt;
    out.host = std::string(text.substr(1, close - 1));
    rest = text.substr(close + 1);
  } else {
    size_t colon = text.find(':');
    out.host = std::string(text.substr(0, colon));
    rest = colon == std::string_view::npos ? std::string_view() : text.substr(colon);
  }
  // A leading '-' would read as an option to the programs a host is handed to (ssh).
  if (out.host.empty() || out.host.size() > 253 || out.host.front() == '-') return std::nullopt;
  for (char c : out.host)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == ':' || c == '_')) return std::nullopt;
  if (rest.empty()) {
    if (default_port == 0) return std::nullopt;
    out.port = default_port;
    return out;
  }
  if (rest.front() != ':' || rest.size() < 2 || rest.size() > 6) return std::nullopt;
  uint32_t port = 0;
  for (char c : rest.substr(1)) {
    if (c < '0' || c > '9') return std::nullopt;
    port = port * 10 + static_cast<uint32_t>(c - '0');
  }
  if (port == 0 || port > 65535) return std::nullopt;
  out.port = static_cast<uint16_t>(port);
  return out;
}

Result<HostConfig> parse_config(std::string_view text, const std::string& source) {
  if (text.find('\0') != std::string_view::npos)
    return Error::invalid(source + ": contains a NUL byte");
  toml::parse_result parsed = toml::parse(text, source);
  if (!parsed) {
    const toml::parse_error& e = parsed.error();
    return Error::invalid(source + ":" + std::to_string(e.source().begin.line) + ": " +
                          std::string(e.description()));
  }
  const toml::table& root = parsed.table();
  HostConfig config;
  config.source = source;
  TableReader top(root, "", source);
  Result<void> status;

  if (const toml::table* t = top.sub_table("paths", status)) {
    TableReader r(*t, "paths.", source);
    VL_CHECK(r.read_path("domains", config.domains_dir));
    VL_CHECK(r.read_path("keys", config.keys_dir));
    VL_CHECK(r.read_path("runtime", config.runtime_dir));
    VL_CHECK(r.read_path("state", config.state_dir));
    VL_CHECK(r.read_path("cache", config.cache_dir));
    VL_CHECK(r.read_path("log", config.log_dir));
    VL_CHECK(r.read_path("udev_rules", config.udev_rules_dir));
    VL_CHECK(r.read_path("userdb", config.userdb_dir));
    VL_CHECK(r.finish());
  }
  VL_CHECK(status);
  if (const toml::table* t = top.sub_table("users", status)) {
    TableReader r(*t, "users.", source);
    VL_CHECK(r.read_string("daemon_user", config.daemon_user));
    VL_CHECK(r.read_string("daemon_group", config.daemon_group));
    VL_CHECK(r.read_string("admin_group", config.admin_group));
    VL_CHECK(r.read_string("vm_group", config.vm_group));
    uint32_t first = config.uids.first, count = config.uids.count;
    VL_CHECK(r.read_u32("vm_uid_first", first));
    VL_CHECK(r.read_u32("vm_uid_count", count));
    config.uids = {first, count};
    VL_CHECK(r.finish());
    for (const auto& [key, n] : {std::pair{"daemon_user", &config.daemon_user}, {"daemon_group", &config.daemon_group},
                                 {"admin_group", &config.admin_group}, {"vm_group", &config.vm_group}})
      if (!is_valid_name(*n, 32))
        return r.error_at(*t, key, quote_for_message(*n) + " is not a valid user or group name");
    VL_CHECK(check_uid_range(config, *t, r));
  }
  VL_CHECK(status);
  if (const toml::table* t = top.sub_table("storage", status)) {
    TableReader r(*t, "storage.", source);
    VL_CHECK(r.read_path_list("roots", config.storage_roots));
    VL_CHECK(r.finish());
    for (const std::string& root_dir : config.storage_roots)
      if (is_forbidden_storage_root(root_dir))
        return r.error_at(*t, "roots", quote_for_message(root_dir, kQuotePathMax) + " is a system directory, not a storage root");
  }
  VL_CHECK(status);
  if (const toml::table* t = top.sub_table("emulators", status)) {
    TableReader r(*t, "emulators.", source);
    VL_CHECK(r.read_path_list("allowed", config.emulators));
    VL_CHECK(r.finish());
  }
  VL_CHECK(status);
  if (const toml::table* t = top.sub_table("control", status)) {
    TableReader r(*t, "control.", source);
    ControlLimits& c = config.control;
    VL_CHECK(r.read_u32("max_connections", c.max_connections));
    VL_CHECK(r.read_u32("max_connections_per_uid", c.max_connections_per_uid));
    VL_CHECK(r.read_u32("max_message_kib", c.max_message_kib));
    VL_CHECK(r.read_u32("message_timeout", c.message_timeout));
    VL_CHECK(r.read_string("readonly_group", config.readonly_group));
    VL_CHECK(r.finish());
    if (!config.readonly_group.empty() && !is_valid_name(config.readonly_group, 32))
      return r.error_at(*t, "readonly_group", "'" + config.readonly_group + "' is not a valid group name");
    if (!config.readonly_group.empty() && config.readonly_group == config.admin_group)
      return r.error_at(*t, "readonly_group", "is the admin group ('" + config.admin_group + "')");
    // Each connection costs the daemon four descriptors; vmlaunchd.service allows 4096.
    if (c.max_connections < 1 || c.max_connections > 512)
      return r.error_at(*t, "max_connections", "must be 1-512");
    if (c.max_connections_per_uid < 1 || c.max_connections_per_uid > c.max_connections)
      return r.error_at(*t, "max_connections_per_uid", "must be 1-max_connections");
    // 4 KiB holds any method call of the interface; 128 MiB is the protocol's own limit.
    if (c.max_message_kib < 4 || c.max_message_kib > 131072)
      return r.error_at(*t, "max_message_kib", "must be 4-131072");
    if (c.message_timeout < 1 || c.message_timeout > 3600)
      return r.error_at(*t, "message_timeout", "must be 1-3600 seconds");
  }
  VL_CHECK(status);
  VL_CHECK(read_tls(top, config.tls, source));
  VL_CHECK(read_vnc(top, config.vnc, source));
  VL_CHECK(read_zones(top, config, source));
  VL_CHECK(top.finish());
  return config;
}

Result<HostConfig> load_config(const std::string& path) {
  std::string text = VL_TRY(sys::read_file(path, kMaxConfigBytes));
  return parse_config(text, path);
}

}  // namespace vl
