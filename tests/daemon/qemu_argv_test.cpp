#include "daemon/qemu_argv.h"

#include <doctest/doctest.h>

#include <algorithm>

#include "daemon/shell_words.h"

namespace {

constexpr char kRoot[] = "/var/cache/vmlaunch/embed/0";

vl::Domain test_domain(int nics = 1, bool vnc = true) {
  std::string xml = "<domain type='qemu'><name>web1</name><devices>"
                    "<emulator>/usr/bin/qemu-system-x86_64</emulator>";
  for (int i = 0; i < nics; ++i)
    xml += "<interface type='bridge'><mac address='52:54:00:00:00:0" + std::to_string(i + 1) +
           "'/><source bridge='br0'/></interface>";
  if (vnc) xml += "<graphics type='vnc' passwd='abc'/>";
  xml += "<serial type='pty'/></devices></domain>";
  auto d = vl::parse_domain(xml, "t.xml");
  REQUIRE_MESSAGE(d.ok(), (d.ok() ? std::string() : d.error().context));
  return std::move(d).value();
}

// A command line shaped like libvirt 9's dry run, with its quoting.
std::string native_line(std::string extra = "") {
  return std::string("LC_ALL=C PATH=/usr/bin HOME=/root LD_PRELOAD=/evil.so XDG_CACHE_HOME=") + kRoot +
         "/lib/qemu/domain--1-web1/.cache /usr/bin/qemu-system-x86_64 -name guest=web1,debug-threads=on -S "
         "-object '{\"qom-type\":\"secret\",\"id\":\"masterKey0\",\"format\":\"raw\",\"file\":\"" +
         kRoot + "/lib/qemu/domain--1-web1/master-key.aes\"}' "
         "-machine pc-i440fx-7.2,usb=off -accel tcg -m 64 -no-user-config -nodefaults "
         "-chardev socket,id=charmonitor,path=" + kRoot + "/lib/qemu/domain--1-web1/monitor.sock,server=on,wait=off "
         "-mon chardev=charmonitor,id=monitor,mode=control -no-shutdown "
         "-blockdev '{\"driver\":\"file\",\"filename\":\"/srv/it'\\''s a \\\"disk\\\", $1.img\",\"node-name\":\"s\"}' "
         "-netdev '{\"type\":\"tap\",\"fd\":\"5\",\"id\":\"hostnet0\"}' "
         "-device '{\"driver\":\"virtio-net-pci\",\"netdev\":\"hostnet0\",\"mac\":\"52:54:00:00:00:01\"}' "
         "-chardev pty,id=charserial0 "
         "-vnc 127.0.0.1:0,password=on,audiodev=audio1 " + extra +
         "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny -msg timestamp=on";
}

constexpr char kVncSocket[] = "/run/vmlaunch/vnc/web1/vnc.sock";

// `d` as the daemon has it: its VNC socket set from the configuration (resolve_vnc).
vl::Result<vl::Plan> rewrite(const std::string& line, vl::Domain d) {
  if (d.vnc && d.vnc->socket.empty()) d.vnc->socket = kVncSocket;
  auto words = vl::split_shell_words(line);
  REQUIRE_MESSAGE(words.ok(), (words.ok() ? std::string() : words.error().context));
  return vl::rewrite_native_argv(*words, d, kRoot);
}

bool contains(const std::vector<std::string>& v, std::string_view w) {
  return std::find(v.begin(), v.end(), w) != v.end();
}

}  // namespace

