// The audit rules (daemon/audit.h) on fact fixtures: a healthy VM and host, each broken one way.
#include "daemon/audit.h"

#include <doctest/doctest.h>
#include <sys/stat.h>

#include <nlohmann/json.hpp>

namespace {

constexpr uint32_t kUid = 70005;

vl::HostConfig config() {
  vl::HostConfig c;
  c.zones = {{"dmz", "br-dmz"}, {"lan", "br-lan"}};
  return c;
}

vl::Domain domain(const std::string& graphics = "", const std::string& bridge = "br-dmz", const std::string& zone = "dmz") {
  std::string xml =
      "<domain type='qemu'><name>web1</name><memory unit='MiB'>64</memory>"
      "<metadata><vl:vm xmlns:vl='urn:vmlaunch:domain:1'><vl:zone>" + zone + "</vl:zone></vl:vm></metadata>"
      "<os><type arch='x86_64' machine='pc'>hvm</type></os>"
      "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
      "<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/var/lib/vmlaunch/images/web1.img'/>"
      "<target dev='vda' bus='virtio'/></disk>"
      "<interface type='bridge'><mac address='52:54:00:12:34:56'/><source bridge='" + bridge + "'/>"
      "<model type='virtio'/></interface>" + graphics + "</devices></domain>";
  auto d = vl::parse_domain(xml, "web1.xml");
  REQUIRE_MESSAGE(d.ok(), d.error().message());
  return *d;
}

// What root reports of a healthy, jailed, running web1.
vl::AuditFacts healthy() {
  vl::AuditFacts f;
  f.vm.name = "web1";
  f.vm.running = true;
  f.vm.uid = kUid;
  vl::ProcessFacts p;
  p.pid = 4242;
  std::string uid = std::to_string(kUid);
  p.status = {{"Uid", uid + "\t" + uid + "\t" + uid + "\t" + uid}, {"Gid", uid + "\t" + uid + "\t" + uid + "\t" + uid},
              {"Groups", "993"}, {"CapInh", "0000000000000000"}, {"CapPrm", "0000000000000000"},
              {"CapEff", "0000000000000000"}, {"CapBnd", "0000000000000000"}, {"CapAmb", "0000000000000000"},
              {"NoNewPrivs", "1"}, {"Seccomp", "2"}};
  p.net_ns = 101, p.mnt_ns = 102, p.host_net_ns = 1, p.host_mnt_ns = 2;
  p.host_ns_of = "PID 1";
  p.argv = {"/usr/bin/qemu-system-x86_64", "-name", "guest=web1", "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"};
  f.vm.process = p;
  f.vm.taps = {{"web1-0", true, "br-dmz", false, {"52:54:00:12:34:56"}}};
  f.vm.disks = {{"/var/lib/vmlaunch/images/web1.img", true, kUid, S_IFREG | 0600}};
  f.host.live = {{"web1", kUid, {"web1-0"}}};
  f.host.taps = {{"web1-0", kUid, "br-dmz"}};
  f.host.nft.table = true;
  f.host.nft.tap_hooks = {"prerouting", "input"};
  f.host.nft.tap_map = {{"web1-0", "vm-web1"}};
  f.host.nft.vm_chains = {"vm-web1"};
  f.host.nft.mac_rules = {{"vm-web1", "web1-0", "52:54:00:12:34:56"}};
  f.host.journals = {"web1"};
  f.host.bridges = {{"br-dmz", true, {}}, {"br-lan", true, {}}};
  return f;
}

vl::LocalFacts local() {
  vl::LocalFacts l;
  l.daemon_uid = 999;
  l.control_socket = {true, 999, 999, S_IFSOCK | 0666};
  l.runtime_dir = {true, 0, 999, S_IFDIR | 01775};
  return l;
}

const vl::Finding& finding(const std::vector<vl::Finding>& all, const std::string& rule) {
  for (const vl::Finding& f : all)
    if (f.rule == rule) return f;
  FAIL("no finding for rule " << rule);
  static vl::Finding none;
  return none;
}

std::vector<std::string> failed(const std::vector<vl::Finding>& all) {
  std::vector<std::string> rules;
  for (const vl::Finding& f : all)
    if (f.verdict == vl::Verdict::kFail) rules.push_back(f.rule);
  return rules;
}

void check_fails(const std::vector<vl::Finding>& all, const std::string& rule, const std::string& evidence) {
  CHECK(failed(all) == std::vector<std::string>{rule});
  const vl::Finding& f = finding(all, rule);
  CHECK(f.evidence == evidence);
  CHECK_FALSE(f.fix.empty());
}

}  // namespace

