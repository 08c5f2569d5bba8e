#include "helper/uid_map.h"

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sys/file.h>
#include <sys/stat.h>

#include <set>
#include <sstream>

#include "common/sys.h"
#include "helper/log.h"

namespace vl::helper {

namespace {

Result<std::map<std::string, uid_t>> parse_map(const std::string& text, const std::string& path,
                                               const UidRange& range) {
  std::map<std::string, uid_t> map;
  std::set<uid_t> used;
  std::istringstream in(text);
  std::string line;
  int lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    std::istringstream fields(line);
    std::string name;
    long long uid = -1;
    std::string rest;
    if (!(fields >> name >> uid) || (fields >> rest) || !VmName::parse(name).ok() || uid < 0 ||
        !range.contains(static_cast<uint32_t>(uid)) || map.count(name) || used.count(static_cast<uid_t>(uid)))
      return Error::invalid(path + ":" + std::to_string(lineno) + ": corrupt uid map entry");
    map[name] = static_cast<uid_t>(uid);
    used.insert(static_cast<uid_t>(uid));
  }
  return map;
}

}  // namespace

Result<std::map<std::string, uid_t>> read_uid_map(const HostConfig& config) {
  auto text = sys::read_file(config.uid_map_path(), 1 << 20);
  if (!text) {
    if (text.error().sys_errno == ENOENT) return std::map<std::string, uid_t>();
    return std::move(text).error();
  }
  return parse_map(*text, config.uid_map_path(), config.uids);
}

Result<std::optional<uid_t>> assigned_uid(const HostConfig& config, const VmName& vm) {
  auto map = VL_TRY(read_uid_map(config));
  auto it = map.find(vm.str());
  if (it == map.end()) return std::optional<uid_t>();
  return std::optional<uid_t>(it->second);
}

Result<void> publish_vm_user(const HostConfig& config, const VmName& vm, uid_t uid) {
  std::string name = "vm-" + vm.str();
  if (const passwd* existing = ::getpwnam(name.c_str()); existing && existing->pw_uid != uid) {
    log_warning("user " + quote_for_message(name) + " already exists with uid " + std::to_string(existing->pw_uid) +
                "; not naming uid " + std::to_string(uid) + ", ignoring");
    return {};
  }
  const std::string& dir = config.userdb_dir;
  if (::mkdir(dir.c_str(), 0755) < 0 && errno != EEXIST) return Error::from_errno("create " + quote_for_message(dir, kQuotePathMax));
  std::string id = std::to_string(uid);
  std::string user = "{\"userName\":\"" + name + "\",\"uid\":" + id + ",\"gid\":" + id +
                     ",\"realName\":\"vmlaunch VM " + vm.str() + "\",\"homeDirectory\":\"/nonexistent\","
                     "\"shell\":\"/usr/sbin/nologin\",\"disposition\":\"system\",\"locked\":true}\n";
  std::string group = "{\"groupName\":\"" + name + "\",\"gid\":" + id + ",\"disposition\":\"system\"}\n";
  for (const auto& [kind, record] : {std::pair{".user", user}, {".group", group}}) {
    std::string file = dir + "/" + name + kind;
    VL_CHECK(sys::write_file_atomic(file, record, 0644));
    // nss-systemd looks records up by name and, through a symlink named after the id, by id.
    std::string link = dir + "/" + id + kind, tmp = link + ".tmp";
    ::unlink(tmp.c_str());
    if (::symlink((name + kind).c_str(), tmp.c_str()) < 0 || ::rename(tmp.c_str(), link.c_str()) < 0)
      return Error::from_errno("link " + quote_for_message(link, kQuotePathMax));
  }
  return {};
}

Result<uid_t> uid_for_vm(const HostConfig& config, const VmName& vm) {
  if (::mkdir(config.state_dir.c_str(), 0700) < 0 && errno != EEXIST)
    return Error::from_errno("create state directory " + quote_for_message(config.state_dir, kQuotePathMax));
  std::string lock_path = config.uid_map_path() + ".lock";
  UniqueFd lock = VL_TRY(sys::check_fd(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600),
                                       "open " + quote_for_message(lock_path, kQuotePathMax)));
  VL_TRY(sys::check(sys::retry_eintr([&] { return ::flock(lock.get(), LOCK_EX); }), "lock " + quote_for_message(lock_path, kQuotePathMax)));

  auto map = VL_TRY(read_uid_map(config));
  if (auto it = map.find(vm.str()); it != map.end()) return it->second;
  std::set<uid_t> used;
  for (const auto& [name, uid] : map) used.insert(uid);
  for (uint32_t i = 0; i < config.uids.count; ++i) {
    uid_t uid = config.uids.first + i;
    // Skip ids an account or group already has: their files must never become a VM's.
    if (used.count(uid) || ::getpwuid(uid) || ::getgrgid(uid)) continue;
    std::string text;
    for (const auto& [name, u] : map) text += name + " " + std::to_string(u) + "\n";
    text += vm.str() + " " + std::to_string(uid) + "\n";
    VL_CHECK(sys::write_file_atomic(config.uid_map_path(), text, 0644));
    log_info("assigned uid " + std::to_string(uid));
    return uid;
  }
  return Error::make(ErrorCode::kConflict, "no free uid left in the range of " + config.source);
}

}  // namespace vl::helper
