#include "helper/inspect.h"

#include <dirent.h>
#include <net/if.h>
#include <sys/stat.h>

#include <algorithm>
#include <memory>
#include <nlohmann/json.hpp>

#include "common/audit_facts.h"
#include "common/broker_protocol.h"
#include "common/domain_file.h"
#include "common/sys.h"
#include "common/vm_state.h"
#include "helper/netlink.h"
#include "helper/nft.h"
#include "helper/nft_filter.h"
#include "helper/runtime_dir.h"
#include "helper/uid_map.h"

namespace vl::helper {

namespace {

using Json = nlohmann::json;

// qemu's command line is a few KiB; more than this is reported as truncated, not read on.
constexpr size_t kMaxCmdline = 16 * 1024;
constexpr size_t kMaxStatus = 16 * 1024;

Result<uint64_t> ns_inode(const std::string& pid, const char* ns) {
  std::string path = "/proc/" + pid + "/ns/" + ns;
  struct stat st {};
  VL_TRY(sys::check(::stat(path.c_str(), &st), "stat " + path));
  return static_cast<uint64_t>(st.st_ino);
}

// The emulator's credentials, namespaces and command line. Read only while the pidfd shows the
// process alive, and checked again afterwards: facts of a recycled pid are never reported.
Result<std::optional<ProcessFacts>> read_process(const VmState& state) {
  auto pidfd = open_process(state.pid, state.start_time);
  if (!pidfd) return pidfd.error().code == ErrorCode::kNotFound ? Result<std::optional<ProcessFacts>>(std::nullopt)
                                                               : Result<std::optional<ProcessFacts>>(std::move(pidfd).error());
  ProcessFacts p;
  p.pid = state.pid;
  std::string pid = std::to_string(state.pid);
  std::string status = VL_TRY(sys::read_file("/proc/" + pid + "/status", kMaxStatus));
  for (size_t start = 0; start < status.size();) {
    size_t end = status.find('\n', start);
    if (end == std::string::npos) end = status.size();
    std::string_view line(status.data() + start, end - start);
    start = end + 1;
    size_t colon = line.find(':');
    if (colon == std::string_view::npos) continue;
    std::string key(line.substr(0, colon));
    if (std::none_of(std::begin(kStatusKeys), std::end(kStatusKeys), [&](const char* k) { return key == k; })) continue;
    std::string_view value = line.substr(colon + 1);
    while (!value.empty() && (value.front() == '\t' || value.front() == ' ')) value.remove_prefix(1);
    while (!value.empty() && (value.back() == '\t' || value.back() == ' ')) value.remove_suffix(1);
    p.status[key] = std::string(value);
  }
  p.net_ns = VL_TRY(ns_inode(pid, "net"));
  p.mnt_ns = VL_TRY(ns_inode(pid, "mnt"));
  // Root without ptrace rights over PID 1 (in some containers) cannot read its namespaces; the
  // broker's own are then the reference, and the facts say so.
  auto host_net = ns_inode("1", "net"), host_mnt = ns_inode("1", "mnt");
  p.host_ns_of = "PID 1";
  if (!host_net || !host_mnt) {
    int err = !host_net ? host_net.error().sys_errno : host_mnt.error().sys_errno;
    if (err != EACCES && err != EPERM) return !host_net ? std::move(host_net).error() : std::move(host_mnt).error();
    host_net = ns_inode("self", "net"), host_mnt = ns_inode("self", "mnt");
    p.host_ns_of = "the broker";
  }
  p.host_net_ns = VL_TRY(std::move(host_net));
  p.host_mnt_ns = VL_TRY(std::move(host_mnt));
  std::string cmdline = VL_TRY(sys::read_file("/proc/" + pid + "/cmdline", kMaxCmdline + 1));
  if (cmdline.size() > kMaxCmdline) {
    cmdline.resize(kMaxCmdline);
    p.argv_truncated = true;
  }
  for (size_t start = 0; start < cmdline.size();) {
    size_t end = cmdline.find('\0', start);
    if (end == std::string::npos) end = cmdline.size();
    p.argv.emplace_back(cmdline, start, end - start);
    start = end + 1;
  }
  if (pidfd_exited(pidfd->get())) return std::optional<ProcessFacts>();
  return std::optional<ProcessFacts>(std::move(p));
}

// The running VMs as their runtime state says (RUNTIME/vms/NAME/state.json of a live process).
Result<std::vector<LiveVm>> live_vms(const HostConfig& config) {
  std::vector<LiveVm> live;
  std::string dir = config.runtime_dir + "/vms";
  std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(dir.c_str()), ::closedir);
  if (!d) return errno == ENOENT ? Result<std::vector<LiveVm>>(live) : Error::from_errno("open " + quote_for_message(dir, kQuotePathMax));
  while (dirent* e = ::readdir(d.get())) {
    auto name = VmName::parse(e->d_name);
    if (!name) continue;
    auto state = read_vm_state(config, *name);
    if (!state || !process_matches(state->pid, state->start_time)) continue;
    live.push_back({name->str(), static_cast<uint32_t>(state->uid), state->taps});
  }
  std::sort(live.begin(), live.end(), [](const LiveVm& a, const LiveVm& b) { return a.name < b.name; });
  return live;
}

// The VM names of the files PREFIX + NAME + SUFFIX in `dir` (disk journals, udev rules).
Result<std::vector<std::string>> names_in(const std::string& dir, std::string_view prefix, std::string_view suffix) {
  std::vector<std::string> names;
  std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(dir.c_str()), ::closedir);
  if (!d) return errno == ENOENT ? Result<std::vector<std::string>>(names) : Error::from_errno("open " + quote_for_message(dir, kQuotePathMax));
  while (dirent* e = ::readdir(d.get())) {
    std::string_view file = e->d_name;
    if (file.size() <= prefix.size() + suffix.size() || !file.starts_with(prefix) || !file.ends_with(suffix)) continue;
    file = file.substr(prefix.size(), file.size() - prefix.size() - suffix.size());
    if (auto name = VmName::parse(std::string(file))) names.push_back(name->str());
  }
  std::sort(names.begin(), names.end());
  return names;
}

