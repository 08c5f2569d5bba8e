// The planner against real libvirt: conversion in a private user+network namespace, cache.
#include "daemon/planner.h"

#include <doctest/doctest.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <map>
#include <optional>
#include <set>

#include "daemon/asio.h"
#include "daemon/converter.h"

#include "common/unique_fd.h"
#include "common/zone_network.h"
#include "tests/support/temp_dir.h"

namespace {

// A domain as the daemon reads it (manager.cpp): its VNC socket set from the configuration.
vl::Result<vl::Domain> parse_resolved(const std::string& xml, const std::string& source) {
  auto d = vl::parse_domain(xml, source);
  if (d.ok()) vl::resolve_vnc(*d, vl::HostConfig{});
  return d;
}

std::string sample_xml(std::string_view name, std::string_view disk, std::string_view extra = "") {
  return "<domain type='qemu'><name>" + std::string(name) +
         "</name><memory unit='MiB'>64</memory><os><type arch='x86_64' machine='pc'>hvm</type></os>"
         "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
         "<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='" + std::string(disk) +
         "'/><target dev='vda' bus='virtio'/></disk>"
         "<interface type='bridge'><mac address='52:54:00:12:34:56'/><source bridge='br0'/>"
         "<model type='virtio'/></interface><serial type='pty'/>"
         "<graphics type='vnc' autoport='yes' listen='127.0.0.1' passwd='secret12'/>" +
         std::string(extra) + "</devices></domain>";
}

}  // namespace

