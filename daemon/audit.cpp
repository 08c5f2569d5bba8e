#include "daemon/audit.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

namespace vl {

namespace {

// Collects the findings of one VM (or of the host) with one line per rule.
class Report final {
 public:
  explicit Report(std::string vm) : vm_(std::move(vm)) {}
  void pass(const char* rule, std::string evidence) { add(rule, Verdict::kPass, std::move(evidence), ""); }
  void fail(const char* rule, std::string evidence, std::string fix) { add(rule, Verdict::kFail, std::move(evidence), std::move(fix)); }
  void skip(const char* rule, std::string why) { add(rule, Verdict::kSkip, std::move(why), ""); }
  /// Fails with every problem in `problems` joined, or passes with `ok`.
  void judge(const char* rule, const std::vector<std::string>& problems, std::string ok, std::string fix) {
    if (problems.empty()) return pass(rule, std::move(ok));
    std::string evidence;
    for (const std::string& p : problems) evidence += (evidence.empty() ? "" : "; ") + p;
    fail(rule, std::move(evidence), std::move(fix));
  }
  std::vector<Finding> take() { return std::move(findings_); }

 private:
  void add(const char* rule, Verdict v, std::string evidence, std::string fix) {
    findings_.push_back({rule, vm_, v, std::move(evidence), std::move(fix)});
  }
  std::string vm_;
  std::vector<Finding> findings_;
};

std::string octal(unsigned mode) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", mode & 07777);
  return buf;
}

std::string status_field(const ProcessFacts& p, const char* key) {
  auto it = p.status.find(key);
  return it == p.status.end() ? std::string("(absent)") : it->second;
}

std::vector<std::string> words(const std::string& text) {
  std::istringstream in(text);
  std::vector<std::string> out;
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

bool is_loopback(const std::string& address) {
  return address.rfind("127.", 0) == 0 || address == "::1" || address == "localhost";
}

void uid_rules(Report& r, const HostConfig& config, const AuditFacts& f, const ProcessFacts& p) {
  std::vector<std::string> problems;
  std::string assigned = f.vm.uid ? std::to_string(*f.vm.uid) : std::string("none");
  std::string ids;
  bool other = false;
  for (const std::string& id : words(status_field(p, "Uid"))) {
    ids += (ids.empty() ? "" : " ") + id;
    other = other || id != assigned;
  }
  if (other || ids.empty()) problems.push_back("the emulator runs as uid " + ids + ", not the VM's uid " + assigned);
  if (f.vm.uid && *f.vm.uid == 0) problems.push_back("the VM's uid is root's");
  if (f.vm.uid && !config.uids.contains(*f.vm.uid))
    problems.push_back("uid " + assigned + " is outside the VM uid range");
  for (const LiveVm& other : f.host.live)
    if (f.vm.uid && other.name != f.vm.name && other.uid == *f.vm.uid)
      problems.push_back("VM '" + other.name + "' runs as the same uid " + assigned);
  r.judge("own-uid", problems, "runs as uid " + assigned + ", its own",
          "stop the VMs involved and check the uid map (" + config.uid_map_path() + "): each VM needs a uid of its own from the range");
}

void privilege_rules(Report& r, const ProcessFacts& p) {
  std::vector<std::string> caps;
  for (const char* key : {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"}) {
    std::string v = status_field(p, key);
    if (v.empty() || v.find_first_not_of('0') != std::string::npos) caps.push_back(std::string(key) + " " + v);
  }
  r.judge("no-capabilities", caps, "every capability set is empty",
          "restart the VM (vmctl restart): vmlaunch-helper clears every set before it executes the emulator");
  std::string nnp = status_field(p, "NoNewPrivs");
  if (nnp == "1") r.pass("no-new-privs", "NoNewPrivs 1");
  else r.fail("no-new-privs", "NoNewPrivs " + nnp, "restart the VM (vmctl restart): vmlaunch-helper sets no_new_privs");
  std::string seccomp = status_field(p, "Seccomp");
  if (seccomp == "2") r.pass("seccomp", "Seccomp 2 (filter)");
  else r.fail("seccomp", "Seccomp " + seccomp + " (want 2, a filter)", "restart the VM (vmctl restart): vmlaunch-helper loads its seccomp filter");
  std::vector<std::string> shared;
  std::string whose = p.host_ns_of == "PID 1" ? "the host's" : p.host_ns_of + "'s";
  if (p.net_ns == p.host_net_ns) shared.push_back("network namespace " + std::to_string(p.net_ns) + " is " + whose);
  if (p.mnt_ns == p.host_mnt_ns) shared.push_back("mount namespace " + std::to_string(p.mnt_ns) + " is " + whose);
  r.judge("jailed-namespaces", shared, "network and mount namespaces of its own",
          "run the emulator in a network and mount namespace of its own (the emulator jail)");
  bool sandbox = false;
  for (size_t i = 0; i + 1 < p.argv.size(); ++i)
    if (p.argv[i] == "-sandbox" && p.argv[i + 1].rfind("on", 0) == 0) sandbox = true;
  if (sandbox) r.pass("sandbox", "-sandbox on in the running command line");
  else r.fail("sandbox", std::string("no '-sandbox on' in the running command line") + (p.argv_truncated ? " (read truncated)" : ""),
              "restart the VM (vmctl restart): vmlaunch-helper appends -sandbox on");
}

void disk_rule(Report& r, const AuditFacts& f) {
  std::vector<std::string> problems;
  std::string assigned = f.vm.uid ? std::to_string(*f.vm.uid) : std::string("none");
  for (const DiskFacts& d : f.vm.disks) {
    if (!d.exists) {
      problems.push_back("'" + d.path + "' does not exist");
      continue;
    }
    if (!S_ISREG(d.mode) && !S_ISBLK(d.mode)) problems.push_back("'" + d.path + "' is neither a regular file nor a block device");
    if (!f.vm.uid || d.uid != *f.vm.uid) {
      std::string whose;
      for (const LiveVm& other : f.host.live)
        if (other.uid == d.uid && other.name != f.vm.name) whose = ", VM '" + other.name + "''s";
      problems.push_back("'" + d.path + "' is owned by uid " + std::to_string(d.uid) + whose + ", not the VM's uid " + assigned);
    }
    if ((d.mode & 07777) != 0600) problems.push_back("'" + d.path + "' has mode " + octal(d.mode) + ", not 0600");
  }
  r.judge("disk-owner", problems, std::to_string(f.vm.disks.size()) + " writable disk(s), each uid " + assigned + " mode 0600",
          "stop the VM and start it again: the launch gives each disk to the VM's uid with mode 0600; find who changed it");
}

void network_rules(Report& r, const HostConfig& config, const Domain& domain, const AuditFacts& f, bool running) {
  std::vector<std::string> zone_problems;
  const Zone* meta_zone = domain.meta.zone.empty() ? nullptr : config.zone_named(domain.meta.zone);
  if (!domain.meta.zone.empty() && !meta_zone) zone_problems.push_back("metadata zone '" + domain.meta.zone + "' is not declared");
  for (size_t i = 0; i < domain.nics.size(); ++i) {
    const Nic& nic = domain.nics[i];
    const Zone* zone = config.zone_of_bridge(nic.bridge);
    if (!zone) zone_problems.push_back("NIC " + std::to_string(i) + " bridge '" + nic.bridge + "' is no declared zone's");
    else if (meta_zone && zone != meta_zone)
      zone_problems.push_back("NIC " + std::to_string(i) + " is on zone '" + zone->name + "', the metadata says '" + meta_zone->name + "'");
    if (running && i < f.vm.taps.size() && f.vm.taps[i].master != nic.bridge)
      zone_problems.push_back("tap '" + f.vm.taps[i].name + "' is " +
                              (f.vm.taps[i].master.empty() ? std::string("on no bridge") : "on bridge '" + f.vm.taps[i].master + "'") +
                              ", not '" + nic.bridge + "'");
  }
  r.judge("nic-zone", zone_problems, domain.nics.empty() ? "no NICs" : "every NIC on its declared zone's bridge",
          "put each <interface> on a bridge declared in [zones] of vmlaunch.toml, the metadata zone's, and restart the VM");
  if (!running) {
    r.skip("anti-spoofing", "not running");
    r.skip("bridge-learning", "not running");
    return;
  }
  const NftFacts& nft = f.host.nft;
  std::string chain = "vm-" + f.vm.name;
  std::vector<std::string> spoof;
  if (!domain.nics.empty()) {
    if (!nft.table) spoof.push_back("no table 'bridge vmlaunch'");
    else if (std::find(nft.tap_hooks.begin(), nft.tap_hooks.end(), "prerouting") == nft.tap_hooks.end())
      spoof.push_back("no prerouting hook jumps through the @taps map");
  }
  for (size_t i = 0; i < domain.nics.size() && i < f.vm.taps.size(); ++i) {
    const std::string& tap = f.vm.taps[i].name;
    std::string mac = domain.nics[i].mac.str();
    auto mapped = nft.tap_map.find(tap);
    if (mapped == nft.tap_map.end() || mapped->second != chain) spoof.push_back("tap '" + tap + "' does not jump to chain '" + chain + "'");
    bool rule = std::any_of(nft.mac_rules.begin(), nft.mac_rules.end(),
                            [&](const MacRule& m) { return m.chain == chain && m.tap == tap && m.mac == mac; });
    if (!rule) spoof.push_back("chain '" + chain + "' has no rule dropping frames from '" + tap + "' whose source is not " + mac);
  }
  r.judge("anti-spoofing", spoof, domain.nics.empty() ? "no NICs" : "prerouting drops every tap's frames not from its MAC",
          "restart the VM (vmctl restart): its launch installs the chain again; find what flushed it");
  std::vector<std::string> learning;
  for (size_t i = 0; i < f.vm.taps.size(); ++i) {
    const TapFacts& t = f.vm.taps[i];
    if (!t.exists) continue;
    if (t.learning) learning.push_back("bridge port '" + t.name + "' learns MACs");
    std::string mac = i < domain.nics.size() ? domain.nics[i].mac.str() : "";
    if (std::find(t.static_macs.begin(), t.static_macs.end(), mac) == t.static_macs.end())
      learning.push_back("bridge port '" + t.name + "' has no static, sticky FDB entry for " + mac);
  }
  r.judge("bridge-learning", learning, "no port of the VM learns MACs; each has its MAC as a static, sticky entry",
          "restart the VM (or: bridge link set dev TAP learning off; bridge fdb replace MAC dev TAP master static sticky)");
}

// The definition allows VNC only on the VM's Unix socket (domain.h); a running emulator
// started by an earlier version may still listen on TCP, so its command line is what counts.
void vnc_rules(Report& r, const HostConfig& config, const Domain& domain, const ProcessFacts* p) {
  if (!domain.vnc) {
    r.pass("vnc-listen", "no VNC");
    r.pass("vnc-password", "no VNC");
    return;
  }
  const Vnc& vnc = *domain.vnc;
  std::string where;
  if (p)
    for (size_t i = 0; i + 1 < p->argv.size(); ++i)
      if (p->argv[i] == "-vnc") where = p->argv[i + 1].substr(0, p->argv[i + 1].find(','));
  std::string socket = "unix:" + config.vnc_socket_path(domain.name);
  if (p && where.empty()) {
    r.pass("vnc-listen", "no -vnc in the running command line");
  } else if (!p || where == socket) {
    r.pass("vnc-listen", "on the VM's Unix socket only" + std::string(p ? "" : " (from its definition)"));
  } else if (where.rfind("unix:", 0) == 0) {
    r.fail("vnc-listen", "listens on " + quote_for_message(where, kQuotePathMax) + ", not " + quote_for_message(socket, kQuotePathMax),
           "restart the VM (vmctl restart)");
  } else {
    std::string host = where.substr(0, where.rfind(':'));
    if (is_loopback(host)) r.pass("vnc-listen", "listens on TCP " + host);
    else if (config.vnc.tls) r.pass("vnc-listen", "listens on TCP " + host + " with TLS");
    else
      r.fail("vnc-listen", "listens on TCP " + host + " without TLS",
             "restart the VM (vmctl restart): vmlaunch now serves VNC on the VM's Unix socket only, for vmctl vnc");
  }
  if (vnc.password.size() <= 8)
    r.pass("vnc-password", vnc.password.empty() ? "no password" : std::to_string(vnc.password.size()) + " characters");
  else
    r.fail("vnc-password", "the password has " + std::to_string(vnc.password.size()) + " characters; VNC uses only the first 8",
           "set a passwd of at most 8 characters in <graphics>");
}

}  // namespace

const char* verdict_name(Verdict v) {
  switch (v) {
    case Verdict::kPass: return "pass";
    case Verdict::kFail: return "fail";
    case Verdict::kSkip: return "skip";
  }
  return "?";
}

std::vector<Finding> audit_vm(const HostConfig& config, const Domain& domain, const AuditFacts& f) {
  Report r(f.vm.name);
  if (f.vm.process) {
    uid_rules(r, config, f, *f.vm.process);
    privilege_rules(r, *f.vm.process);
    disk_rule(r, f);
  } else {
    for (const char* rule : {"own-uid", "no-capabilities", "no-new-privs", "seccomp", "jailed-namespaces", "sandbox", "disk-owner"})
      r.skip(rule, "not running");
  }
  network_rules(r, config, domain, f, f.vm.process.has_value());
  vnc_rules(r, config, domain, f.vm.process ? &*f.vm.process : nullptr);
  return r.take();
}

std::vector<Finding> audit_host(const HostConfig& config, const std::optional<HostFacts>& host, const LocalFacts& local) {
  Report r("");
  if (!host) {
    for (const char* rule : {"stale-taps", "stale-chains", "stale-journals", "stale-udev-rules", "bridge-address"})
      r.skip(rule, "no VM is defined, so root was not asked");
  } else {
    std::set<std::string> live, live_taps;
    for (const LiveVm& l : host->live) {
      live.insert(l.name);
      live_taps.insert(l.taps.begin(), l.taps.end());
    }
    std::vector<std::string> taps, chains, journals;
    for (const TunFacts& t : host->taps)
      if (!live_taps.count(t.name))
        taps.push_back("tap '" + t.name + "' of uid " + std::to_string(t.owner) + (t.master.empty() ? "" : " on bridge '" + t.master + "'"));
    r.judge("stale-taps", taps, "every tap of a VM uid belongs to a running VM",
            "vmlaunch-helper cleanup NAME for the VM whose tap it is (or ip link delete TAP)");
    for (const std::string& c : host->nft.vm_chains)
      if (!live.count(c.substr(3))) chains.push_back("chain '" + c + "'");
    for (const auto& [tap, target] : host->nft.tap_map)
      if (!live_taps.count(tap)) chains.push_back("map element '" + tap + "' -> '" + target + "'");
    r.judge("stale-chains", chains, "every chain and map element belongs to a running VM",
            "vmlaunch-helper cleanup NAME for the VM they belong to");
    for (const std::string& j : host->journals)
      if (!live.count(j)) journals.push_back("VM '" + j + "' is not running and has a disk journal");
    r.judge("stale-journals", journals, "no disk journal of a stopped VM",
            "vmlaunch-helper cleanup NAME: it gives the journal's disks back to their owners");
    std::vector<std::string> rules;
    for (const std::string& u : host->udev_rules)
      if (!live.count(u)) rules.push_back("VM '" + u + "' is not running and has a udev rule");
    r.judge("stale-udev-rules", rules, "no udev rule of a stopped VM",
            "vmlaunch-helper cleanup NAME: it removes the rule that keeps the VM's block disks its uid's");
    std::vector<std::string> addresses;
    for (const BridgeFacts& b : host->bridges)
      for (const std::string& a : b.addresses) addresses.push_back("zone bridge '" + b.name + "' has address " + a);
    r.judge("bridge-address", addresses, "no zone bridge has a host address",
            "ip address flush dev BRIDGE, and configure it without addresses (LinkLocalAddressing=no in systemd-networkd)");
  }
  std::vector<std::string> socket;
  const FileFacts& s = local.control_socket;
  if (!s.exists) socket.push_back("'" + config.control_socket() + "' does not exist");
  else {
    if (!S_ISSOCK(s.mode)) socket.push_back("'" + config.control_socket() + "' is not a socket");
    if (s.uid != local.daemon_uid) socket.push_back("'" + config.control_socket() + "' is owned by uid " + std::to_string(s.uid) + ", not the daemon's");
  }
  const FileFacts& d = local.runtime_dir;
  if (d.exists && (d.uid != 0 || (d.mode & 0002) || !(d.mode & S_ISVTX)))
    socket.push_back("'" + config.runtime_dir + "' is uid " + std::to_string(d.uid) + " mode " + octal(d.mode) +
                     " (want root's, 1775): others could replace the control socket");
  r.judge("control-socket", socket, "the daemon's socket, in a directory only root and the daemon change",
          "chown root " + config.runtime_dir + " && chmod 1775 " + config.runtime_dir + ", then restart vmlaunchd");
  if (config.tls.listen.empty()) {
    r.pass("tls-listener", "off");
  } else if (!local.tls_key.exists) {
    r.fail("tls-listener", "the key '" + config.tls.key + "' cannot be read", "make tls.key the daemon user's file, mode 0600");
  } else if (local.tls_key.mode & 077) {
    r.fail("tls-listener", "the key '" + config.tls.key + "' has mode " + octal(local.tls_key.mode),
           "chmod 0600 " + config.tls.key);
  } else {
    r.pass("tls-listener", "listens on " + config.tls.listen + ", key mode " + octal(local.tls_key.mode));
  }
  return r.take();
}

std::string findings_to_json(const std::vector<Finding>& findings) {
  nlohmann::json list = nlohmann::json::array();
  int counts[3] = {0, 0, 0};
  for (const Finding& f : findings) {
    ++counts[static_cast<int>(f.verdict)];
    list.push_back({{"rule", f.rule}, {"vm", f.vm}, {"verdict", verdict_name(f.verdict)}, {"evidence", f.evidence}, {"fix", f.fix}});
  }
  return nlohmann::json{{"findings", list}, {"passed", counts[0]}, {"failed", counts[1]}, {"skipped", counts[2]}}.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace vl
