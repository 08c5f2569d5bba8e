#include "common/zone_network.h"

#include <doctest/doctest.h>

namespace {

vl::HostConfig config() {
  auto c = vl::parse_config("[zones.dmz]\nbridge = \"br-dmz\"\n[zones.lan]\nbridge = \"br-lan\"\n", "vmlaunch.toml");
  REQUIRE_MESSAGE(c.ok(), c.error().message());
  return *c;
}

vl::Domain domain_with(const std::string& interfaces) {
  auto d = vl::parse_domain("<domain type='qemu'><name>web1</name><devices><emulator>/usr/bin/qemu-system-x86_64</emulator>" +
                                interfaces + "</devices></domain>",
                            "web1.xml");
  REQUIRE_MESSAGE(d.ok(), d.error().context);
  return *d;
}

}  // namespace

TEST_SUITE("common/zone_network") {
  TEST_CASE("a network interface gets its zone's bridge; a bridge interface keeps its own") {
    vl::Domain d = domain_with(
        "<interface type='network'><source network='lan'/><mac address='52:54:00:00:00:01'/></interface>"
        "<interface type='bridge'><source bridge='br-dmz'/><mac address='52:54:00:00:00:02'/></interface>");
    REQUIRE(vl::resolve_networks(d, config()).ok());
    CHECK(d.nics[0].bridge == "br-lan");
    CHECK(d.nics[1].bridge == "br-dmz");
  }

  TEST_CASE("a network that is no zone is refused with its name, its line and the configuration file") {
    vl::Domain d = domain_with("<interface type='network'><source network='default'/><mac address='52:54:00:00:00:01'/></interface>");
    auto r = vl::resolve_networks(d, config());
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == vl::ErrorCode::kNotFound);
    CHECK(r.error().message().find("<source network='default'> is not a zone of vmlaunch.toml") != std::string::npos);
    CHECK(d.nics[0].bridge.empty());
  }

  TEST_CASE("the zone map libvirt's XML is rewritten with") {
    auto bridges = vl::zone_bridges(config());
    CHECK(bridges.size() == 2);
    CHECK(bridges["dmz"] == "br-dmz");
  }
}