TEST_SUITE("daemon/qemu_argv") {
  TEST_CASE("keyval split and join undo and redo the ',,' escape") {
    CHECK(vl::split_keyval("socket,id=x,path=/a,,b") == std::vector<std::string>{"socket", "id=x", "path=/a,b"});
    CHECK(vl::join_keyval({"file", "path=/a,b"}) == "file,path=/a,,b");
    CHECK(vl::split_keyval(",,,") == std::vector<std::string>{",", ""});
    CHECK(vl::split_keyval("").empty());
  }

  TEST_CASE("libvirt's dry run becomes an exec-ready plan") {
    auto plan = rewrite(native_line(), test_domain());
    REQUIRE_MESSAGE(plan.ok(), (plan.ok() ? std::string() : plan.error().context));
    const auto& argv = plan->argv;
    CHECK(argv.front() == "/usr/bin/qemu-system-x86_64");
    // The environment is gone, and with it LD_PRELOAD.
    for (const auto& w : argv) {
      CHECK(w.find("LD_PRELOAD") == std::string::npos);
      CHECK(w.find(kRoot) == std::string::npos);
      CHECK(w.find("masterKey0") == std::string::npos);
    }
    CHECK(contains(argv, "socket,id=charmonitor,fd=3,server=on,wait=off"));
    CHECK(contains(argv, "{\"type\":\"tap\",\"fd\":\"4\",\"id\":\"hostnet0\"}"));
    // VNC on the VM's own Unix socket: TCP would reach nobody from its network namespace.
    CHECK(contains(argv, "unix:/run/vmlaunch/vnc/web1/vnc.sock,password=on,audiodev=audio1"));
    // Paths with quotes, commas, spaces and '$' pass through untouched.
    CHECK(contains(argv, "{\"driver\":\"file\",\"filename\":\"/srv/it's a \\\"disk\\\", $1.img\",\"node-name\":\"s\"}"));
    CHECK(contains(argv, "-S"));
    CHECK(contains(argv, "-no-shutdown"));
    CHECK_FALSE(contains(argv, "-sandbox"));  // the helper appends its own
    // The serial pty becomes root's console socket, logged through root's pipe (fd set 16).
    CHECK(contains(argv, "socket,id=charserial0,fd=15,server=on,wait=off,logfile=/dev/fdset/16,logappend=on"));
    CHECK(contains(argv, "fd=16,set=16"));
    CHECK_FALSE(contains(argv, "pty,id=charserial0"));
    REQUIRE(plan->fds.size() == 4);
    CHECK(plan->fds[0] == vl::FdSlot{vl::FdSlot::Kind::kMonitor, 3, -1});
    CHECK(plan->fds[1] == vl::FdSlot{vl::FdSlot::Kind::kTap, 4, 0});
    CHECK(plan->fds[2] == vl::FdSlot{vl::FdSlot::Kind::kSerial, 15, -1});
    CHECK(plan->fds[3] == vl::FdSlot{vl::FdSlot::Kind::kSerialLog, 16, -1});
    REQUIRE(plan->vnc);
    CHECK(plan->vnc->socket == kVncSocket);
    CHECK(plan->vnc->has_password);
    CHECK(plan->serial_ptys == 1);
  }

  TEST_CASE("with VNC over TLS on, -vnc names a tls-creds-x509 object in the VM's own directory, just before it") {
    vl::Domain d = test_domain();
    d.vnc->tls_dir = "/run/vmlaunch/vnc-tls/web1";
    d.vnc->tls_verify_client = true;
    auto plan = rewrite(native_line(), d);
    REQUIRE_MESSAGE(plan.ok(), (plan.ok() ? std::string() : plan.error().context));
    const auto& argv = plan->argv;
    auto vnc = std::find(argv.begin(), argv.end(), "-vnc");
    REQUIRE(vnc != argv.end());
    CHECK(vnc[1] == "unix:/run/vmlaunch/vnc/web1/vnc.sock,password=on,audiodev=audio1,tls-creds=vnc-tls-creds0");
    REQUIRE(vnc - argv.begin() >= 2);
    CHECK(vnc[-2] == "-object");
    CHECK(vnc[-1] == R"({"qom-type":"tls-creds-x509","id":"vnc-tls-creds0","dir":"/run/vmlaunch/vnc-tls/web1",)"
                     R"("endpoint":"server","verify-peer":true})");
    CHECK(std::count(argv.begin(), argv.end(), "-object") == 1);  // libvirt's master key is still dropped
  }

  TEST_CASE("with VNC over TLS off, -vnc stays clear text and no credentials object is added") {
    auto plan = rewrite(native_line(), test_domain());
    REQUIRE(plan.ok());
    CHECK(contains(plan->argv, "unix:/run/vmlaunch/vnc/web1/vnc.sock,password=on,audiodev=audio1"));
    CHECK_FALSE(contains(plan->argv, "-object"));
  }

  TEST_CASE("libvirt's socket for <listen type='socket'> (inside the conversion root) becomes the VM's own socket") {
    std::string line = native_line();
    line.replace(line.find("-vnc 127.0.0.1:0"), 16, "-vnc unix:" + std::string(kRoot) + "/lib/qemu/domain--1-web1/vnc.sock");
    auto plan = rewrite(line, test_domain());
    REQUIRE_MESSAGE(plan.ok(), (plan.ok() ? std::string() : plan.error().context));
    CHECK(contains(plan->argv, "unix:/run/vmlaunch/vnc/web1/vnc.sock,password=on,audiodev=audio1"));
  }

  TEST_CASE("a second serial console chardev is refused, not given the console's fds twice") {
    auto plan = rewrite(native_line("-chardev pty,id=charserial0 "), test_domain());
    REQUIRE_FALSE(plan.ok());
    CHECK(plan.error().context.find("two serial console chardevs") != std::string::npos);
  }

  TEST_CASE("a path that merely contains 'keyid' is not mistaken for a secret reference") {
    std::string line = native_line("-blockdev '{\"driver\":\"file\",\"filename\":\"/srv/keyid-backup.img\",\"node-name\":\"k\"}' ");
    auto plan = rewrite(line, test_domain());
    CHECK_MESSAGE(plan.ok(), (plan.ok() ? "" : plan.error().context));
  }

  TEST_CASE("-S and -no-shutdown are ensured, and libvirt's -sandbox is left to the helper") {
    std::string line = native_line();
    for (std::string drop : {" -S", " -no-shutdown", " -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"})
      line.erase(line.find(drop), drop.size());
    auto plan = rewrite(line, test_domain());
    REQUIRE_MESSAGE(plan.ok(), (plan.ok() ? std::string() : plan.error().context));
    CHECK(contains(plan->argv, "-S"));
    CHECK(contains(plan->argv, "-no-shutdown"));
    CHECK_FALSE(contains(plan->argv, "-sandbox"));
  }

  TEST_CASE("a qcow2 node never follows the backing file its image header names") {
    std::string line = native_line(
        "-blockdev '{\"node-name\":\"f\",\"read-only\":false,\"driver\":\"qcow2\",\"file\":\"s\"}' "
        "-blockdev '{\"node-name\":\"r\",\"driver\":\"raw\",\"file\":\"t\"}' ");
    auto plan = rewrite(line, test_domain());
    REQUIRE_MESSAGE(plan.ok(), (plan.ok() ? std::string() : plan.error().context));
    CHECK(contains(plan->argv, "{\"node-name\":\"f\",\"read-only\":false,\"driver\":\"qcow2\",\"file\":\"s\",\"backing\":null}"));
    CHECK(contains(plan->argv, "{\"node-name\":\"r\",\"driver\":\"raw\",\"file\":\"t\"}"));
    // A declared chain keeps libvirt's node reference (the allowlist checks it against the XML).
    std::string layered = "{\"node-name\":\"f\",\"driver\":\"qcow2\",\"file\":\"s\",\"backing\":\"b\"}";
    auto chain = rewrite(native_line("-blockdev '" + layered + "' "), test_domain());
    REQUIRE_MESSAGE(chain.ok(), (chain.ok() ? std::string() : chain.error().context));
    CHECK(contains(chain->argv, layered));
  }

  TEST_CASE("unsafe or unusable command lines are refused with a reason") {
    struct Case {
      std::string line;
      const char* expected;
    };
    std::string root = kRoot;
    const Case cases[] = {
        {native_line("-chardev socket,id=charchannel0,path=" + root + "/ch.sock,server=on,wait=off "),
         "not supported"},
        {native_line("-add-fd '{\"file\":\"" + root + "/x\"}' "), "conversion root"},
        {native_line("-object '{\"qom-type\":\"secret\",\"id\":\"sec0\",\"data\":\"x\"}' "), "secret object 'sec0'"},
        {native_line("-blockdev '{\"driver\":\"luks\",\"key-secret\":\"x\",\"keyid\":\"masterKey0\"}' "), "references a secret"},
        {native_line("-netdev '{\"type\":\"tap\",\"fd\":\"6\",\"id\":\"hostnet0\"}' "), "appears twice"},
        {native_line("-netdev '{\"type\":\"tap\",\"fds\":\"6:7\",\"id\":\"hostnet1\"}' "), "key 'fds'"},
        {native_line("-netdev '{\"type\":\"tap\",\"fd\":\"6\",\"id\":\"hostnet1\",\"script\":\"/x\"}' "), "key 'script'"},
        {native_line("-netdev '{\"type\":\"tap\",\"fd\":\"6\",\"id\":\"hostnet1\",\"vhost\":true}' "), "vhost-net"},
        {native_line("-netdev '{\"type\":\"user\",\"id\":\"hostnet1\"}' "), "netdev type 'user'"},
        {native_line("-netdev tap,fd=6,id=hostnet1 "), "non-JSON"},
        {native_line("stray "), "non-option word"},
        {native_line("-vnc 127.0.0.1:1,websocket=5700 "), "VNC option 'websocket'"},
    };
    for (const auto& c : cases) {
      CAPTURE(c.line);
      auto plan = rewrite(c.line, test_domain());
      REQUIRE_FALSE(plan.ok());
      CAPTURE(plan.error().context);
      CHECK(plan.error().context.find(c.expected) != std::string::npos);
    }
  }

  TEST_CASE("a word that is not UTF-8 is refused: the plan travels as JSON") {
    // Found by fuzz/qemu_argv_fuzzer: such a word made the plan's JSON serialization abort
    // the daemon (plan cache entries are read back through this rewrite, too).
    for (std::string bad : {"\xff", "\xc3", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80"}) {
      CAPTURE(bad);
      auto plan = rewrite(native_line("-name guest=web1" + bad + " "), test_domain());
      REQUIRE_FALSE(plan.ok());
      CHECK(plan.error().context.find("not valid UTF-8") != std::string::npos);
    }
    auto accented = rewrite(native_line("-name guest=web1,caf\xc3\xa9,\xe2\x82\xac,\xf0\x9f\x92\xbe "), test_domain());
    CHECK_MESSAGE(accented.ok(), (accented.ok() ? "" : accented.error().context));
  }

  TEST_CASE("a JSON member of the wrong type is refused, not an abort of the daemon") {
    // Found by fuzz/qemu_argv_fuzzer: typed reads of these members aborted the process.
    const std::pair<std::string, const char*> cases[] = {
        {"-object '{\"qom-type\":\"secret\",\"id\":435456}' ", "'id' must be a string"},
        {"-object '{\"qom-type\":[\"secret\"],\"id\":\"x\"}' ", "'qom-type' must be a string"},
        {"-netdev '{\"type\":1,\"fd\":\"6\",\"id\":\"hostnet1\"}' ", "'type' must be a string"},
        {"-netdev '{\"type\":\"tap\",\"fd\":\"6\",\"id\":{}}' ", "'id' must be a string"},
        {"-blockdev '{\"driver\":false,\"node-name\":\"x\"}' ", "'driver' must be a string"},
    };
    for (const auto& [extra, expected] : cases) {
      CAPTURE(extra);
      auto plan = rewrite(native_line(extra), test_domain());
      REQUIRE_FALSE(plan.ok());
      CAPTURE(plan.error().context);
      CHECK(plan.error().context.find(expected) != std::string::npos);
    }
  }

  TEST_CASE("the command line must match the domain") {
    auto two_nics = rewrite(native_line(), test_domain(2));
    REQUIRE_FALSE(two_nics.ok());
    CHECK(two_nics.error().context.find("1 tap netdevs for 2 interfaces") != std::string::npos);
    std::string other = native_line();
    other.replace(other.find("/usr/bin/qemu-system-x86_64"), 27, "/usr/bin/qemu-system-ppc64");
    auto wrong_emulator = rewrite(other, test_domain());
    REQUIRE_FALSE(wrong_emulator.ok());
    CHECK(wrong_emulator.error().context.find("runs '/usr/bin/qemu-system-ppc64'") != std::string::npos);
    std::string no_monitor = native_line();
    no_monitor.replace(no_monitor.find("id=charmonitor"), 14, "id=charmonitoX");
    CHECK_FALSE(rewrite(no_monitor, test_domain()).ok());
  }

  TEST_CASE("an interface's PCI address must name a bus of the command line and a free slot") {
    auto with_address = [](std::string address) {
      std::string xml = "<domain type='qemu'><name>web1</name><devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
                        "<interface type='bridge'><mac address='52:54:00:00:00:01'/><source bridge='br0'/>" +
                        address + "</interface><graphics type='vnc' passwd='abc'/><serial type='pty'/></devices></domain>";
      auto d = vl::parse_domain(xml, "t.xml");
      REQUIRE_MESSAGE(d.ok(), (d.ok() ? std::string() : d.error().context));
      return std::move(d).value();
    };
    auto no_bus = rewrite(native_line(), with_address("<address type='pci' bus='2' slot='5'/>"));
    REQUIRE_FALSE(no_bus.ok());
    CHECK_MESSAGE(no_bus.error().message().find("PCI bus 2 is not a controller of this domain") != std::string::npos,
                  no_bus.error().message());

    std::string taken = "-device '{\"driver\":\"VGA\",\"id\":\"video0\",\"bus\":\"pci.0\",\"addr\":\"0x5\"}' ";
    auto clash = rewrite(native_line(taken), with_address("<address type='pci' bus='0' slot='5'/>"));
    REQUIRE_FALSE(clash.ok());
    CHECK_MESSAGE(clash.error().message().find("two devices at PCI address 0x5 of bus 'pci.0'") != std::string::npos,
                  clash.error().message());

    auto fine = rewrite(native_line(taken), with_address("<address type='pci' bus='0' slot='6'/>"));
    REQUIRE_MESSAGE(fine.ok(), fine.error().message());
    CHECK(contains(fine->argv, "{\"driver\":\"virtio-net-pci\",\"netdev\":\"hostnet0\",\"mac\":\"52:54:00:00:00:01\","
                               "\"bus\":\"pci.0\",\"addr\":\"0x6\"}"));
  }
}

TEST_SUITE("daemon/qemu_argv: guest agent channel") {
  vl::Domain agent_domain() {
    auto d = vl::parse_domain("<domain type='qemu'><name>web1</name><devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
                              "<interface type='bridge'><mac address='52:54:00:00:00:01'/><source bridge='br0'/></interface>"
                              "<graphics type='vnc' passwd='abc'/><serial type='pty'/>"
                              "<channel type='unix'><source mode='bind'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
                              "</devices></domain>",
                              "t.xml");
    REQUIRE_MESSAGE(d.ok(), (d.ok() ? std::string() : d.error().context));
    return std::move(d).value();
  }

  TEST_CASE("libvirt's agent socket in the conversion root becomes the helper's socket on fd 14") {
    std::string root = kRoot;
    auto plan = rewrite(native_line("-chardev socket,id=charchannel0,path=" + root +
                                    "/lib/qemu/channel/target/domain--1-web1/org.qemu.guest_agent.0,server=on,wait=off "),
                        agent_domain());
    REQUIRE_MESSAGE(plan.ok(), plan.error().message());
    CHECK(contains(plan->argv, "socket,id=charchannel0,fd=14,server=on,wait=off"));
    CHECK(std::count(plan->fds.begin(), plan->fds.end(), vl::FdSlot{vl::FdSlot::Kind::kAgent, 14, -1}) == 1);
  }

  TEST_CASE("a domain with the agent needs its chardev; one without keeps refusing socket chardevs") {
    auto missing = rewrite(native_line(), agent_domain());
    REQUIRE_FALSE(missing.ok());
    CHECK(missing.error().message().find("no guest agent chardev") != std::string::npos);
    auto foreign = rewrite(native_line("-chardev socket,id=charchannel0,path=/tmp/a.sock,server=on,wait=off "), test_domain());
    REQUIRE_FALSE(foreign.ok());
    CHECK(foreign.error().message().find("not supported") != std::string::npos);
  }

  TEST_CASE("an encrypted disk gets QEMU's LUKS layer and a secret read from the disk-secret fd, never inline") {
    for (std::string format : {"raw", "qcow2"}) {
      CAPTURE(format);
      auto d = vl::parse_domain(
          "<domain type='qemu'><name>web1</name><devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
          "<disk type='file' device='disk'><driver name='qemu' type='" + format + "'/><source file='/srv/enc.img'/>"
          "<target dev='vda'/><encryption format='luks'><secret type='passphrase' usage='web1'/></encryption></disk>"
          "<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/srv/plain.img'/><target dev='vdb'/></disk>"
          "<interface type='bridge'><mac address='52:54:00:00:00:01'/><source bridge='br0'/></interface>"
          "<graphics type='vnc' passwd='abc'/><serial type='pty'/></devices></domain>",
          "t.xml");
      REQUIRE_MESSAGE(d.ok(), (d.ok() ? std::string() : d.error().context));
      // libvirt's output for the XML without <encryption> (converter.h): plain format nodes.
      std::string disks =
          "-blockdev '{\"driver\":\"file\",\"filename\":\"/srv/plain.img\",\"node-name\":\"libvirt-2-storage\"}' "
          "-blockdev '{\"node-name\":\"libvirt-2-format\",\"read-only\":false,\"driver\":\"raw\",\"file\":\"libvirt-2-storage\"}' "
          "-blockdev '{\"driver\":\"file\",\"filename\":\"/srv/enc.img\",\"node-name\":\"libvirt-1-storage\"}' "
          "-blockdev '{\"node-name\":\"libvirt-1-format\",\"read-only\":false,\"driver\":\"" + format +
          "\",\"file\":\"libvirt-1-storage\"}' ";
      auto plan = rewrite(native_line(disks), *d);
      REQUIRE_MESSAGE(plan.ok(), (plan.ok() ? std::string() : plan.error().context));
      const auto& argv = plan->argv;
      std::string unlocked = format == "raw"
          ? R"({"node-name":"libvirt-1-format","read-only":false,"driver":"luks","file":"libvirt-1-storage","key-secret":"disk0-secret"})"
          : R"({"node-name":"libvirt-1-format","read-only":false,"driver":"qcow2","file":"libvirt-1-storage","backing":null,)"
            R"("encrypt":{"format":"luks","key-secret":"disk0-secret"}})";
      auto node = std::find(argv.begin(), argv.end(), unlocked);
      REQUIRE(node != argv.end());
      // The secret object just before the node it unlocks, reading the plan's fd 17.
      CHECK(*(node - 3) == "-object");
      CHECK(*(node - 2) == vl::disk_secret_object(0, vl::kDiskSecretFd));
      CHECK(vl::disk_secret_object(0, vl::kDiskSecretFd) ==
            R"({"qom-type":"secret","id":"disk0-secret","format":"raw","file":"/proc/self/fd/17"})");
      CHECK(contains(argv, R"({"node-name":"libvirt-2-format","read-only":false,"driver":"raw","file":"libvirt-2-storage"})"));
      CHECK(std::count(plan->fds.begin(), plan->fds.end(), vl::FdSlot{vl::FdSlot::Kind::kDiskSecret, 17, -1}) == 1);
      for (const auto& w : argv) CHECK(w.find("\"data\"") == std::string::npos);
      // The plan travels as JSON to the helper; the slot survives it.
      auto back = vl::plan_from_json(vl::plan_to_json(*plan, false));
      REQUIRE(back.ok());
      CHECK(back->fds == plan->fds);

      // libvirt's output without the encrypted disk's node is refused: it would not start.
      std::string missing = disks.substr(0, disks.find("-blockdev '{\"driver\":\"file\",\"filename\":\"/srv/enc.img\""));
      auto refused = rewrite(native_line(missing), *d);
      REQUIRE_FALSE(refused.ok());
      CHECK(refused.error().context.find("does not open encrypted disk 'vda'") != std::string::npos);
    }
  }

  TEST_CASE("a domain without encrypted disks gets no secret and no disk-secret fd") {
    auto plan = rewrite(native_line(), test_domain());
    REQUIRE(plan.ok());
    for (const auto& s : plan->fds) CHECK(s.kind != vl::FdSlot::Kind::kDiskSecret);
    for (const auto& w : plan->argv) CHECK(w.find("\"secret\"") == std::string::npos);
  }
}
