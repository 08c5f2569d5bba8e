#include "helper/console_filter.h"

#include <grp.h>
#include <pwd.h>

#include <algorithm>
#include <memory>
#include <nlohmann/json.hpp>

#include "helper/log.h"
#include "helper/nft.h"
#include "helper/nft_filter.h"

namespace vl::helper {

namespace {

using Json = nlohmann::json;

constexpr char kFamily[] = "inet";
constexpr char kPortMap[] = "consoles";

using nft::chain_name;
using nft::command;
using nft::match;
using nft::with;

Json table_ref() { return nft::table_ref(kFamily); }

Json tcp(const char* field) { return nft::payload("tcp", field); }

// The table, the port map and the output chain; "add" of existing objects is a no-op, and the
// output chain is flushed and refilled in the same transaction, so it holds exactly one rule.
//
// What the rule looks at, and why:
//  - `output` sees every packet a local socket sends, to loopback or to any of the host's
//    addresses, whatever address the VNC server listens on. Connections from other hosts (and
//    from guests, if VNC listens on an address they can reach) come in through `input` and are
//    not filtered here: the man page says so.
//  - Only connection attempts (SYN without ACK): the verdict is taken once per connection, and
//    replies a server sends from a port that happens to equal a VNC port are never touched.
//  - Only to local addresses (`fib daddr type local`): a local user's connection to a VNC
//    server on another host is none of vmlaunch's business.
//  - Packets without a full socket (RSTs the kernel sends, time-wait replies) make `meta skuid`
//    fail to match, so the VM's chain lets them pass.
void add_skeleton(Json& batch) {
  batch.push_back(command("add", "table", {{"family", kFamily}, {"name", kNftTable}}));
  batch.push_back(command("add", "map", with(table_ref(), {{"name", kPortMap}, {"type", "inet_service"}, {"map", "verdict"}})));
  batch.push_back(command("add", "chain", with(table_ref(), {{"name", "output"}, {"type", "filter"}, {"hook", "output"},
                                                              {"prio", 0}, {"policy", "accept"}})));
  batch.push_back(command("flush", "chain", with(table_ref(), {{"name", "output"}})));
  Json expr = Json::array({
      match({{"meta", {{"key", "l4proto"}}}}, "==", "tcp"),
      match({{"&", Json::array({tcp("flags"), Json::array({"syn", "ack"})})}}, "==", "syn"),
      match({{"fib", {{"result", "type"}, {"flags", Json::array({"daddr"})}}}}, "==", "local"),
      {{"vmap", {{"key", tcp("dport")}, {"data", std::string("@") + kPortMap}}}},
  });
  batch.push_back(command("add", "rule", with(table_ref(), {{"chain", "output"}, {"expr", expr}})));
}

struct VmObjects {
  bool table = false;
  bool others = false;  // other VMs' chains or map elements
  bool chain = false;
  std::vector<int> ports;                        // map keys that jump to the VM's chain
  std::vector<std::pair<int, std::string>> taken;  // map keys that jump to other chains
};

Result<VmObjects> find_vm_objects(const std::string& vm) {
  VmObjects found;
  auto items = VL_TRY(nft::list_table(kFamily));
  if (!items) return found;
  found.table = true;
  for (const Json& item : *items) {
    if (item.contains("chain")) {
      std::string name = item["chain"].value("name", "");
      if (name == chain_name(vm)) found.chain = true;
      else if (name.rfind("vm-", 0) == 0) found.others = true;
    }
    if (item.contains("map") && item["map"].value("name", "") == kPortMap && item["map"].contains("elem")) {
      for (const Json& elem : item["map"]["elem"]) {
        if (!elem.is_array() || elem.size() != 2 || !elem[0].is_number_integer()) continue;
        const Json& verdict = elem[1];
        std::string target = verdict.contains("jump") ? verdict["jump"].value("target", "") : "";
        if (target == chain_name(vm)) {
          found.ports.push_back(elem[0].get<int>());
        } else {
          found.others = true;
          found.taken.emplace_back(elem[0].get<int>(), target);
        }
      }
    }
  }
  return found;
}

void add_removal(Json& batch, const std::string& vm, const VmObjects& objects) {
  if (!objects.ports.empty())
    batch.push_back(command("delete", "element", with(table_ref(), {{"name", kPortMap}, {"elem", objects.ports}})));
  if (objects.chain) {
    batch.push_back(command("flush", "chain", with(table_ref(), {{"name", chain_name(vm)}})));
    batch.push_back(command("delete", "chain", with(table_ref(), {{"name", chain_name(vm)}})));
  }
}

// Appends the uid of `name` unless it is a VM's.
void add_operator(const HostConfig& config, const passwd* pw, const std::string& why, std::vector<uid_t>& uids) {
  if (config.uids.contains(pw->pw_uid)) {
    log_warning("user " + quote_for_message(std::string(pw->pw_name)) + " (" + why + ") has uid " + std::to_string(pw->pw_uid) +
                ", which is a VM's: it may not reach any console, ignoring");
    return;
  }
  uids.push_back(pw->pw_uid);
}

}  // namespace

// Resolved once per launch: nftables matches a socket's owner uid, not the groups of the
// process that opened it, so the group has to be turned into uids, and a change of membership
// takes effect at the VM's next launch (the man page says so). The alternative, `meta skgid`,
// sees only the socket owner's effective gid, which for most operators is not the admin group.
std::vector<uid_t> console_operators(const HostConfig& config) {
  std::vector<uid_t> uids = {0};
  if (const passwd* daemon = ::getpwnam(config.daemon_user.c_str()))
    add_operator(config, daemon, "the daemon user", uids);
  else
    log_warning("daemon user " + quote_for_message(config.daemon_user) + " does not exist; it may not reach consoles, ignoring");
  const group* admin = ::getgrnam(config.admin_group.c_str());
  if (!admin) {
    log_warning("admin group " + quote_for_message(config.admin_group) + " does not exist; only root may reach consoles, ignoring");
  } else {
    gid_t admin_gid = admin->gr_gid;
    // getgrnam's result is overwritten by the next lookup: copy the member names first.
    std::vector<std::string> members;
    for (char** m = admin->gr_mem; m && *m; ++m) members.emplace_back(*m);
    std::string why = "member of " + quote_for_message(config.admin_group);
    for (const std::string& name : members) {
      if (const passwd* pw = ::getpwnam(name.c_str())) add_operator(config, pw, why, uids);
      else log_warning("member " + quote_for_message(name) + " of group " + quote_for_message(config.admin_group) + " is no user, ignoring");
    }
    // Users whose primary group is the admin group are members too, though /etc/group does not
    // list them.
    ::setpwent();
    while (const passwd* pw = ::getpwent())
      if (pw->pw_gid == admin_gid) add_operator(config, pw, why, uids);
    ::endpwent();
  }
  std::sort(uids.begin(), uids.end());
  uids.erase(std::unique(uids.begin(), uids.end()), uids.end());
  return uids;
}

Result<void> install_console_filter(const std::string& vm, uint16_t port, const std::vector<uid_t>& operators) {
  if (port == 0) return Error::invalid("VNC port 0 of '" + vm + "'");
  if (operators.empty()) return Error::invalid("no console operators for '" + vm + "'");
  VmObjects existing = VL_TRY(find_vm_objects(vm));
  // Replacing another VM's element would leave that VM's console open, should it still run.
  for (const auto& [taken, target] : existing.taken) {
    if (taken != port) continue;
    std::string other = target.rfind("vm-", 0) == 0 ? target.substr(3) : target;
    return Error::make(ErrorCode::kConflict, "VNC port " + std::to_string(port) + " is guarded for VM '" + other +
                                                 "'; if it is not running, run 'vmlaunch-helper cleanup " + other + "' first");
  }
  Json batch = Json::array();
  add_skeleton(batch);
  // Elements a crashed launch of this VM left (maybe for another port) go in the same
  // transaction; add + flush replaces its chain.
  if (!existing.ports.empty())
    batch.push_back(command("delete", "element", with(table_ref(), {{"name", kPortMap}, {"elem", existing.ports}})));
  batch.push_back(command("add", "chain", with(table_ref(), {{"name", chain_name(vm)}})));
  batch.push_back(command("flush", "chain", with(table_ref(), {{"name", chain_name(vm)}})));
  Json uids = Json::array();
  for (uid_t uid : operators) uids.push_back(uid);
  Json expr = Json::array({
      match({{"meta", {{"key", "l4proto"}}}}, "==", "tcp"),
      match({{"meta", {{"key", "skuid"}}}}, "!=", {{"set", uids}}),
      {{"counter", nullptr}},
      {{"reject", {{"type", "tcp reset"}}}},
  });
  batch.push_back(command("add", "rule", with(table_ref(), {{"chain", chain_name(vm)}, {"expr", expr},
                                                           {"comment", "console " + std::to_string(port)}})));
  Json elem = Json::array({Json::array({port, {{"jump", {{"target", chain_name(vm)}}}}})});
  batch.push_back(command("add", "element", with(table_ref(), {{"name", kPortMap}, {"elem", elem}})));
  Json doc = {{"nftables", batch}};
  // PRIV: the chain is named after a validated VM name, the port comes from the checked plan
  // (argv_policy.h), the uids from root's user and group databases.
  auto ran = nft::run(doc.dump());
  if (!ran) return ran.error().wrap("install console rule of '" + vm + "'");
  return {};
}

Result<void> remove_console_filter(const std::string& vm) {
  VmObjects existing = VL_TRY(find_vm_objects(vm));
  if (!existing.table) return {};
  Json batch = Json::array();
  if (existing.others) {
    if (!existing.chain && existing.ports.empty()) return {};
    add_removal(batch, vm, existing);
  } else {
    // The last VM is gone: leave no vmlaunch table behind.
    batch.push_back(command("delete", "table", {{"family", kFamily}, {"name", kNftTable}}));
  }
  Json doc = {{"nftables", batch}};
  auto ran = nft::run(doc.dump());
  if (!ran) return ran.error().wrap("remove console rule of '" + vm + "'");
  return {};
}

Result<bool> console_filter_exists(const std::string& vm) {
  VmObjects existing = VL_TRY(find_vm_objects(vm));
  return existing.chain;
}

}  // namespace vl::helper
