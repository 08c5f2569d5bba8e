#include "daemon/authorization.h"

#include <arpa/inet.h>
#include <pwd.h>

#include <algorithm>
#include <array>

#include "common/control_protocol.h"

namespace vl {

namespace {

// The closed lists: a method named here needs less, or more, than admin.
constexpr std::array<std::string_view, 2> kReadOnlyMethods = {"List", "Status"};
constexpr std::array<std::string_view, 4> kRootMethods = {"GetLaunchPlan", "Launched", "LaunchFailed", "TakePassphrase"};
// The bytes of an open console or VNC channel: its opening is logged, not every keystroke.
constexpr std::array<std::string_view, 2> kChannelMethods = {"ChannelWrite", "CloseChannel"};

bool has_group(const std::vector<gid_t>& groups, gid_t gid) {
  return gid != static_cast<gid_t>(-1) && std::find(groups.begin(), groups.end(), gid) != groups.end();
}

std::string describe_uid(uid_t uid) {
  std::string who = "uid " + std::to_string(uid);
  // getpwuid may read files or ask NSS; it runs once per connection, at admission.
  if (const passwd* pw = ::getpwuid(uid)) who += std::string(" (") + pw->pw_name + ")";
  return who;
}

}  // namespace

const char* role_name(Role role) {
  switch (role) {
    case Role::kNone: return "none";
    case Role::kReadOnly: return "read-only";
    case Role::kAdmin: return "admin";
    case Role::kRoot: return "root";
  }
  return "none";
}

Identity local_identity(uid_t uid, const std::vector<gid_t>& groups, const LocalRoles& roles) {
  Identity id;
  id.uid = uid;
  id.who = describe_uid(uid);
  if (uid == 0) id.role = Role::kRoot;
  else if (has_group(groups, roles.admin_gid)) id.role = Role::kAdmin;
  else if (has_group(groups, roles.readonly_gid)) id.role = Role::kReadOnly;
  else id.why_none = "is neither root nor in group '" + roles.admin_group + "'" +
                     (roles.readonly_group.empty() ? "" : " or '" + roles.readonly_group + "'");
  return id;
}

Identity tls_identity(const std::string& dn, const std::vector<std::string>& admin_dns,
                      const std::vector<std::string>& readonly_dns) {
  Identity id;
  id.transport = "tls";
  id.who = "certificate '" + dn + "'";
  auto any = [&](const std::vector<std::string>& patterns) {
    return std::any_of(patterns.begin(), patterns.end(), [&](const std::string& p) { return dn_matches(p, dn); });
  };
  if (any(admin_dns)) id.role = Role::kAdmin;
  else if (any(readonly_dns)) id.role = Role::kReadOnly;
  else id.why_none = "matches no allowed DN (tls.admin_dns, tls.readonly_dns)";
  return id;
}

// The length of the DN's character at `d`: an escape ("\," "\+" "\\" "\C3" ...: the backslash
// and the character after it) counts as one, so that matching never splits it.
namespace {
size_t dn_unit(std::string_view dn, size_t d) { return dn[d] == '\\' && d + 1 < dn.size() ? 2 : 1; }
}  // namespace

// Iterative wildcard match with one backtrack point: linear in practice, and no recursion a
// long hostile DN could drive deep. It steps over the DN by dn_unit: were a '*' allowed to end
// on the backslash of "\,", the pattern's next ',' would match the escaped comma, and a value
// such as CN "mole,OU=ops" would pass for the RDN OU=ops.
bool dn_matches(std::string_view pattern, std::string_view dn) {
  size_t p = 0, d = 0, star = std::string_view::npos, resume = 0;
  while (d < dn.size()) {
    const size_t unit = dn_unit(dn, d);
    if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      resume = d;
    } else if (pattern.substr(p, unit) == dn.substr(d, unit)) {
      p += unit, d += unit;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      resume += dn_unit(dn, resume);
      d = resume;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

Role role_needed(std::string_view method) {
  if (std::find(kReadOnlyMethods.begin(), kReadOnlyMethods.end(), method) != kReadOnlyMethods.end())
    return Role::kReadOnly;
  if (std::find(kRootMethods.begin(), kRootMethods.end(), method) != kRootMethods.end()) return Role::kRoot;
  return Role::kAdmin;
}

Result<void> permit(const Identity& who, std::string_view method) {
  Role need = role_needed(method);
  if (who.role >= need) return {};
  if (need == Role::kRoot)
    return Error::make(ErrorCode::kDenied, "permission denied: only root may ask for launch plans or report launches");
  if (who.role == Role::kNone) return Error::make(ErrorCode::kDenied, "permission denied: " + who.who + " " + who.why_none);
  return Error::make(ErrorCode::kDenied, "permission denied: " + who.who + " is " + role_name(who.role) +
                                              " and may not call " + std::string(method));
}

bool is_audited(const Identity& who, std::string_view method) {
  if (std::find(kChannelMethods.begin(), kChannelMethods.end(), method) != kChannelMethods.end()) return false;
  return who.remote() || !who.from.empty() || role_needed(method) > Role::kReadOnly;
}

std::string ssh_relay_claim(std::string_view name) {
  if (!name.starts_with(kSshRelayName)) return "";
  name.remove_prefix(kSshRelayName.size());
  std::string_view words[3];
  size_t n = 0;
  for (; n < 3 && !name.empty(); ++n) {
    size_t space = n < 2 ? name.find(' ') : std::string_view::npos;
    words[n] = name.substr(0, space);
    name = space == std::string_view::npos ? std::string_view() : name.substr(space + 1);
  }
  auto digits = [](std::string_view w, size_t max) {
    return !w.empty() && w.size() <= max && w.find_first_not_of("0123456789") == std::string_view::npos;
  };
  // Only what is checked reaches the log: the peer chose these bytes.
  std::string address(words[1]);
  unsigned char ip[16];
  bool ok = n == 3 && name.empty() && digits(words[0], 10) && digits(words[2], 5) && std::stoul(std::string(words[2])) <= 65535 &&
            (::inet_pton(AF_INET, address.c_str(), ip) == 1 || ::inet_pton(AF_INET6, address.c_str(), ip) == 1);
  if (!ok) return "ssh client (unreadable address)";
  return "ssh client " + address + " port " + std::string(words[2]);
}

}  // namespace vl
