#include "common/domain.h"

#include <doctest/doctest.h>

#include <unistd.h>

#include <fstream>

#include "tests/fixtures/virt_install.h"

using vl::parse_domain;

namespace {

std::string domain_xml(std::string_view devices, std::string_view extra = "") {
  return std::string(R"(<domain type='qemu'>
  <name>web1</name>
  <uuid>6c0e0c8e-3f7a-4b0b-9d7e-1b2a3c4d5e6f</uuid>
  <memory unit='MiB'>64</memory>
)") + std::string(extra) + R"(  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
)" + std::string(devices) + "  </devices>\n</domain>\n";
}

constexpr std::string_view kNic = R"(    <interface type='bridge'>
      <mac address='52:54:00:12:34:56'/>
      <source bridge='br-dmz'/>
      <model type='virtio'/>
    </interface>
)";

std::string error_of(const std::string& xml) {
  auto r = parse_domain(xml, "web1.xml");
  REQUIRE_FALSE(r.ok());
  return r.error().context;
}

}  // namespace

TEST_SUITE("common/domain") {
  TEST_CASE("a typical domain is read completely") {
    auto r = parse_domain(domain_xml(std::string(kNic) + R"(
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/srv/images/web 1,a.img'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/vg0/web1-data'/>
      <target dev='vdb' bus='virtio'/>
      <shareable/>
    </disk>
    <disk type='file' device='cdrom'><target dev='hdc' bus='ide'/><readonly/></disk>
    <serial type='pty'><target port='0'/></serial>
    <graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1' passwd='secret12'/>
)", R"(  <metadata>
    <other:thing xmlns:other="urn:other">ignored</other:thing>
    <vl:vm xmlns:vl="urn:vmlaunch:domain:1">
      <vl:zone>dmz</vl:zone>
      <vl:autostart>yes</vl:autostart>
      <vl:start-order>20</vl:start-order>
    </vl:vm>
  </metadata>
)"), "web1.xml");
    REQUIRE_MESSAGE(r.ok(), r.error().context);
    CHECK(r->name.str() == "web1");
    CHECK(r->type == "qemu");
    CHECK(r->emulator == "/usr/bin/qemu-system-x86_64");
    REQUIRE(r->nics.size() == 1);
    CHECK(r->nics[0].mac.str() == "52:54:00:12:34:56");
    CHECK(r->nics[0].bridge == "br-dmz");
    CHECK(r->nics[0].model == "virtio");
    REQUIRE(r->disks.size() == 3);
    CHECK(r->disks[0].source == "/srv/images/web 1,a.img");
    CHECK(r->disks[0].format == "raw");
    CHECK(r->disks[1].kind == vl::Disk::Kind::kBlock);
    CHECK(r->disks[1].shareable);
    CHECK(r->disks[2].device == "cdrom");
    CHECK(r->disks[2].read_only);
    REQUIRE(r->vnc);
    CHECK(r->vnc->password == "secret12");
    CHECK(r->vnc->socket.empty());  // the configuration's, set by resolve_vnc
    CHECK(r->serial_ptys == 1);
    CHECK(r->meta.zone == "dmz");
    CHECK(r->meta.autostart);
    CHECK(r->meta.start_order == 20);
  }

  TEST_CASE("malformed XML names file and line") {
    std::string err = error_of("<domain type='qemu'>\n<name>x</name>\n<devices>\n</devicess>\n</domain>\n");
    CHECK(err.find("mismatch") != std::string::npos);
    CHECK(err.rfind("web1.xml:4: ", 0) == 0);
  }

  TEST_CASE("DTDs and entities are refused, external entities never loaded") {
    std::string xxe = "<?xml version='1.0'?>\n<!DOCTYPE domain [<!ENTITY x SYSTEM 'file:///etc/shadow'>]>\n"
                      "<domain type='qemu'><name>&x;</name></domain>\n";
    CHECK(error_of(xxe).find("DOCTYPE is not allowed") != std::string::npos);
    std::string billion = "<!DOCTYPE d [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;'>]><domain>&b;</domain>";
    CHECK(error_of(billion).find("DOCTYPE") != std::string::npos);
    CHECK(error_of("<domain type='qemu'><name>&undefined;</name></domain>").find("web1.xml:1:") == 0);
  }

  TEST_CASE("NUL bytes and invalid UTF-8 are refused") {
    std::string nul = domain_xml(kNic);
    nul.insert(20, 1, '\0');
    CHECK(error_of(nul).find("NUL byte") != std::string::npos);
    std::string bad = domain_xml(kNic);
    bad.replace(bad.find("web1"), 4, "we\xff\xfe");
    CHECK(error_of(bad).find("web1.xml:") == 0);
  }

  TEST_CASE("hostile or over-long names are refused") {
    std::string x = domain_xml(kNic);
    x.replace(x.find("<name>web1"), 10, "<name>../x");
    CHECK(error_of(x).find("invalid VM name '../x'") != std::string::npos);
    x = domain_xml(kNic);
    x.replace(x.find("<name>web1"), 10, "<name>abcdefghijklmnopq");
    CHECK(error_of(x).find("longer than 13") != std::string::npos);
  }

  TEST_CASE("MAC rules: required, unicast, unique") {
    std::string nomac = domain_xml("<interface type='bridge'><source bridge='br0'/></interface>\n");
    CHECK(error_of(nomac).find("needs a fixed MAC") != std::string::npos);
    std::string multicast = domain_xml(
        "<interface type='bridge'><mac address='01:00:5e:00:00:01'/><source bridge='br0'/></interface>\n");
    CHECK(error_of(multicast).find("multicast") != std::string::npos);
    std::string dup = domain_xml(std::string(kNic) + std::string(kNic));
    CHECK(error_of(dup).find("web1.xml:12: MAC 52:54:00:12:34:56 is used by two interfaces") != std::string::npos);
    std::string junk = domain_xml(
        "<interface type='bridge'><mac address='52:54:00:12:34'/><source bridge='br0'/></interface>\n");
    CHECK(error_of(junk).find("malformed") != std::string::npos);
  }

  TEST_CASE("constructs needing privileges vmlaunch does not grant are refused") {
    struct Case {
      std::string devices, extra, expected;
    };
    const Case cases[] = {
        {"<hostdev mode='subsystem' type='pci'/>\n", "", "device '<hostdev>' is not supported"},
        {"<interface type='direct'><mac address='52:54:00:00:00:01'/></interface>\n", "",
         "<interface type='direct'> is not supported"},
        {"<interface type='user'><mac address='52:54:00:00:00:01'/></interface>\n", "",
         "<interface type='user'> is not supported"},
        {"<filesystem type='mount'/>\n", "", "device '<filesystem>'"},
        {"<disk type='network'/>\n", "", "<disk type='network'>"},
        {"<disk type='file'><driver type='raw'/><source file='/x'/><iotune/></disk>\n", "", "<iotune>"},
        {"<disk type='file'><source file='/x'/></disk>\n", "", "probing formats is unsafe"},
        {"<disk type='file'><driver type='raw'/><source file='x.img'/></disk>\n", "", "not absolute"},
        {"<disk type='file'><driver type='raw'/><source file='/srv/../etc/shadow'/></disk>\n", "", "'..'"},
        {"<graphics type='spice'/>\n", "", "<graphics type='spice'>"},
        {"<serial type='file'/>\n", "", "<serial type='file'>"},
        {std::string(kNic).replace(std::string(kNic).find("<model"), 0, "<bandwidth/>"), "", "<interface><bandwidth>"},
        {"", "<cputune/>\n", "<cputune> is not supported"},
        {"", "<frobnicate/>\n", "unknown or unsupported element <frobnicate>"},
        {"", "<qemu:commandline xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'><qemu:env name='A' value='1'/></qemu:commandline>\n",
         "<qemu:env> is not supported"},
    };
    for (const auto& c : cases) {
      CAPTURE(c.devices);
      CAPTURE(c.extra);
      auto r = parse_domain(domain_xml(c.devices, c.extra), "web1.xml");
      REQUIRE_FALSE(r.ok());
      CAPTURE(r.error().context);
      CHECK(r.error().context.find(c.expected) != std::string::npos);
      CHECK(r.error().context.rfind("web1.xml:", 0) == 0);
    }
  }

  TEST_CASE("domain type, emulator and metadata are checked") {
    std::string xen = domain_xml(kNic);
    xen.replace(xen.find("'qemu'"), 6, "'xen'");
    CHECK(error_of(xen).find("domain type 'xen'") != std::string::npos);
    std::string noemu = domain_xml(kNic);
    noemu.erase(noemu.find("<emulator>"), noemu.find("</emulator>") + 11 - noemu.find("<emulator>"));
    CHECK(error_of(noemu).find("<emulator> is required") != std::string::npos);
    CHECK(error_of(domain_xml(kNic, "<metadata><vl:vm xmlns:vl='urn:vmlaunch:domain:1'><vl:colour>red</vl:colour></vl:vm></metadata>\n"))
              .find("unknown vmlaunch metadata element <colour>") != std::string::npos);
    CHECK(error_of(domain_xml(kNic, "<metadata><vl:vm xmlns:vl='urn:vmlaunch:domain:1'><vl:start-order>x</vl:start-order></vl:vm></metadata>\n"))
              .find("start-order") != std::string::npos);
  }

  TEST_CASE("a singleton element given twice is refused, so libvirt and vmlaunch cannot read different ones") {
    struct Case {
      std::string xml;
      const char* expected;
    };
    const Case cases[] = {
        {domain_xml("", "  <name>other</name>\n"), "<name> appears more than once in <domain>"},
        {domain_xml("", "  <uuid>6c0e0c8e-3f7a-4b0b-9d7e-1b2a3c4d5e60</uuid>\n"), "<uuid> appears more than once"},
        {domain_xml("    <emulator>/tmp/probe.sh</emulator>\n"), "<emulator> appears more than once in <devices>"},
        {domain_xml(R"(    <interface type='bridge'><mac address='52:54:00:12:34:56'/><mac address='52:54:00:12:34:57'/>
      <source bridge='br-dmz'/></interface>
)"), "<mac> appears more than once in <interface>"},
        {domain_xml(R"(    <interface type='bridge'><mac address='52:54:00:12:34:56'/><source bridge='br-dmz'/>
      <source bridge='br-lan'/></interface>
)"), "<source> appears more than once in <interface>"},
        {domain_xml(R"(    <disk type='file'><driver name='qemu' type='raw'/><source file='/srv/a.img'/><source file='/etc/shadow'/></disk>
)"), "<source> appears more than once in <disk>"},
        {domain_xml(R"(    <disk type='file'><driver name='qemu' type='raw'/><driver name='qemu' type='qcow2'/><source file='/srv/a.img'/></disk>
)"), "<driver> appears more than once in <disk>"},
        {domain_xml("", R"(  <metadata><vl:vm xmlns:vl='urn:vmlaunch:domain:1'><vl:zone>dmz</vl:zone><vl:zone>lan</vl:zone></vl:vm></metadata>
)"), "<zone> appears more than once"},
        {domain_xml("", R"(  <metadata><vl:vm xmlns:vl='urn:vmlaunch:domain:1'/><vl:vm xmlns:vl='urn:vmlaunch:domain:1'/></metadata>
)"), "<vm> appears more than once"},
        {domain_xml("    <graphics type='vnc'><listen type='address' address='127.0.0.1'/><listen type='address' address='0.0.0.0'/></graphics>\n"),
         "<listen> appears more than once"},
        {domain_xml("", "  <devices/>\n"), "<devices> appears more than once"},
    };
    for (const Case& c : cases) {
      CAPTURE(c.xml);
      CHECK(error_of(c.xml).find(c.expected) != std::string::npos);
    }
    // Repeatable ones stay repeatable.
    auto two_ips = parse_domain(domain_xml(R"(    <interface type='bridge'><mac address='52:54:00:12:34:56'/><source bridge='br-dmz'/>
      <ip address='192.0.2.1'/><ip address='192.0.2.2'/></interface>
    <serial type='pty'/><serial type='pty'/>
)"), "web1.xml");
    CHECK_MESSAGE(two_ips.ok(), (two_ips.ok() ? "" : two_ips.error().context));
  }

  TEST_CASE("<ip> addresses: libvirt's form, both families, several per interface") {
    auto r = parse_domain(domain_xml(R"(    <interface type='bridge'><mac address='52:54:00:12:34:56'/><source bridge='br-dmz'/>
      <ip address='192.0.2.10' family='ipv4' prefix='24'/>
      <ip address='2001:DB8:0:0::10' family='ipv6' prefix='64'/>
      <ip address='198.51.100.7'/>
      <ip address='fe80::1234'/>
    </interface>
)"), "web1.xml");
    REQUIRE_MESSAGE(r.ok(), r.error().context);
    const auto& ips = r->nics.at(0).ips;
    REQUIRE(ips.size() == 4);
    CHECK(ips[0].str() == "192.0.2.10");
    CHECK_FALSE(ips[0].is_v6());
    CHECK(ips[0].prefix == 24);
    CHECK(ips[1].str() == "2001:db8::10");  // canonical form
    CHECK(ips[1].is_v6());
    CHECK(ips[1].prefix == 64);
    CHECK(ips[2].str() == "198.51.100.7");  // family taken from the address, as libvirt does
    CHECK(ips[2].prefix == -1);
    CHECK(ips[3].is_v6());
  }

  TEST_CASE("<ip> accept/reject table: every refusal names the problem") {
    struct Case {
      std::string ip;        // the <ip .../> element
      const char* expected;  // empty: accepted
    };
    const Case cases[] = {
        {"<ip address='10.0.0.1'/>", ""},
        {"<ip address='10.0.0.1' family='ipv4' prefix='0'/>", ""},
        {"<ip address='10.0.0.1' prefix='32'/>", ""},
        {"<ip address='169.254.1.1'/>", ""},
        {"<ip address='2001:db8::1' prefix='128'/>", ""},
        {"<ip address='fd00::1' family='ipv6'/>", ""},
        {"<ip/>", "<ip> needs an address attribute"},
        {"<ip address=''/>", "<ip> needs an address attribute"},
        {"<ip address='10.0.0'/>", "is malformed"},
        {"<ip address='10.0.0.1/24'/>", "is malformed"},
        {"<ip address=' 10.0.0.1'/>", "is malformed"},
        {"<ip address='010.0.0.1'/>", "is malformed"},
        {"<ip address='fe80::1%eth0'/>", "is malformed"},
        {"<ip address='web1.example.org'/>", "is malformed"},
        {"<ip address='10.0.0.1' family='ipv6'/>", "is not an IPv6 address, but family is 'ipv6'"},
        {"<ip address='2001:db8::1' family='ipv4'/>", "is not an IPv4 address, but family is 'ipv4'"},
        {"<ip address='10.0.0.1' family='inet'/>", "<ip family='inet'> must be 'ipv4' or 'ipv6'"},
        {"<ip address='0.0.0.0'/>", "is in 0.0.0.0/8 (unspecified)"},
        {"<ip address='0.1.2.3'/>", "is in 0.0.0.0/8"},
        {"<ip address='127.0.0.1'/>", "is a loopback address"},
        {"<ip address='224.0.0.1'/>", "is a multicast address"},
        {"<ip address='239.255.255.250'/>", "is a multicast address"},
        {"<ip address='255.255.255.255'/>", "is the broadcast address"},
        {"<ip address='::'/>", "is the unspecified address"},
        {"<ip address='::1'/>", "is the loopback address"},
        {"<ip address='ff02::1'/>", "is a multicast address"},
        {"<ip address='::ffff:10.0.0.1'/>", "is IPv4-mapped"},
        {"<ip address='10.0.0.1' prefix='33'/>", "<ip prefix='33'> must be 0-32"},
        {"<ip address='2001:db8::1' prefix='129'/>", "must be 0-128"},
        {"<ip address='10.0.0.1' prefix='-1'/>", "must be 0-32"},
        {"<ip address='10.0.0.1' prefix='24x'/>", "must be 0-32"},
        {"<ip address='10.0.0.1' prefix=''/>", "must be 0-32"},
        {"<ip address='10.0.0.1' peer='10.0.0.2'/>", "<ip peer=...> is not supported"},
        {"<ip address='10.0.0.1'>x</ip>", "<ip> must be empty"},
        {"<ip address='10.0.0.1'/><ip address='10.0.0.1' prefix='8'/>", "<ip address='10.0.0.1'> is given twice"},
        {"<ip address='2001:db8::1'/><ip address='2001:DB8:0::1'/>", "<ip address='2001:db8::1'> is given twice"},
        {"<route address='0.0.0.0' prefix='0' gateway='10.0.0.254'/>", "<interface><route> is not supported"},
    };
    for (const Case& c : cases) {
      CAPTURE(c.ip);
      auto r = parse_domain(domain_xml("    <interface type='bridge'><mac address='52:54:00:12:34:56'/><source bridge='br-dmz'/>" +
                                       c.ip + "</interface>\n"),
                            "web1.xml");
      if (std::string_view(c.expected).empty()) {
        CHECK_MESSAGE(r.ok(), (r.ok() ? "" : r.error().context));
        continue;
      }
      REQUIRE_FALSE(r.ok());
      CAPTURE(r.error().context);
      CHECK(r.error().context.find(c.expected) != std::string::npos);
      CHECK(r.error().context.rfind("web1.xml:7: ", 0) == 0);  // file and line of the <interface>
    }
    std::string many;
    for (int i = 1; i <= 65; ++i) many += "<ip address='10.0.0." + std::to_string(i) + "'/>";
    CHECK(error_of(domain_xml("    <interface type='bridge'><mac address='52:54:00:12:34:56'/><source bridge='br-dmz'/>" + many +
                              "</interface>\n"))
              .find("more than 64 <ip> addresses") != std::string::npos);
  }

  TEST_CASE("the EUI-64 link-local address is derived from the MAC as a guest derives it") {
    auto mac = vl::MacAddress::parse("52:54:00:12:34:56");
    REQUIRE(mac.ok());
    vl::IpAddress ll = vl::eui64_link_local(*mac);
    CHECK(ll.is_v6());
    CHECK(ll.str() == "fe80::5054:ff:fe12:3456");  // what Linux assigns to such a NIC
    CHECK(vl::eui64_link_local(vl::MacAddress::parse("02:00:00:00:00:01").value()).str() == "fe80::ff:fe00:1");
  }

  TEST_CASE("load_domain names a missing file") {
    auto r = vl::load_domain("/nonexistent/web1.xml");
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().message().find("/nonexistent/web1.xml") != std::string::npos);
    CHECK(r.error().sys_errno == ENOENT);
  }

  TEST_CASE("interface settings: each is read, or refused naming it") {
    auto nic_with = [](std::string_view inner, std::string_view model = "virtio") {
      return domain_xml("    <interface type='bridge'><mac address='52:54:00:12:34:56'/><source bridge='br-dmz'/>"
                        "<model type='" + std::string(model) + "'/>" + std::string(inner) + "</interface>\n");
    };
    auto r = parse_domain(nic_with("<address type='pci' domain='0x0000' bus='0x01' slot='0x1f' function='0x7' "
                                   "multifunction='on'/><boot order='4'/><driver name='qemu' queues='1' "
                                   "rx_queue_size='1024' tx_queue_size='256'><host tso4='off'/><guest ecn='on'/></driver>"
                                   "<rom bar='on' enabled='no'/><alias name='ua-net.a_b'/>"),
                          "web1.xml");
    REQUIRE_MESSAGE(r.ok(), r.error().context);
    const vl::Nic& nic = r->nics.at(0);
    REQUIRE(nic.pci.has_value());
    CHECK(*nic.pci == vl::PciAddress{1, 31, 7, true});
    CHECK(nic.boot_order == 4);
    CHECK(nic.rx_queue_size == 1024);
    CHECK(nic.tx_queue_size == 256);
    CHECK(nic.offloads == std::vector<vl::NicOffload>{{"host_tso4", false}, {"guest_ecn", true}});
    CHECK(nic.rom_bar == true);
    CHECK(nic.rom_disabled);
    CHECK(nic.alias == "ua-net.a_b");

    struct Case {
      std::string xml;
      const char* expected;
    };
    const Case cases[] = {
        {nic_with("<driver queues='4'/>"), "<driver queues='4'> (multiqueue) is not supported yet"},
        {nic_with("<driver name='vhost'/>"), "<driver name='vhost'> is not supported"},
        {nic_with("<driver txmode='iothread'/>"), "<driver 'txmode'=...> is not supported"},
        {nic_with("<driver rx_queue_size='300'/>"), "must be a power of two"},
        {nic_with("<driver rx_queue_size='2048'/>"), "must be a number from 256 to 1024"},
        {nic_with("<driver><host csum='maybe'/></driver>"), "<host csum='maybe'> must be 'on' or 'off'"},
        {nic_with("<driver><guest gso='off'/></driver>"), "<guest 'gso'=...> is not supported"},
        {nic_with("<driver><host csum='off'/></driver>", "e1000"), "need <model type='virtio'/>"},
        {nic_with("<mtu size='9000'/>"), "<interface><mtu> is not supported yet"},
        {nic_with("<rom file='/usr/share/qemu/pxe.rom'/>"), "<rom file='/usr/share/qemu/pxe.rom'> is not supported"},
        {nic_with("<alias name='net0'/>"), "<alias name='net0'> is not supported (only user aliases"},
        {nic_with("<alias name='ua-a,b'/>"), "<alias name='ua-a,b'> is not supported"},
        {nic_with("<address type='ccw' cssid='0xfe'/>"), "<interface><address type='ccw'> is not supported"},
        {nic_with("<address type='pci' domain='0x0001' bus='0' slot='3'/>"), "PCI domains other than 0"},
        {nic_with("<address type='pci' slot='32'/>"), "<address slot='32'> must be a number from 0 to 31"},
        {nic_with("<address type='pci' slot='0x3zz'/>"), "<address slot='0x3zz'> must be a number"},
        {nic_with("<boot order='0'/>"), "<boot order='0'> must be a number from 1 to 65535"},
        {nic_with("<boot order='1' loadparm='x'/>"), "<boot 'loadparm'=...> is not supported"},
        {nic_with("<link state='down'/>"), "<interface><link> is not supported"},
        {nic_with("<coalesce/>"), "<interface><coalesce> is not supported"},
        // Values are quoted and capped in messages, whatever the XML holds.
        {nic_with("<alias name='ua-" + std::string(300, 'x') + "'/>"), "is not supported (only user aliases"},
    };
    for (const auto& c : cases) {
      auto bad = parse_domain(c.xml, "web1.xml");
      REQUIRE_FALSE(bad.ok());
      CAPTURE(bad.error().context);
      CHECK(bad.error().context.find(c.expected) != std::string::npos);
      CHECK(bad.error().context.size() < 300);
    }
  }

  TEST_CASE("VNC: loopback or a socket is served on the VM's Unix socket; another address or a fixed port is refused by name") {
    for (const char* ok : {"    <graphics type='vnc'/>\n", "    <graphics type='vnc' listen='127.0.0.1'/>\n",
                           "    <graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.2'/>\n",
                           "    <graphics type='vnc' listen='localhost'/>\n",
                           "    <graphics type='vnc'><listen type='address' address='127.0.0.1'/></graphics>\n",
                           "    <graphics type='vnc'><listen type='address'/></graphics>\n",
                           "    <graphics type='vnc'><listen type='socket'/></graphics>\n"}) {
      CAPTURE(ok);
      auto d = parse_domain(domain_xml(ok), "web1.xml");
      REQUIRE_MESSAGE(d.ok(), d.error().context);
      CHECK(d->vnc);
    }
    struct Case {
      const char* graphics;
      const char* expected;
    };
    const Case refused[] = {
        {"    <graphics type='vnc' listen='0.0.0.0'/>\n", "VNC listen address '0.0.0.0' cannot be honoured: each emulator runs in a network namespace of its own"},
        {"    <graphics type='vnc' listen='192.0.2.7'/>\n", "VNC listen address '192.0.2.7' cannot be honoured"},
        {"    <graphics type='vnc' listen='::1'/>\n", "VNC listen address '::1' cannot be honoured"},
        {"    <graphics type='vnc'><listen type='address' address='0.0.0.0'/></graphics>\n", "VNC listen address '0.0.0.0' cannot be honoured"},
        {"    <graphics type='vnc' autoport='no' port='5901' listen='127.0.0.1'/>\n", "a fixed VNC port (autoport='no' port='5901') cannot be honoured"},
        {"    <graphics type='vnc'><listen type='socket' socket='/run/x.sock'/></graphics>\n", "a VNC socket path of the XML's own is not supported"},
        {"    <graphics type='vnc' socket='/run/x.sock'/>\n", "a VNC socket path of the XML's own is not supported"},
        {"    <graphics type='vnc' websocket='5700'/>\n", "VNC websockets are not supported"},
        {"    <graphics type='vnc'><listen type='none'/></graphics>\n", "<listen type='none'> (VNC without a listener) is not supported yet"},
        {"    <graphics type='vnc'><listen type='network' network='default'/></graphics>\n", "<listen type='network'> is not supported"},
    };
    for (const Case& c : refused) {
      CAPTURE(c.graphics);
      CHECK(error_of(domain_xml(c.graphics)).find(c.expected) != std::string::npos);
    }
  }
}

TEST_SUITE("common/domain: what virt-install writes") {
  TEST_CASE("the guest agent channel is accepted; its libvirt path is not used") {
    for (const char* channel : {
             "<channel type='unix'><source mode='bind'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>",
             "<channel type='unix'><source mode='bind' path='/var/lib/libvirt/qemu/channel/target/web1.org.qemu.guest_agent.0'/>"
             "<target type='virtio' name='org.qemu.guest_agent.0'/><address type='virtio-serial' controller='0' bus='0' port='1'/></channel>",
         }) {
      auto r = parse_domain(domain_xml(channel), "web1.xml");
      REQUIRE_MESSAGE(r.ok(), r.error().context);
      CHECK(r->guest_agent);
    }
    auto none = parse_domain(domain_xml(""), "web1.xml");
    REQUIRE(none.ok());
    CHECK_FALSE(none->guest_agent);
  }

  TEST_CASE("other channels, and a second agent, are refused by name") {
    CHECK(error_of(domain_xml("<channel type='spicevmc'><target type='virtio' name='com.redhat.spice.0'/></channel>"))
              .find("<channel type='spicevmc'> is not supported") != std::string::npos);
    CHECK(error_of(domain_xml("<channel type='unix'><target type='virtio' name='org.example.other'/></channel>"))
              .find("only as the guest agent") != std::string::npos);
    CHECK(error_of(domain_xml("<channel type='unix'><source mode='connect' path='/tmp/x'/>"
                              "<target type='virtio' name='org.qemu.guest_agent.0'/></channel>"))
              .find("mode='connect'") != std::string::npos);
    std::string agent = "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>";
    CHECK(error_of(domain_xml(agent + agent)).find("more than one guest agent") != std::string::npos);
  }

  TEST_CASE("<interface type='network'> names a zone; the bridge is left to the configuration") {
    auto r = parse_domain(domain_xml("<interface type='network'><source network='dmz'/><mac address='52:54:00:00:00:07'/>"
                                     "<model type='virtio'/></interface>"),
                          "web1.xml");
    REQUIRE_MESSAGE(r.ok(), r.error().context);
    REQUIRE(r->nics.size() == 1);
    CHECK(r->nics[0].network == "dmz");
    CHECK(r->nics[0].bridge.empty());
    CHECK(error_of(domain_xml("<interface type='network'><mac address='52:54:00:00:00:07'/></interface>"))
              .find("no <source network=...>") != std::string::npos);
    CHECK(error_of(domain_xml("<interface type='network'><source network='dmz' portgroup='web'/>"
                              "<mac address='52:54:00:00:00:07'/></interface>"))
              .find("portgroup") != std::string::npos);
    CHECK(error_of(domain_xml("<interface type='direct'><source dev='eth0'/><mac address='52:54:00:00:00:07'/></interface>"))
              .find("<interface type='direct'> is not supported") != std::string::npos);
  }
}

TEST_SUITE("common/domain: UEFI") {
  TEST_CASE("firmware autoselection picks the plain 4 MiB OVMF and its template, as virt-install --boot uefi needs") {
    std::string uefi = vl::test::kVirtInstallUefi;
    uefi.replace(uefi.find("@DISK@"), 6, "/srv/images/deb12uefi.img");
    auto d = parse_domain(uefi, "deb12uefi.xml");
    REQUIRE_MESSAGE(d.ok(), d.error().context);
    REQUIRE(d->uefi);
    CHECK(d->uefi->code == "/usr/share/OVMF/OVMF_CODE_4M.fd");
    CHECK(d->uefi->vars_template == "/usr/share/OVMF/OVMF_VARS_4M.fd");
    CHECK(d->uefi->nvram.empty());  // the configuration's, set by resolve_nvram
  }

  TEST_CASE("an explicit pflash loader is honoured; its template is Debian's pair or <nvram template>; <nvram>'s path is not used") {
    auto ms = parse_domain(domain_xml("", "  <os><type>hvm</type><loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.ms.fd</loader>"
                                          "<nvram>/var/lib/libvirt/qemu/nvram/web1_VARS.fd</nvram></os>\n"), "web1.xml");
    REQUIRE_MESSAGE(ms.ok(), ms.error().context);
    CHECK(ms->uefi->code == "/usr/share/OVMF/OVMF_CODE_4M.ms.fd");
    CHECK(ms->uefi->vars_template == "/usr/share/OVMF/OVMF_VARS_4M.ms.fd");
    CHECK(ms->uefi->nvram.empty());
    auto custom = parse_domain(domain_xml("", "  <os><type>hvm</type><loader readonly='yes' type='pflash'>/usr/share/qemu/edk2-x86_64-code.fd</loader>"
                                              "<nvram template='/usr/share/qemu/edk2-i386-vars.fd'/></os>\n"), "web1.xml");
    REQUIRE_MESSAGE(custom.ok(), custom.error().context);
    CHECK(custom->uefi->vars_template == "/usr/share/qemu/edk2-i386-vars.fd");
    // A ROM loader (SeaBIOS) stays a boot file, without UEFI.
    auto rom = parse_domain(domain_xml("", "  <os><type>hvm</type><loader type='rom'>/usr/share/seabios/bios.bin</loader></os>\n"), "web1.xml");
    REQUIRE_MESSAGE(rom.ok(), rom.error().context);
    CHECK(rom->boot_files == std::vector<std::string>{"/usr/share/seabios/bios.bin"});
    CHECK_FALSE(rom->uefi);
  }

  TEST_CASE("UEFI the helper could not set up safely is refused by name") {
    struct Case {
      const char* os;
      const char* reason;
    };
    const Case cases[] = {
        {"<os><type>hvm</type><loader type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader></os>", "must say readonly='yes'"},
        {"<os><type>hvm</type><loader readonly='no' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader></os>", "must say readonly='yes'"},
        {"<os><type>hvm</type><loader readonly='yes' type='pflash'>/srv/CODE.fd</loader></os>", "needs <nvram template=...>"},
        {"<os><type>hvm</type><nvram>/srv/web1_VARS.fd</nvram></os>", "<nvram> needs UEFI firmware"},
        {"<os firmware='efi'><type>hvm</type><nvram type='network'/></os>", "<nvram type='network'> is not supported"},
        {"<os firmware='efi'><type>hvm</type><firmware><feature enabled='yes' name='secure-boot'/></firmware></os>",
         "feature 'secure-boot' is not supported"},
        {"<os firmware='efi'><type>hvm</type><loader readonly='yes' type='pflash' stateless='yes'/></os>", "stateless"},
        {"<os firmware='xen'><type>hvm</type></os>", "firmware='xen'"},
    };
    for (const Case& c : cases) {
      std::string err = error_of(domain_xml("", std::string("  ") + c.os + "\n"));
      CHECK_MESSAGE(err.find(c.reason) != std::string::npos, c.os, " -> ", err);
    }
  }
}

TEST_SUITE("common/domain: serial console") {
  std::string with_devices(const std::string& devices) {
    return "<domain type='qemu'><name>web1</name><devices><emulator>/usr/bin/qemu-system-x86_64</emulator>" + devices +
           "</devices></domain>";
  }

  TEST_CASE("a pty <console> without <serial> is serial port 0, as libvirt makes it (virt-install writes only it)") {
    auto d = vl::parse_domain(with_devices("<console type='pty'/>"), "web1.xml");
    REQUIRE(d.ok());
    CHECK(d->serial_ptys == 1);
    d = vl::parse_domain(with_devices("<console type='pty'><target type='serial' port='0'/></console>"), "web1.xml");
    REQUIRE(d.ok());
    CHECK(d->serial_ptys == 1);
    // Beside a <serial> it is that port, not another.
    d = vl::parse_domain(with_devices("<serial type='pty'/><console type='pty'/>"), "web1.xml");
    REQUIRE(d.ok());
    CHECK(d->serial_ptys == 1);
    // A virtio console is no serial port.
    d = vl::parse_domain(with_devices("<console type='pty'><target type='virtio'/></console>"), "web1.xml");
    REQUIRE(d.ok());
    CHECK(d->serial_ptys == 0);
  }

  TEST_CASE("<encryption format='luks'> on a file disk is read; its secret names no file") {
    auto disk = [](std::string_view format, std::string_view secret) {
      return "<disk type='file' device='disk'><driver name='qemu' type='" + std::string(format) +
             "'/><source file='/srv/vm/web1.img'/><target dev='vda' bus='virtio'/><encryption format='luks'>" +
             std::string(secret) + "</encryption></disk><disk type='file'><driver type='raw'/><source file='/srv/vm/b.img'/>"
             "<target dev='vdb'/></disk>\n";
    };
    for (std::string_view secret : {"<secret type='passphrase' uuid='0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f'/>",
                                    "<secret type='passphrase' usage='web1-disk'/>"}) {
      for (std::string_view format : {"raw", "qcow2"}) {
        auto d = parse_domain(domain_xml(disk(format, secret)), "web1.xml");
        REQUIRE_MESSAGE(d.ok(), d.error().context);
        REQUIRE(d->disks.size() == 2);
        CHECK(d->disks[0].luks);
        CHECK(d->disks[0].format == format);
        CHECK_FALSE(d->disks[1].luks);
        CHECK(vl::has_encrypted_disk(d->disks));
      }
    }
    auto plain = parse_domain(domain_xml("<disk type='file'><driver type='raw'/><source file='/x'/><target dev='vda'/></disk>\n"), "web1.xml");
    REQUIRE(plain.ok());
    CHECK_FALSE(vl::has_encrypted_disk(plain->disks));
  }

  TEST_CASE("<encryption> vmlaunch cannot honour is refused, naming what") {
    const std::string secret = "<secret type='passphrase' usage='u'/>";
    auto disk = [](std::string_view attrs, std::string_view encryption, std::string_view type = "file",
                   std::string_view device = "disk") {
      return "<disk type='" + std::string(type) + "' device='" + std::string(device) + "'><driver type='raw'/><source " +
             (type == "file" ? "file" : "dev") + "='/srv/vm/a.img'/><target dev='vda'/><encryption" + std::string(attrs) + ">" +
             std::string(encryption) + "</encryption></disk>\n";
    };
    struct Case {
      std::string devices, expected;
    };
    const Case cases[] = {
        {disk(" format='qcow'", secret), "legacy AES) is not supported"},
        {disk(" format='luks2'", secret), "<encryption format='luks2'> is not supported (only 'luks')"},
        {disk(" format='luks-any'", secret), "only 'luks'"},
        {disk("", secret), "<encryption format=''> is not supported"},
        {disk(" format='luks' engine='librbd'", secret), "<encryption engine='librbd'>"},
        {disk(" format='luks' cipher='x'", secret), "cipher"},
        {disk(" format='luks'", ""), "needs one <secret type='passphrase'/>"},
        {disk(" format='luks'", secret + secret), "<secret> appears more than once"},
        {disk(" format='luks'", "<secret type='ceph' usage='u'/>"), "<secret type='ceph'> is not supported"},
        {disk(" format='luks'", "<secret type='passphrase'/>"), "needs a uuid or a usage"},
        {disk(" format='luks'", "<secret type='passphrase' uuid='a' usage='b'/>"), "needs a uuid or a usage"},
        {disk(" format='luks'", "<secret type='passphrase' usage='u' file='/etc/key'/>"), "file"},
        {disk(" format='luks'", secret + "<cipher name='aes' size='256' mode='xts'/>"), "<encryption><cipher> is not supported"},
        {disk(" format='luks'", secret + "<ivgen name='plain64'/>"), "<encryption><ivgen> is not supported"},
        {disk(" format='luks'", secret, "block"), "on <disk type='file' device='disk'> only"},
        {disk(" format='luks'", secret, "file", "cdrom"), "on <disk type='file' device='disk'> only"},
        {"<disk type='file'><driver type='raw'/><source file='/x'/><encryption format='luks'>" + secret +
             "</encryption><encryption format='luks'>" + secret + "</encryption></disk>\n",
         "<encryption> appears more than once"},
        {"<disk type='file'><driver type='qcow2'/><source file='/x'/><backingStore type='file'><format type='raw'/>"
         "<source file='/y'/><encryption format='luks'>" + secret + "</encryption></backingStore></disk>\n",
         "<backingStore><encryption> is not supported"},
        {"<disk type='file'><driver type='raw'/><source file='/x'/><auth username='u'/></disk>\n", "<auth> needs libvirt secrets"},
    };
    for (const auto& c : cases) {
      CAPTURE(c.devices);
      std::string e = error_of(domain_xml(c.devices));
      CAPTURE(e);
      CHECK(e.find(c.expected) != std::string::npos);
      CHECK(e.rfind("web1.xml:", 0) == 0);
    }
  }
}