// A match `LEFT OP RIGHT` in a rule's expression list whose left side is `left`.
const Json* find_match(const Json& expr, const Json& left, const char* op) {
  for (const Json& e : expr) {
    if (!e.is_object() || !e.contains("match")) continue;
    const Json& m = e["match"];
    if (m.is_object() && m.value("op", "") == op && m.contains("left") && m["left"] == left && m.contains("right")) return &m["right"];
  }
  return nullptr;
}

// vmlaunch's bridge table as the anti-spoofing rules need it (nft_filter.h): which hooks jump
// through @taps, where each tap jumps, every VM chain, and each chain's source-MAC rules.
Result<NftFacts> nft_facts() {
  NftFacts facts;
  auto items = VL_TRY(nft::list_table("bridge"));
  if (!items) return facts;
  facts.table = true;
  std::map<std::string, std::string> hooks;  // base chain -> hook
  std::vector<const Json*> rules;
  for (const Json& item : *items) {
    if (!item.is_object()) continue;
    if (item.contains("chain") && item["chain"].is_object()) {
      const Json& c = item["chain"];
      std::string name = c.value("name", "");
      if (c.contains("hook") && c["hook"].is_string()) hooks[name] = c["hook"].get<std::string>();
      if (name.rfind("vm-", 0) == 0) facts.vm_chains.push_back(name);
    }
    if (item.contains("rule") && item["rule"].is_object()) rules.push_back(&item["rule"]);
    if (item.contains("map") && item["map"].is_object() && item["map"].value("name", "") == "taps" &&
        item["map"].contains("elem") && item["map"]["elem"].is_array()) {
      for (const Json& elem : item["map"]["elem"]) {
        if (!elem.is_array() || elem.size() != 2 || !elem[0].is_string() || !elem[1].is_object() || !elem[1].contains("jump")) continue;
        const Json& jump = elem[1]["jump"];
        if (jump.is_object()) facts.tap_map[elem[0].get<std::string>()] = jump.value("target", "");
      }
    }
  }
  const Json iifname = nft::meta("iifname");
  const Json saddr = nft::payload("ether", "saddr");
  for (const Json* rule : rules) {
    std::string chain = rule->value("chain", "");
    if (!rule->contains("expr") || !(*rule)["expr"].is_array()) continue;
    const Json& expr = (*rule)["expr"];
    if (auto hook = hooks.find(chain); hook != hooks.end()) {
      for (const Json& e : expr)
        if (e.is_object() && e.contains("vmap") && e["vmap"].is_object() && e["vmap"].value("key", Json()) == iifname &&
            e["vmap"].value("data", "") == "@taps")
          facts.tap_hooks.push_back(hook->second);
      continue;
    }
    const Json* tap = find_match(expr, iifname, "==");
    const Json* mac = find_match(expr, saddr, "!=");
    bool drops = std::any_of(expr.begin(), expr.end(), [](const Json& e) { return e.is_object() && e.contains("drop"); });
    if (tap && mac && tap->is_string() && mac->is_string() && drops)
      facts.mac_rules.push_back({chain, tap->get<std::string>(), mac->get<std::string>()});
  }
  return facts;
}