TEST_SUITE("daemon/planner") {
  TEST_CASE("a real domain converts, then comes from the cache") {
    vl::test::TempDir tmp;
    vl::HostConfig config;
    config.cache_dir = tmp.path() + "/cache";
    vl::Planner planner(config);
    std::string xml = sample_xml("web1", tmp.path() + "/disk one,a.img");
    auto domain = parse_resolved(xml, "web1.xml");
    REQUIRE(domain.ok());

    vl::PlanStats cold, warm;
    auto first = planner.plan(*domain, xml, &cold);
    REQUIRE_MESSAGE(first.ok(), (first.ok() ? std::string() : first.error().message()));
    CHECK_FALSE(cold.cache_hit);
    auto second = planner.plan(*domain, xml, &warm);
    REQUIRE(second.ok());
    CHECK(warm.cache_hit);
    CHECK(first->argv == second->argv);
    CHECK(first->cache_key.size() == 64);
    bool has_disk = false;
    for (const auto& w : first->argv) has_disk |= w.find(tmp.path() + "/disk one,a.img") != std::string::npos;
    CHECK(has_disk);

    // A different XML is a different key: never a stale plan.
    std::string xml2 = sample_xml("web1", tmp.path() + "/other.img");
    auto domain2 = parse_resolved(xml2, "web1.xml");
    vl::PlanStats third;
    auto changed = planner.plan(*domain2, xml2, &third);
    REQUIRE(changed.ok());
    CHECK_FALSE(third.cache_hit);
    CHECK(changed->cache_key != first->cache_key);
  }

  TEST_CASE("a plan whose conversion is under way waits for it: a pre-plan and two starts run one conversion") {
    vl::test::TempDir tmp;
    vl::HostConfig config;
    config.cache_dir = tmp.path() + "/cache";
    vl::Planner planner(config);
    std::string xml = sample_xml("web1", tmp.path() + "/disk.img");
    auto domain = parse_resolved(xml, "web1.xml");
    REQUIRE(domain.ok());
    boost::asio::io_context io;
    std::optional<vl::Result<void>> prepared;
    std::vector<vl::Result<vl::Plan>> plans;
    planner.prepare_async(io, *domain, xml, [&](vl::Result<void> r) { prepared = std::move(r); });
    for (int i = 0; i < 2; ++i)
      planner.plan_async(io, *domain, xml, [&](vl::Result<vl::Plan> p) { plans.push_back(std::move(p)); });
    io.run_for(std::chrono::seconds(120));
    REQUIRE(prepared.has_value());
    CHECK_MESSAGE(prepared->ok(), (prepared->ok() ? std::string() : prepared->error().message()));
    REQUIRE(plans.size() == 2);
    for (auto& plan : plans) REQUIRE_MESSAGE(plan.ok(), (plan.ok() ? std::string() : plan.error().message()));
    CHECK(plans[0]->argv.size() == plans[1]->argv.size());
    CHECK(planner.conversions("web1") == 1);
    // Each conversion takes a root of its own: a second one would have made embed/1.
    CHECK(std::filesystem::exists(config.cache_dir + "/embed/0"));
    CHECK_FALSE(std::filesystem::exists(config.cache_dir + "/embed/1"));
  }

  TEST_CASE("XML libvirt cannot convert fails with libvirt's reason") {
    vl::test::TempDir tmp;
    vl::HostConfig config;
    config.cache_dir = tmp.path() + "/cache";
    vl::Planner planner(config);
    std::string xml = sample_xml("web1", "/srv/a.img");
    xml.replace(xml.find("secret12"), 8, "much-too-long-password");
    auto domain = parse_resolved(xml, "web1.xml");
    REQUIRE(domain.ok());
    auto plan = planner.plan(*domain, xml);
    REQUIRE_FALSE(plan.ok());
    CHECK(plan.error().code == vl::ErrorCode::kUnsupported);
    CHECK(plan.error().context.find("VNC password") != std::string::npos);
  }

  TEST_CASE("a domain with IPv4 and IPv6 <ip> addresses plans, and the argv has no trace of them") {
    vl::test::TempDir tmp;
    vl::HostConfig config;
    config.cache_dir = tmp.path() + "/cache";
    vl::Planner planner(config);
    const std::string ips = "<ip address='192.0.2.10' family='ipv4' prefix='24'/>"
                            "<ip address='2001:db8:77::10' family='ipv6' prefix='64'/>";
    std::string plain = sample_xml("web1", "/srv/a.img");
    // A fixed UUID: libvirt makes one up for each conversion otherwise.
    plain.insert(plain.find("</name>") + 7, "<uuid>6c0e0c8e-3f7a-4b0b-9d7e-1b2a3c4d5e6f</uuid>");
    std::string xml = plain;
    xml.insert(xml.find("<model type='virtio'/>"), ips);
    auto domain = parse_resolved(xml, "web1.xml");
    REQUIRE_MESSAGE(domain.ok(), domain.error().context);
    REQUIRE(domain->nics.at(0).ips.size() == 2);

    vl::PlanStats stats;
    auto plan = planner.plan(*domain, xml, &stats);
    REQUIRE_MESSAGE(plan.ok(), plan.error().message());
    CHECK_FALSE(stats.cache_hit);
    for (const auto& word : plan->argv) {
      CAPTURE(word);
      CHECK(word.find("192.0.2.10") == std::string::npos);
      CHECK(word.find("2001:db8:77") == std::string::npos);
    }
    // The addresses are part of the cache key: the same domain without them is another plan
    // (and the same argv, since libvirt never saw them).
    auto bare_domain = parse_resolved(plain, "web1.xml");
    REQUIRE(bare_domain.ok());
    vl::PlanStats bare_stats;
    auto bare = planner.plan(*bare_domain, plain, &bare_stats);
    REQUIRE_MESSAGE(bare.ok(), bare.error().message());
    CHECK_FALSE(bare_stats.cache_hit);
    CHECK(bare->cache_key != plan->cache_key);
    CHECK(bare->argv == plan->argv);

    // The asynchronous path strips them the same way.
    std::optional<vl::Result<vl::Plan>> async;
    boost::asio::io_context io;
    std::string changed = xml;
    changed.replace(changed.find("192.0.2.10"), 10, "192.0.2.11");
    auto changed_domain = parse_resolved(changed, "web1.xml");
    REQUIRE(changed_domain.ok());
    planner.plan_async(io, *changed_domain, changed, [&](vl::Result<vl::Plan> p) { async = std::move(p); });
    io.run_for(std::chrono::seconds(120));
    REQUIRE(async.has_value());
    REQUIRE_MESSAGE(async->ok(), async->error().message());
    CHECK((*async)->cache_key != plan->cache_key);
  }

  TEST_CASE("what libvirt is given: the interfaces' <ip> elements removed, nothing else changed") {
    std::string xml =
        "<domain type='qemu'><name>web1</name><metadata><x:ip xmlns:x='urn:x' address='203.0.113.9'/></metadata>"
        "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
        "<interface type='bridge'><mac address='52:54:00:12:34:56'/><!-- keep --><ip address='192.0.2.10'/>"
        "<source bridge='br0'/><ip address='2001:db8::10' family='ipv6'/></interface>"
        "<interface type='bridge'><mac address='52:54:00:12:34:57'/><source bridge='br1'/><ip address='198.51.100.1'/></interface>"
        "</devices></domain>";
    auto stripped = vl::xml_for_libvirt(xml);
    REQUIRE_MESSAGE(stripped.ok(), stripped.error().message());
    CHECK(stripped->find("192.0.2.10") == std::string::npos);
    CHECK(stripped->find("2001:db8::10") == std::string::npos);
    CHECK(stripped->find("198.51.100.1") == std::string::npos);
    CHECK(stripped->find("<x:ip xmlns:x=\"urn:x\" address=\"203.0.113.9\"/>") != std::string::npos);  // not an interface's
    CHECK(stripped->find("<mac address=\"52:54:00:12:34:56\"/><!-- keep --><source bridge=\"br0\"/></interface>") != std::string::npos);
    CHECK(stripped->find("<source bridge=\"br1\"/></interface>") != std::string::npos);
    // Nothing to strip: the very same text.
    std::string plain = sample_xml("web1", "/srv/a.img");
    CHECK(vl::xml_for_libvirt(plain).value() == plain);
    // Never edited as text: what is not XML is refused, DTDs included.
    CHECK_FALSE(vl::xml_for_libvirt("<domain><devices><interface><ip address='1.2.3.4'></interface>").ok());
    CHECK_FALSE(vl::xml_for_libvirt("<!DOCTYPE domain [<!ENTITY a 'b'>]><domain/>").ok());
  }

  TEST_CASE("what libvirt is given: a disk's <encryption> removed (the rewrite adds the LUKS layer), the disk kept") {
    std::string xml =
        "<domain type='qemu'><name>web1</name><devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
        "<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/srv/a.img'/><target dev='vda'/>"
        "<encryption format='luks'><secret type='passphrase' usage='web1'/></encryption></disk>"
        "</devices></domain>";
    auto stripped = vl::xml_for_libvirt(xml);
    REQUIRE_MESSAGE(stripped.ok(), stripped.error().message());
    CHECK(stripped->find("encryption") == std::string::npos);
    CHECK(stripped->find("secret") == std::string::npos);
    CHECK(stripped->find("<source file=\"/srv/a.img\"/><target dev=\"vda\"/></disk>") != std::string::npos);
  }

  TEST_CASE("libvirt gets a network interface as a bridge interface on its zone's bridge") {
    std::string xml =
        "<domain type='qemu'><name>web1</name><devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
        "<interface type='network'><source network='dmz'/><mac address='52:54:00:12:34:56'/><model type='virtio'/></interface>"
        "<interface type='bridge'><source bridge='br9'/><mac address='52:54:00:12:34:57'/></interface>"
        "</devices></domain>";
    auto bridged = vl::xml_for_libvirt(xml, {{"dmz", "br-dmz"}, {"lan", "br-lan"}});
    REQUIRE_MESSAGE(bridged.ok(), bridged.error().message());
    CHECK_MESSAGE(bridged->find("<interface type=\"bridge\"><source bridge=\"br-dmz\"/><mac address=\"52:54:00:12:34:56\"/>") !=
                      std::string::npos,
                  *bridged);
    CHECK(bridged->find("network") == std::string::npos);
    CHECK(bridged->find("<source bridge=\"br9\"/>") != std::string::npos);
    auto unknown = vl::xml_for_libvirt(xml, {{"lan", "br-lan"}});
    REQUIRE_FALSE(unknown.ok());
    CHECK(unknown.error().message().find("<source network='dmz'> is not a zone") != std::string::npos);
  }

  TEST_CASE("an emulator outside the allowed list is refused before libvirt runs") {
    vl::test::TempDir tmp;
    vl::HostConfig config;
    config.cache_dir = tmp.path() + "/cache";
    config.emulators = {"/usr/bin/qemu-system-aarch64"};
    vl::Planner planner(config);
    std::string xml = sample_xml("web1", "/srv/a.img");
    auto domain = parse_resolved(xml, "web1.xml");
    auto plan = planner.plan(*domain, xml);
    REQUIRE_FALSE(plan.ok());
    CHECK(plan.error().code == vl::ErrorCode::kDenied);
    CHECK_FALSE(std::filesystem::exists(config.cache_dir + "/embed"));
  }

  TEST_CASE("an unreadable plan cache entry is an error naming it, not a miss") {
    vl::test::TempDir tmp;
    vl::HostConfig config;
    config.cache_dir = tmp.path() + "/cache";
    vl::Planner planner(config);
    std::string xml = sample_xml("web1", "/srv/a.img");
    auto domain = parse_resolved(xml, "web1.xml");
    REQUIRE(domain.ok());
    auto id = vl::libvirt_identity();
    REQUIRE(id.ok());
    auto key = vl::plan_cache_key(xml, domain->emulator, *id);
    REQUIRE(key.ok());
    // EISDIR stands for any read failure (EACCES does not stop root).
    std::string entry = config.cache_dir + "/plans/" + *key + ".argv";
    std::filesystem::create_directories(entry);

    auto plan = planner.plan(*domain, xml);
    REQUIRE_FALSE(plan.ok());
    CHECK(plan.error().sys_errno == EISDIR);
    CHECK_MESSAGE(plan.error().message().find(entry) != std::string::npos, plan.error().message());
    CHECK(plan.error().message().find("/dev/net/tun") == std::string::npos);
    CHECK_FALSE(std::filesystem::exists(config.cache_dir + "/embed"));  // no conversion ran

    std::optional<vl::Result<vl::Plan>> async;
    boost::asio::io_context io;
    planner.plan_async(io, *domain, xml, [&](vl::Result<vl::Plan> p) { async = std::move(p); });
    io.run_for(std::chrono::seconds(30));
    REQUIRE(async.has_value());
    REQUIRE_FALSE(async->ok());
    CHECK(async->error().message().find(entry) != std::string::npos);
  }

  // libvirt's dry run keeps only model and MAC of an interface; everything else the XML says of
  // it must reach the plan. Each value below goes into the XML, and is looked for in the plan.
  TEST_CASE("every interface setting of the XML reaches the plan: address, boot order, rings, offloads, ROM, alias") {
    vl::test::TempDir tmp;
    vl::HostConfig config;
    config.cache_dir = tmp.path() + "/cache";
    vl::Planner planner(config);
    struct Expect {
      std::string xml_value;  // as written in the XML
      std::string property;   // the -device property it must set
      nlohmann::json value;   // and the value it must have there
    };
    const std::vector<Expect> first = {
        {"<address type='pci' domain='0x0000' bus='0x00' slot='0x07' function='0x0'/>", "addr", "0x7"},
        {"", "bus", "pci.0"},
        {"<boot order='2'/>", "bootindex", 2},
        {"<driver name='qemu' queues='1' rx_queue_size='512' tx_queue_size='256'>"
         "<host csum='off' gso='off' tso4='off' tso6='on' ecn='off' ufo='off' mrg_rxbuf='off'/>"
         "<guest csum='off' tso4='off' tso6='off' ecn='on' ufo='off'/></driver>",
         "rx_queue_size", 512},
        {"", "tx_queue_size", 256},
        {"", "csum", false}, {"", "gso", false}, {"", "host_tso4", false}, {"", "host_tso6", true},
        {"", "host_ecn", false}, {"", "host_ufo", false}, {"", "mrg_rxbuf", false},
        {"", "guest_csum", false}, {"", "guest_tso4", false}, {"", "guest_tso6", false},
        {"", "guest_ecn", true}, {"", "guest_ufo", false},
        {"<rom bar='off'/>", "rombar", 0},
        {"<alias name='ua-uplink'/>", "id", "ua-uplink"},
    };
    const std::vector<Expect> second = {
        {"<address type='pci' domain='0x0000' bus='0x00' slot='0x08' function='0x1' multifunction='on'/>", "addr", "0x8.0x1"},
        {"", "multifunction", true},
        {"<rom enabled='no'/>", "romfile", ""},
        {"<boot order='3'/>", "bootindex", 3},
    };
    auto settings = [](const std::vector<Expect>& expects) {
      std::string xml;
      for (const auto& e : expects) xml += e.xml_value;
      return xml;
    };
    std::string xml =
        "<domain type='qemu'><name>web1</name><uuid>6c0e0c8e-3f7a-4b0b-9d7e-1b2a3c4d5e6f</uuid>"
        "<memory unit='MiB'>64</memory><os><type arch='x86_64' machine='pc'>hvm</type></os>"
        "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
        "<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/srv/a.img'/>"
        "<target dev='vda' bus='virtio'/><boot order='1'/></disk>"
        "<interface type='bridge'><mac address='52:54:00:12:34:56'/><source bridge='br0'/><model type='virtio'/>" +
        settings(first) +
        "</interface><interface type='bridge'><mac address='52:54:00:12:34:57'/><source bridge='br0'/>"
        "<model type='e1000'/>" + settings(second) + "</interface></devices></domain>";
    auto domain = parse_resolved(xml, "web1.xml");
    REQUIRE_MESSAGE(domain.ok(), domain.error().context);
    auto plan = planner.plan(*domain, xml);
    REQUIRE_MESSAGE(plan.ok(), plan.error().message());

    auto device_of = [&](const std::string& netdev) {
      for (size_t i = 0; i + 1 < plan->argv.size(); ++i) {
        if (plan->argv[i] != "-device") continue;
        auto dev = nlohmann::json::parse(plan->argv[i + 1], nullptr, false);
        if (dev.is_object() && dev.value("netdev", "") == netdev) return dev;
      }
      return nlohmann::json();
    };
    for (const auto& [netdev, expects] : {std::pair{"hostnet0", first}, std::pair{"hostnet1", second}}) {
      auto dev = device_of(netdev);
      CAPTURE(dev.dump());
      REQUIRE(dev.is_object());
      for (const auto& e : expects) {
        CAPTURE(e.property);
        REQUIRE(dev.contains(e.property));
        CHECK(dev[e.property] == e.value);
      }
    }
  }

  TEST_CASE("an interface on a PCI bus above 0 lands on that bus, which libvirt adds as a controller") {
    vl::test::TempDir tmp;
    vl::HostConfig config;
    config.cache_dir = tmp.path() + "/cache";
    vl::Planner planner(config);
    std::string xml = sample_xml("web1", "/srv/a.img", "");
    xml.insert(xml.find("<model type='virtio'/>"), "<address type='pci' domain='0' bus='3' slot='1' function='0'/>");
    auto domain = parse_resolved(xml, "web1.xml");
    REQUIRE_MESSAGE(domain.ok(), domain.error().context);
    auto plan = planner.plan(*domain, xml);
    REQUIRE_MESSAGE(plan.ok(), plan.error().message());
    bool bus_defined = false, nic_on_it = false;
    for (const auto& w : plan->argv) {
      auto dev = nlohmann::json::parse(w, nullptr, false);
      if (!dev.is_object()) continue;
      bus_defined |= dev.value("id", "") == "pci.3";
      nic_on_it |= dev.value("netdev", "") == "hostnet0" && dev.value("bus", "") == "pci.3" && dev.value("addr", "") == "0x1";
    }
    CHECK(bus_defined);
    CHECK(nic_on_it);
  }

  TEST_CASE("a plan longer than the helper accepts is refused at plan time, in the helper's words") {
    vl::test::TempDir tmp;
    vl::HostConfig config;
    config.cache_dir = tmp.path() + "/cache";
    vl::Planner planner(config);
    std::string xml = sample_xml("web1", "/srv/a.img");
    std::string args;
    for (int i = 0; i < 520; ++i) args += "<qemu:arg value='-msg'/><qemu:arg value='timestamp=on'/>";
    xml.insert(xml.rfind("</domain>"),
               "<qemu:commandline xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>" + args + "</qemu:commandline>");
    auto domain = parse_resolved(xml, "web1.xml");
    REQUIRE_MESSAGE(domain.ok(), domain.error().context);
    auto plan = planner.plan(*domain, xml);
    REQUIRE_FALSE(plan.ok());
    CHECK_MESSAGE(plan.error().message().find("plan: 'argv' must be a non-empty array of at most 1024 strings") !=
                      std::string::npos,
                  plan.error().message());
  }
}