TEST_SUITE("daemon/audit") {
  TEST_CASE("a healthy, jailed VM on a clean host passes every rule") {
    auto vm = vl::audit_vm(config(), domain(), healthy());
    auto host = vl::audit_host(config(), healthy().host, local());
    CHECK(failed(vm).empty());
    CHECK(failed(host).empty());
    CHECK(vm.size() == 12);
    CHECK(host.size() == 7);
    for (const auto& f : vm) CHECK_MESSAGE(f.verdict == vl::Verdict::kPass, f.rule);
  }

  TEST_CASE("each VM rule fails with its evidence") {
    vl::AuditFacts f = healthy();
    SUBCASE("own-uid: root") {
      f.vm.process->status["Uid"] = "0\t0\t0\t0";
      check_fails(vl::audit_vm(config(), domain(), f), "own-uid", "the emulator runs as uid 0 0 0 0, not the VM's uid 70005");
    }
    SUBCASE("own-uid: shared with another VM") {
      f.host.live.push_back({"web2", kUid, {"web2-0"}});
      check_fails(vl::audit_vm(config(), domain(), f), "own-uid", "VM 'web2' runs as the same uid 70005");
    }
    SUBCASE("no-capabilities") {
      f.vm.process->status["CapBnd"] = "000001ffffffffff";
      check_fails(vl::audit_vm(config(), domain(), f), "no-capabilities", "CapBnd 000001ffffffffff");
    }
    SUBCASE("no-new-privs") {
      f.vm.process->status["NoNewPrivs"] = "0";
      check_fails(vl::audit_vm(config(), domain(), f), "no-new-privs", "NoNewPrivs 0");
    }
    SUBCASE("seccomp") {
      f.vm.process->status["Seccomp"] = "0";
      check_fails(vl::audit_vm(config(), domain(), f), "seccomp", "Seccomp 0 (want 2, a filter)");
    }
    SUBCASE("jailed-namespaces") {
      f.vm.process->net_ns = f.vm.process->host_net_ns;
      check_fails(vl::audit_vm(config(), domain(), f), "jailed-namespaces", "network namespace 1 is the host's");
    }
    SUBCASE("jailed-namespaces, against the broker's where PID 1's are unreadable") {
      f.vm.process->mnt_ns = f.vm.process->host_mnt_ns;
      f.vm.process->host_ns_of = "the broker";
      check_fails(vl::audit_vm(config(), domain(), f), "jailed-namespaces", "mount namespace 2 is the broker's");
    }
    SUBCASE("sandbox") {
      f.vm.process->argv.resize(3);
      check_fails(vl::audit_vm(config(), domain(), f), "sandbox", "no '-sandbox on' in the running command line");
    }
    SUBCASE("disk-owner: mode") {
      f.vm.disks[0].mode = S_IFREG | 0644;
      check_fails(vl::audit_vm(config(), domain(), f), "disk-owner",
                  "'/var/lib/vmlaunch/images/web1.img' has mode 0644, not 0600");
    }
    SUBCASE("disk-owner: another VM's uid") {
      f.host.live.push_back({"web2", kUid + 1, {"web2-0"}});
      f.vm.disks[0].uid = kUid + 1;
      check_fails(vl::audit_vm(config(), domain(), f), "disk-owner",
                  "'/var/lib/vmlaunch/images/web1.img' is owned by uid 70006, VM 'web2''s, not the VM's uid 70005");
    }
    SUBCASE("nic-zone: tap on another bridge") {
      f.vm.taps[0].master = "br-lan";
      check_fails(vl::audit_vm(config(), domain(), f), "nic-zone", "tap 'web1-0' is on bridge 'br-lan', not 'br-dmz'");
    }
    SUBCASE("nic-zone: bridge of another zone than the metadata's") {
      f.vm.taps[0].master = "br-lan";
      check_fails(vl::audit_vm(config(), domain("", "br-lan", "dmz"), f), "nic-zone",
                  "NIC 0 is on zone 'lan', the metadata says 'dmz'");
    }
    SUBCASE("anti-spoofing: chain flushed") {
      f.host.nft.mac_rules.clear();
      check_fails(vl::audit_vm(config(), domain(), f), "anti-spoofing",
                  "chain 'vm-web1' has no rule dropping frames from 'web1-0' whose source is not 52:54:00:12:34:56");
    }
    SUBCASE("anti-spoofing: wrong MAC") {
      f.host.nft.mac_rules[0].mac = "52:54:00:12:34:57";
      check_fails(vl::audit_vm(config(), domain(), f), "anti-spoofing",
                  "chain 'vm-web1' has no rule dropping frames from 'web1-0' whose source is not 52:54:00:12:34:56");
    }
    SUBCASE("anti-spoofing: hooked only after learning") {
      f.host.nft.tap_hooks = {"forward", "input"};
      check_fails(vl::audit_vm(config(), domain(), f), "anti-spoofing", "no prerouting hook jumps through the @taps map");
    }
    SUBCASE("bridge-learning") {
      f.vm.taps[0].learning = true;
      check_fails(vl::audit_vm(config(), domain(), f), "bridge-learning", "bridge port 'web1-0' learns MACs");
    }
    SUBCASE("bridge-learning: the static entry gone") {
      f.vm.taps[0].static_macs.clear();
      check_fails(vl::audit_vm(config(), domain(), f), "bridge-learning",
                  "bridge port 'web1-0' has no static, sticky FDB entry for 52:54:00:12:34:56");
    }
    SUBCASE("vnc-listen: TCP beyond loopback, an emulator of an earlier version") {
      f.vm.process->argv.insert(f.vm.process->argv.end(), {"-vnc", "0.0.0.0:1,password=on"});
      check_fails(vl::audit_vm(config(), domain("<graphics type='vnc' autoport='yes'/>"), f), "vnc-listen",
                  "listens on TCP 0.0.0.0 without TLS");
    }
    SUBCASE("vnc-listen: another socket") {
      f.vm.process->argv.insert(f.vm.process->argv.end(), {"-vnc", "unix:/tmp/x.sock"});
      check_fails(vl::audit_vm(config(), domain("<graphics type='vnc' autoport='yes'/>"), f), "vnc-listen",
                  "listens on 'unix:/tmp/x.sock', not 'unix:" + config().vnc_socket_path(vl::VmName::parse("web1").value()) + "'");
    }
    SUBCASE("vnc-password") {
      check_fails(vl::audit_vm(config(), domain("<graphics type='vnc' autoport='yes' passwd='123456789'/>"), f),
                  "vnc-password", "the password has 9 characters; VNC uses only the first 8");
    }
  }

  TEST_CASE("VNC on the VM's socket passes, and TCP beyond loopback passes with TLS on") {
    vl::AuditFacts f = healthy();
    std::string socket = "unix:" + config().vnc_socket_path(vl::VmName::parse("web1").value());
    f.vm.process->argv.insert(f.vm.process->argv.end(), {"-vnc", socket + ",password=on"});
    auto own = vl::audit_vm(config(), domain("<graphics type='vnc' autoport='yes'/>"), f);
    CHECK(finding(own, "vnc-listen").verdict == vl::Verdict::kPass);
    CHECK(finding(own, "vnc-listen").evidence == "on the VM's Unix socket only");
    vl::HostConfig c = config();
    c.vnc.tls = true;
    f.vm.process->argv.back() = "0.0.0.0:1,tls-creds=vnc-tls-creds0";
    auto all = vl::audit_vm(c, domain("<graphics type='vnc' autoport='yes'/>"), f);
    CHECK(finding(all, "vnc-listen").verdict == vl::Verdict::kPass);
    CHECK(finding(all, "vnc-listen").evidence == "listens on TCP 0.0.0.0 with TLS");
  }

  TEST_CASE("a VM that is not running skips what needs its process, and is still judged on its definition") {
    vl::AuditFacts f = healthy();
    f.vm.running = false;
    f.vm.process.reset();
    f.vm.taps[0] = {"web1-0", false, "", false, {}};
    auto all = vl::audit_vm(config(), domain("<graphics type='vnc' autoport='yes'/>", "br-x"), f);
    for (const char* rule : {"own-uid", "no-capabilities", "no-new-privs", "seccomp", "jailed-namespaces", "sandbox",
                             "disk-owner", "anti-spoofing", "bridge-learning"}) {
      CHECK_MESSAGE(finding(all, rule).verdict == vl::Verdict::kSkip, rule);
      CHECK(finding(all, rule).evidence == "not running");
    }
    CHECK(failed(all) == std::vector<std::string>{"nic-zone"});
    CHECK(finding(all, "vnc-listen").evidence == "on the VM's Unix socket only (from its definition)");
    CHECK(finding(all, "nic-zone").evidence == "NIC 0 bridge 'br-x' is no declared zone's");
  }

  TEST_CASE("each host rule fails with its evidence") {
    vl::HostFacts h = healthy().host;
    vl::LocalFacts l = local();
    SUBCASE("stale-taps") {
      h.taps.push_back({"old-0", kUid + 9, "br-dmz"});
      check_fails(vl::audit_host(config(), h, l), "stale-taps", "tap 'old-0' of uid 70014 on bridge 'br-dmz'");
    }
    SUBCASE("stale-chains") {
      h.nft.vm_chains.push_back("vm-old");
      h.nft.tap_map["old-0"] = "vm-old";
      check_fails(vl::audit_host(config(), h, l), "stale-chains", "chain 'vm-old'; map element 'old-0' -> 'vm-old'");
    }
    SUBCASE("stale-journals") {
      h.journals.push_back("old");
      check_fails(vl::audit_host(config(), h, l), "stale-journals", "VM 'old' is not running and has a disk journal");
    }
    SUBCASE("stale-udev-rules") {
      h.udev_rules = {"web1", "old"};
      check_fails(vl::audit_host(config(), h, l), "stale-udev-rules", "VM 'old' is not running and has a udev rule");
    }
    SUBCASE("bridge-address") {
      h.bridges[1].addresses = {"192.0.2.1/24"};
      check_fails(vl::audit_host(config(), h, l), "bridge-address", "zone bridge 'br-lan' has address 192.0.2.1/24");
    }
    SUBCASE("control-socket: its directory open to everyone") {
      l.runtime_dir.mode = S_IFDIR | 0777;
      check_fails(vl::audit_host(config(), h, l), "control-socket",
                  "'/run/vmlaunch' is uid 0 mode 0777 (want root's, 1775): others could replace the control socket");
    }
    SUBCASE("control-socket: another owner") {
      l.control_socket.uid = 1000;
      check_fails(vl::audit_host(config(), h, l), "control-socket",
                  "'/run/vmlaunch/control.sock' is owned by uid 1000, not the daemon's");
    }
    SUBCASE("tls-listener: a key others may read") {
      vl::HostConfig c = config();
      c.tls.listen = "0.0.0.0:16514";
      l.tls_key = {true, 999, 999, S_IFREG | 0644};
      check_fails(vl::audit_host(c, h, l), "tls-listener", "the key '/etc/pki/vmlaunch/private/serverkey.pem' has mode 0644");
    }
  }

  TEST_CASE("with no VM inspected, root's host rules are skipped, the daemon's own still judged") {
    auto all = vl::audit_host(config(), std::nullopt, local());
    CHECK(finding(all, "stale-taps").verdict == vl::Verdict::kSkip);
    CHECK(finding(all, "control-socket").verdict == vl::Verdict::kPass);
  }

  TEST_CASE("the report counts verdicts") {
    auto all = vl::audit_vm(config(), domain(), healthy());
    all[0].verdict = vl::Verdict::kFail;
    auto j = nlohmann::json::parse(vl::findings_to_json(all));
    CHECK(j["failed"] == 1);
    CHECK(j["passed"] == 11);
    CHECK(j["skipped"] == 0);
    CHECK(j["findings"][0]["rule"] == "own-uid");
  }

  TEST_CASE("facts survive their JSON, and malformed facts are refused") {
    vl::AuditFacts f = healthy();
    f.vm.process->argv.push_back("guest=\xff");  // a command line is bytes, not always UTF-8
    auto back = vl::audit_facts_from_json(vl::audit_facts_to_json(f));
    REQUIRE(back.ok());
    CHECK(back->vm.process->argv.back() == "guest=\xef\xbf\xbd");
    CHECK(vl::findings_to_json(vl::audit_vm(config(), domain(), *back)) ==
          vl::findings_to_json(vl::audit_vm(config(), domain(), f)));
    CHECK(back->host.nft.mac_rules.size() == 1);
    CHECK_FALSE(vl::audit_facts_from_json("{}").ok());
    CHECK_FALSE(vl::audit_facts_from_json(R"({"vm": {"name": 1}, "host": {}})").ok());
    std::string text = vl::audit_facts_to_json(f);
    text.replace(text.find("\"running\":true"), 14, "\"running\":\"yes\"");
    CHECK_FALSE(vl::audit_facts_from_json(text).ok());
  }
}