// Every tun/tap of a uid in the VM range, and the zone bridges with their addresses.
Result<void> link_facts(const HostConfig& config, Netlink& nl, HostFacts& host) {
  auto links = VL_TRY(nl.list_links());
  auto name_of = [&](int ifindex) {
    for (const auto& [name, info] : links)
      if (info.ifindex == ifindex) return name;
    return std::string();
  };
  for (const auto& [name, info] : links) {
    if (info.kind != "tun") continue;
    auto owner = VL_TRY(nl.tun_owner(info.ifindex, name));
    if (owner && config.uids.contains(*owner)) host.taps.push_back({name, *owner, info.master ? name_of(info.master) : ""});
  }
  for (const Zone& zone : config.zones) {
    BridgeFacts b{zone.bridge, false, {}};
    for (const auto& [name, info] : links)
      if (name == zone.bridge) {
        b.exists = true;
        b.addresses = VL_TRY(nl.addresses(info.ifindex));
      }
    host.bridges.push_back(std::move(b));
  }
  return {};
}

Result<std::vector<TapFacts>> tap_facts(const VmName& vm, size_t nics, Netlink& nl) {
  auto learning = VL_TRY(nl.port_learning());
  auto fdb = VL_TRY(nl.static_fdb());
  std::vector<TapFacts> taps;
  for (size_t i = 0; i < nics && i < VmName::kMaxNics; ++i) {
    TapFacts t;
    t.name = vm.tap_name(static_cast<unsigned>(i));
    if (auto link = VL_TRY(nl.find(t.name))) {
      t.exists = true;
      if (link->master) {
        char bridge[IF_NAMESIZE] = "";
        if (::if_indextoname(static_cast<unsigned>(link->master), bridge)) t.master = bridge;
      }
      auto it = learning.find(link->ifindex);
      t.learning = it != learning.end() && it->second;
      for (const MacAddress& mac : fdb[link->ifindex]) t.static_macs.push_back(mac.str());
    }
    taps.push_back(std::move(t));
  }
  return taps;
}

}  // namespace

Result<std::string> inspect_vm(const HostConfig& config, const VmName& vm) {
  // The same check as a start: only a definition root accepts (domain_file.h).
  Domain domain = VL_TRY(load_domain_definition(config, vm));
  AuditFacts facts;
  facts.vm.name = vm.str();
  if (auto uid = VL_TRY(assigned_uid(config, vm))) facts.vm.uid = *uid;
  if (auto state = read_vm_state(config, vm)) {
    facts.vm.process = VL_TRY(read_process(*state));
    facts.vm.running = facts.vm.process.has_value();
  } else if (!is_missing(state.error())) {
    return std::move(state).error();
  }
  Netlink nl = VL_TRY(Netlink::open());
  facts.vm.taps = VL_TRY(tap_facts(vm, domain.nics.size(), nl));
  for (const Disk& disk : domain.disks) {
    if (disk.read_only || disk.shareable || disk.source.empty()) continue;  // never given to the VM (disk_owner.h)
    DiskFacts d{disk.source, false, 0, 0};
    // Not through symlinks, which the launch refuses, except below /dev, where block devices
    // are named by links (/dev/disk/by-id/...) that the launch follows too (disk_owner.h).
    struct stat st {};
    bool found = ::lstat(disk.source.c_str(), &st) == 0;
    if (found && S_ISLNK(st.st_mode) && disk.source.starts_with("/dev/")) found = ::stat(disk.source.c_str(), &st) == 0;
    if (found) d = {disk.source, true, st.st_uid, st.st_mode};
    facts.vm.disks.push_back(std::move(d));
  }
  facts.host.live = VL_TRY(live_vms(config));
  VL_CHECK(link_facts(config, nl, facts.host));
  facts.host.nft = VL_TRY(nft_facts());
  facts.host.journals = VL_TRY(names_in(config.state_dir + "/disks", "", ".json"));
  facts.host.udev_rules = VL_TRY(names_in(config.udev_rules_dir, "90-vmlaunch-", ".rules"));  // HostConfig::udev_rule_path
  std::string out = audit_facts_to_json(facts);
  if (out.size() > kMaxBrokerReply - kInspectReserve)
    return Error::make(ErrorCode::kInvalid, "the facts of VM '" + vm.str() + "' exceed " +
                                                std::to_string((kMaxBrokerReply - kInspectReserve) / 1024) + " KiB");
  return out;
}

}  // namespace vl::helper
