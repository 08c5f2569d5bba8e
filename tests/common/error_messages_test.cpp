// What an operator reads when something is wrong: every message is one printable line of
// bounded length, and the value at fault appears in it quoted ('...'), escaped and capped, so
// that hostile input (newlines, escape codes, megabytes) can neither forge log lines nor flood
// them. A representative walk over the failure paths of the XML, names, zones and definitions.
#include <doctest/doctest.h>

#include <sys/stat.h>

#include <string>

#include "common/config.h"
#include "common/domain.h"
#include "common/domain_file.h"
#include "common/vm_name.h"
#include "common/zone_network.h"
#include "tests/support/temp_dir.h"

namespace {

// Longer than any message needs: a file path, a capped value (64 characters, escaped: 4 bytes
// each at worst) and the sentence around them.
constexpr size_t kMaxMessage = 600;

const std::string kHostile = "evil\n\x1b[31mred\r\x07";
const std::string kXmlHostile = "evil\nfake line";
const std::string kLong(5000, 'a');

std::string domain_xml(const std::string& name, const std::string& devices, const std::string& os = "") {
  return "<domain type='qemu'>\n  <name>" + name + "</name>\n  <memory unit='MiB'>64</memory>\n" + os +
         "  <devices>\n    <emulator>/usr/bin/qemu-system-x86_64</emulator>\n" + devices + "  </devices>\n</domain>\n";
}

std::string nic(const std::string& source, const std::string& mac = "52:54:00:12:34:56") {
  return "    <interface type='" + std::string(source.rfind("network=", 0) == 0 ? "network" : "bridge") + "'><mac address='" +
         mac + "'/><source " + source + "/><model type='virtio'/></interface>\n";
}

// One printable line, bounded, quoting `value` as quote_for_message() does (a prefix of it is
// enough: the quote is capped).
void check_message(const std::string& message, const std::string& value) {
  INFO("message: " << message);
  CHECK(!message.empty());
  CHECK(message.size() <= kMaxMessage);
  bool printable = true;
  for (unsigned char c : message) printable = printable && c >= 0x20 && c < 0x7f;
  CHECK(printable);
  if (!value.empty()) {
    std::string quoted = vl::quote_for_message(value);
    std::string head = quoted.substr(0, std::min<size_t>(quoted.size() - 1, 12));
    CHECK_MESSAGE(message.find(head) != std::string::npos, "expected " << head);
  }
}

std::string domain_error(const std::string& xml) {
  auto r = vl::parse_domain(xml, "/etc/vmlaunch/domains/web1.xml");
  REQUIRE_FALSE(r.ok());
  return r.error().message();
}

vl::HostConfig zones_config() {
  auto config = vl::parse_config("[zones.dmz]\nbridge = \"br-dmz\"\n", "vmlaunch.toml");
  REQUIRE_MESSAGE(config.ok(), config.error().message());
  return *config;
}

std::string network_error(const std::string& network) {
  auto domain = vl::parse_domain(domain_xml("web1", nic("network='" + network + "'")), "web1.xml");
  if (!domain) return domain.error().message();  // not even a zone's name
  auto resolved = vl::resolve_networks(*domain, zones_config());
  REQUIRE_FALSE(resolved.ok());
  return resolved.error().message();
}

}  // namespace

TEST_SUITE("common/error_messages") {
  TEST_CASE("XML that is not well-formed: one line naming the file") {
    std::string message = domain_error("<domain type='qemu'>\n<name>web1</name>\n<devices>\n");
    check_message(message, "");
    CHECK(message.find("web1.xml") != std::string::npos);
  }

  TEST_CASE("a VM name with newlines and escape codes is quoted escaped, in the XML and on the command line") {
    // XML 1.0 cannot carry escape codes at all; a line break it can.
    check_message(domain_error(domain_xml(kXmlHostile, "")), kXmlHostile);
    auto parsed = vl::VmName::parse(kHostile);
    REQUIRE_FALSE(parsed.ok());
    check_message(parsed.error().message(), kHostile);
  }

  TEST_CASE("a VM name of 5000 characters is capped") {
    check_message(domain_error(domain_xml(kLong, "")), kLong);
    auto parsed = vl::VmName::parse(kLong);
    REQUIRE_FALSE(parsed.ok());
    check_message(parsed.error().message(), kLong);
  }

  TEST_CASE("hostile and overlong attribute values are quoted, escaped and capped") {
    // In an attribute a line break survives only as a character reference.
    for (const auto& [in_xml, value] : {std::pair<std::string, std::string>{"evil&#10;fake line", kXmlHostile},
                                        {kLong, kLong}}) {
      CAPTURE(value.size());
      check_message(domain_error(domain_xml("web1", nic("bridge='br-dmz'", in_xml))), value);
      check_message(domain_error(domain_xml("web1", "    <graphics type='" + in_xml + "'/>\n")), value);
      check_message(domain_error(domain_xml("web1", "    <disk type='" + in_xml + "' device='disk'/>\n")), value);
      check_message(domain_error(domain_xml("web1", "    <disk type='file' device='disk'><driver type='" + in_xml +
                                                        "'/><source file='/srv/a.img'/></disk>\n")),
                    value);
      check_message(domain_error(domain_xml("web1", "    <interface type='" + in_xml + "'/>\n")), value);
      std::string typed = domain_xml("web1", "");
      typed.replace(typed.find("type='qemu'"), 11, "type='" + in_xml + "'");
      check_message(domain_error(typed), value);
    }
    // An element name has no line breaks, but no bound either.
    check_message(domain_error(domain_xml("web1", "    <" + kLong + "/>\n")), "<" + kLong + ">");
  }

  TEST_CASE("an unknown zone is named, quoted; a hostile or overlong one escaped and capped") {
    std::string unknown = network_error("nosuch");
    check_message(unknown, "nosuch");
    check_message(network_error("evil&#10;fake line"), kXmlHostile);
    check_message(network_error(kLong), kLong);
  }

  TEST_CASE("an unknown VM is named, quoted") {
    vl::test::TempDir dir;
    vl::HostConfig config;
    config.domains_dir = dir.path();
    config.daemon_group = "root";  // a group every host has
    auto vm = vl::VmName::parse("nosuch").value();
    auto loaded = vl::load_domain_definition(config, vm);
    REQUIRE_FALSE(loaded.ok());
    check_message(loaded.error().message(), "nosuch");
    CHECK(loaded.error().message().find(": No such file or directory") == std::string::npos);
  }

  TEST_CASE("configuration values are quoted and capped") {
    for (const std::string& value : {kHostile, kLong}) {
      auto config = vl::parse_config("[zones.dmz]\nbridge = \"" + std::string(value == kHostile ? "evil\\n\\u001b[31m" : value) + "\"\n",
                                     "vmlaunch.toml");
      REQUIRE_FALSE(config.ok());
      check_message(config.error().message(), value == kHostile ? "evil\n\x1b[31m" : value);
    }
  }
}
