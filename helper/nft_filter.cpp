#include "helper/nft_filter.h"

#include <algorithm>
#include <memory>
#include <nlohmann/json.hpp>

#include "helper/nft.h"

namespace vl::helper {

namespace {

using Json = nlohmann::json;

using nft::chain_name;
using nft::command;
using nft::match;
using nft::meta;
using nft::payload;
using nft::with;

Json table_ref() { return nft::table_ref("bridge"); }

Json meta_iifname() { return meta("iifname"); }

// One rule for traffic entering from `tap`: all `conditions`, then either a counted drop named
// `what` (its counter is the one status shows), or, if `what` is empty, `return`: the frame
// leaves the VM's chain accepted, skipping the rules after this one. Each frame meets at most
// one drop, so each dropped frame is counted once.
Json tap_rule(const std::string& vm, const std::string& tap, std::vector<Json> conditions, const std::string& what) {
  Json expr = Json::array({match(meta_iifname(), "==", tap)});
  for (Json& c : conditions) expr.push_back(std::move(c));
  Json rule = with(table_ref(), {{"chain", chain_name(vm)}});
  if (what.empty()) {
    expr.push_back({{"return", nullptr}});
  } else {
    expr.push_back({{"counter", nullptr}});
    expr.push_back({{"drop", nullptr}});
    rule["comment"] = tap + " " + what;
  }
  rule["expr"] = std::move(expr);
  return command("add", "rule", std::move(rule));
}

Json drop_rule(const std::string& vm, const std::string& tap, Json condition, const std::string& what) {
  return tap_rule(vm, tap, {std::move(condition)}, what);
}

// A set of values, or the value itself if there is one (nft has no one-element sets).
Json one_or_set(const std::vector<std::string>& values) {
  if (values.size() == 1) return values[0];
  return {{"set", values}};
}

// An IPv6 address as the 128-bit integer a raw payload match compares with: nftables 1.0.6
// has no field for the target address of neighbour solicitations and advertisements.
std::string as_integer(const IpAddress& ip) {
  static const char kHex[] = "0123456789abcdef";
  std::string out = "0x";
  for (uint8_t b : ip.bytes) out += {kHex[b >> 4], kHex[b & 15]};
  return out;
}

// The target address of a neighbour solicitation or advertisement (RFC 4861 4.3, 4.4): bytes
// 8-23 of the ICMPv6 message.
Json nd_target() { return {{"payload", {{"base", "th"}, {"offset", 64}, {"len", 128}}}}; }

// Rules for every tap: no VM is a router or a DHCP server on its zone. A guest that sends router
// advertisements or redirects could become every neighbour's IPv6 gateway; one that answers
// DHCP could hand neighbours its own gateway and DNS server.
void add_service_rules(Json& batch, const std::string& vm, const std::string& tap) {
  batch.push_back(drop_rule(vm, tap, match(payload("icmpv6", "type"), "==", "nd-router-advert"), "ra"));
  batch.push_back(drop_rule(vm, tap, match(payload("icmpv6", "type"), "==", "nd-redirect"), "redirect"));
  batch.push_back(tap_rule(vm, tap, {match(meta("protocol"), "==", "ip"), match(payload("udp", "sport"), "==", 67)},
                           "dhcp-server"));
  batch.push_back(tap_rule(vm, tap, {match(meta("protocol"), "==", "ip6"), match(payload("udp", "sport"), "==", 547)},
                           "dhcp6-server"));
}

// Rules for a tap with declared addresses. The order matters: a `return` exempts a frame from
// the rules after it only.
void add_address_rules(Json& batch, const std::string& vm, const NicFilter& nic) {
  std::vector<std::string> v4;
  std::vector<IpAddress> v6 = {eui64_link_local(nic.mac)};
  for (const IpAddress& ip : nic.ips) {
    if (!ip.is_v6()) v4.push_back(ip.str());
    else if (std::find(v6.begin(), v6.end(), ip) == v6.end()) v6.push_back(ip);
  }
  const std::string& tap = nic.tap;
  if (!v4.empty()) {
    // A DHCP client has no address yet: DISCOVER and REQUEST come from 0.0.0.0 (RFC 2131 4.1).
    // A fragment has no UDP header to match, so it is not exempt and the "ip" rule drops it.
    batch.push_back(tap_rule(vm, tap, {match(payload("ip", "saddr"), "==", "0.0.0.0"),
                                       match(payload("udp", "sport"), "==", 68), match(payload("udp", "dport"), "==", 67)},
                             ""));
    batch.push_back(drop_rule(vm, tap, match(payload("ip", "saddr"), "!=", one_or_set(v4)), "ip"));
    std::vector<std::string> senders = v4;
    senders.push_back("0.0.0.0");
    batch.push_back(drop_rule(vm, tap, match(payload("arp", "saddr ip"), "!=", one_or_set(senders)), "arp-ip"));
    // An ARP probe (RFC 5227) has sender 0.0.0.0; one for another host's address would make
    // that host give its address up, so probes may ask only for the VM's own.
    batch.push_back(tap_rule(vm, tap, {match(payload("arp", "saddr ip"), "==", "0.0.0.0"),
                                       match(payload("arp", "daddr ip"), "!=", one_or_set(v4))},
                             "arp-probe"));
  } else {
    // Addresses are declared, none of them IPv4: the VM has no IPv4 address to speak from.
    batch.push_back(drop_rule(vm, tap, match(payload("ether", "type"), "==", "ip"), "ip"));
    batch.push_back(drop_rule(vm, tap, match(payload("ether", "type"), "==", "arp"), "arp-ip"));
  }
  std::vector<std::string> sources, targets;
  for (const IpAddress& ip : v6) sources.push_back(ip.str()), targets.push_back(as_integer(ip));
  // Duplicate address detection (RFC 4862 5.4.2) solicits from :: before the address is
  // usable, for the VM's own addresses only: a solicitation for a neighbour's tentative
  // address would make the neighbour give it up.
  batch.push_back(tap_rule(vm, tap, {match(payload("ip6", "saddr"), "==", "::"),
                                     match(payload("icmpv6", "type"), "==", "nd-neighbor-solicit"),
                                     match(nd_target(), "==", one_or_set(targets))},
                           ""));
  // Before its link-local address is usable, a guest reports the multicast groups it joins
  // (its solicited-node groups, which snooping bridges need to forward solicitations to it)
  // from :: as RFC 3590 allows; Linux does. A report changes only its own port's memberships.
  batch.push_back(tap_rule(vm, tap, {match(payload("ip6", "saddr"), "==", "::"),
                                     match(payload("icmpv6", "type"), "==",
                                           {{"set", {"mld-listener-report", "mld2-listener-report"}}})},
                           ""));
  batch.push_back(drop_rule(vm, tap, match(payload("ip6", "saddr"), "!=", one_or_set(sources)), "ip6"));
  // An advertisement for another address would redirect that address's traffic to the VM.
  batch.push_back(tap_rule(vm, tap, {match(payload("icmpv6", "type"), "==", "nd-neighbor-advert"),
                                     match(nd_target(), "!=", one_or_set(targets))},
                           "nd-target"));
}

// The last rules of every tap. The ICMPv6 and UDP rules above read the upper-layer header; an
// IPv6 first fragment whose extension headers push that header into a later fragment hides it
// from them (RFC 7113's evasion of router advertisement guards), and the reassembled datagram
// is still delivered: a DHCPv6 reply hidden so would reach its victims. RFC 7112 lets such
// fragments be dropped. Returning the ones whose first 4 upper-layer bytes are readable leaves
// the others to the drop rule; nothing of this tap comes after them.
void add_fragment_rules(Json& batch, const std::string& vm, const std::string& tap) {
  auto first_of_several = [] {
    return std::vector<Json>{match({{"exthdr", {{"name", "frag"}, {"field", "frag-off"}}}}, "==", 0),
                             match({{"exthdr", {{"name", "frag"}, {"field", "more-fragments"}}}}, "==", 1)};
  };
  std::vector<Json> readable = first_of_several();
  readable.push_back(match({{"payload", {{"base", "th"}, {"offset", 0}, {"len", 32}}}}, ">=", 0));
  batch.push_back(tap_rule(vm, tap, std::move(readable), ""));
  batch.push_back(tap_rule(vm, tap, first_of_several(), "ip6-frag"));
}

Json base_chain(const char* hook) {
  return with(table_ref(), {{"name", hook}, {"type", "filter"}, {"hook", hook}, {"prio", -200}, {"policy", "accept"}});
}

// The table, map and base chains; "add" of existing objects is a no-op. The base chains are
// flushed and refilled in the same transaction, so they always hold exactly one rule.
//
// Which hooks (br_handle_frame, net/bridge/br_input.c): every frame the bridge forwards or
// delivers to itself passes `prerouting` once, before the bridge learns its source MAC, so the
// VM's chain is jumped to from there: a dropped frame is counted once, whether it would have been
// flooded to every port, delivered to a promiscuous bridge, or both. Frames for the link-local
// group addresses 01:80:c2:00:00:0X that the bridge does not forward skip prerouting; most of
// them pass `input` instead (and go up the tap's own stack, not to any other port), so `input`
// jumps to the VM's chain for those destinations only. A frame dropped there never passed
// prerouting; one that passed prerouting passed the same rules already. LLDP and (with STP on)
// BPDUs pass no hook at all: bridge_port.h is why they cannot teach the bridge anything either.
void add_skeleton(Json& batch) {
  batch.push_back(command("add", "table", {{"family", "bridge"}, {"name", kNftTable}}));
  batch.push_back(command("add", "map", with(table_ref(), {{"name", "taps"}, {"type", "ifname"}, {"map", "verdict"}})));
  Json vmap = {{"vmap", {{"key", meta_iifname()}, {"data", "@taps"}}}};
  Json link_local = match(payload("ether", "daddr"), "==", {{"range", {"01:80:c2:00:00:00", "01:80:c2:00:00:0f"}}});
  const std::pair<const char*, Json> hooks[] = {{"prerouting", Json::array({vmap})},
                                                {"input", Json::array({link_local, vmap})}};
  for (const auto& [hook, expr] : hooks) {
    batch.push_back(command("add", "chain", base_chain(hook)));
    batch.push_back(command("flush", "chain", with(table_ref(), {{"name", hook}})));
    batch.push_back(command("add", "rule", with(table_ref(), {{"chain", hook}, {"expr", expr}})));
  }
  // Earlier builds jumped from `forward` too (after the bridge had learned the forged MAC, and
  // counting a frame once per port it was flooded to): a table they left behind loses that
  // chain here. Adding it first makes the delete valid whether it exists or not.
  batch.push_back(command("add", "chain", base_chain("forward")));
  batch.push_back(command("flush", "chain", with(table_ref(), {{"name", "forward"}})));
  batch.push_back(command("delete", "chain", with(table_ref(), {{"name", "forward"}})));
}

struct VmObjects {
  bool table = false;
  bool others = false;  // other VMs' chains or map elements
  bool chain = false;
  std::vector<std::string> taps;  // map keys that jump to the VM's chain
  Json rules = Json::array();
};

Result<VmObjects> find_vm_objects(const std::string& vm) {
  VmObjects found;
  auto items = VL_TRY(nft::list_table("bridge"));
  if (!items) return found;
  found.table = true;
  for (const Json& item : *items) {
    if (item.contains("chain")) {
      std::string name = item["chain"].value("name", "");
      if (name == chain_name(vm)) found.chain = true;
      else if (name.rfind("vm-", 0) == 0) found.others = true;
    }
    if (item.contains("rule") && item["rule"].value("chain", "") == chain_name(vm)) found.rules.push_back(item["rule"]);
    if (item.contains("map") && item["map"].value("name", "") == "taps" && item["map"].contains("elem")) {
      for (const Json& elem : item["map"]["elem"]) {
        if (!elem.is_array() || elem.size() != 2 || !elem[0].is_string()) continue;
        const Json& verdict = elem[1];
        if (verdict.contains("jump") && verdict["jump"].value("target", "") == chain_name(vm))
          found.taps.push_back(elem[0].get<std::string>());
        else
          found.others = true;
      }
    }
  }
  return found;
}

void add_removal(Json& batch, const std::string& vm, const VmObjects& objects) {
  if (!objects.taps.empty()) {
    Json elems = Json::array();
    for (const auto& t : objects.taps) elems.push_back(t);
    batch.push_back(command("delete", "element", with(table_ref(), {{"name", "taps"}, {"elem", elems}})));
  }
  if (objects.chain) {
    batch.push_back(command("flush", "chain", with(table_ref(), {{"name", chain_name(vm)}})));
    batch.push_back(command("delete", "chain", with(table_ref(), {{"name", chain_name(vm)}})));
  }
}

}  // namespace

Result<void> install_vm_filter(const std::string& vm, const std::vector<NicFilter>& nics) {
  Json batch = Json::array();
  add_skeleton(batch);
  // add + flush replaces a chain a crashed launch may have left, in the same transaction.
  batch.push_back(command("add", "chain", with(table_ref(), {{"name", chain_name(vm)}})));
  batch.push_back(command("flush", "chain", with(table_ref(), {{"name", chain_name(vm)}})));
  for (const NicFilter& nic : nics) {
    std::string mac = nic.mac.str();
    // VLAN tags from a guest could hop into other VLANs on a VLAN-aware bridge.
    batch.push_back(drop_rule(vm, nic.tap, match(payload("ether", "type"), "==", {{"set", {"8021q", "8021ad"}}}), "vlan"));
    batch.push_back(drop_rule(vm, nic.tap, match(payload("ether", "saddr"), "!=", mac), "mac"));
    batch.push_back(drop_rule(vm, nic.tap, match(payload("arp", "saddr ether"), "!=", mac), "arp-mac"));
    add_service_rules(batch, vm, nic.tap);
    if (!nic.ips.empty()) add_address_rules(batch, vm, nic);
    add_fragment_rules(batch, vm, nic.tap);
  }
  Json elems = Json::array();
  for (const NicFilter& nic : nics) elems.push_back(Json::array({nic.tap, {{"jump", {{"target", chain_name(vm)}}}}}));
  if (!nics.empty())
    batch.push_back(command("add", "element", with(table_ref(), {{"name", "taps"}, {"elem", elems}})));
  Json doc = {{"nftables", batch}};
  auto ran = nft::run(doc.dump());
  if (!ran) return ran.error().wrap("install anti-spoofing rules of '" + vm + "'");
  return {};
}

Result<void> remove_vm_filter(const std::string& vm) {
  VmObjects existing = VL_TRY(find_vm_objects(vm));
  if (!existing.table) return {};
  Json batch = Json::array();
  if (existing.others) {
    if (!existing.chain && existing.taps.empty()) return {};
    add_removal(batch, vm, existing);
  } else {
    // The last VM is gone: leave no vmlaunch table behind.
    batch.push_back(command("delete", "table", {{"family", "bridge"}, {"name", kNftTable}}));
  }
  Json doc = {{"nftables", batch}};
  auto ran = nft::run(doc.dump());
  if (!ran) return ran.error().wrap("remove anti-spoofing rules of '" + vm + "'");
  return {};
}

Result<bool> vm_filter_exists(const std::string& vm) {
  VmObjects existing = VL_TRY(find_vm_objects(vm));
  return existing.chain;
}

Result<std::vector<DropCounter>> read_vm_counters(const std::string& vm) {
  VmObjects existing = VL_TRY(find_vm_objects(vm));
  std::vector<DropCounter> counters;
  for (const Json& rule : existing.rules) {
    std::string comment = rule.value("comment", "");
    size_t space = comment.find(' ');
    if (space == std::string::npos) continue;  // the exemptions (`return`) count nothing
    DropCounter c{comment.substr(0, space), comment.substr(space + 1), 0};
    for (const Json& e : rule.value("expr", Json::array()))
      if (e.contains("counter") && e["counter"].is_object()) c.packets = e["counter"].value("packets", uint64_t{0});
    counters.push_back(std::move(c));
  }
  return counters;
}

}  // namespace vl::helper
