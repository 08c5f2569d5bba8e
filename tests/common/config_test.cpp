#include "common/config.h"

#include <doctest/doctest.h>

#include <regex>
#include <sstream>

#include "common/sys.h"

using vl::parse_config;

namespace {
std::string error_of(std::string_view toml) {
  auto r = parse_config(toml, "/etc/vmlaunch/vmlaunch.toml");
  REQUIRE_FALSE(r.ok());
  return r.error().context;
}

// Every value the file can set, side by side, so that two configurations compare in one CHECK
// and a difference shows which key it is.
std::string describe(const vl::HostConfig& c) {
  std::ostringstream o;
  o << "domains=" << c.domains_dir << " runtime=" << c.runtime_dir << " state=" << c.state_dir
    << " cache=" << c.cache_dir << " udev_rules=" << c.udev_rules_dir << " userdb=" << c.userdb_dir
    << " daemon_user=" << c.daemon_user << " daemon_group=" << c.daemon_group
    << " admin_group=" << c.admin_group << " vm_group=" << c.vm_group << " uids=" << c.uids.first
    << "+" << c.uids.count << " control=" << c.control.max_connections << "/"
    << c.control.max_connections_per_uid << "/" << c.control.max_message_kib << "/"
    << c.control.message_timeout << " readonly_group=" << c.readonly_group << " tls=" << c.tls.listen << ","
    << c.tls.cert << "," << c.tls.key << "," << c.tls.ca << ",admins:";
  for (const auto& d : c.tls.admin_dns) o << d << ";";
  o << ",readers:";
  for (const auto& d : c.tls.readonly_dns) o << d << ";";
  o << " vnc=" << c.vnc.tls << "," << c.vnc.tls_dir << "," << c.vnc.verify_client;
  o << " roots=";
  for (const auto& r : c.storage_roots) o << r << ",";
  o << " emulators=";
  for (const auto& e : c.emulators) o << e << ",";
  o << " zones=";
  for (const auto& z : c.zones) o << z.name << ":" << z.bridge << ",";
  return o.str();
}

// The shipped file with its '#key = value' and '#[table]' lines made live.
std::string uncommented(const std::string& text, int& made_live) {
  static const std::regex setting(R"(^#(\[|[a-z_]+ = ))");
  std::istringstream in(text);
  std::string out, line;
  made_live = 0;
  while (std::getline(in, line)) {
    if (std::regex_search(line, setting)) {
      line.erase(0, 1);
      ++made_live;
    }
    out += line + "\n";
  }
  return out;
}
}  // namespace

TEST_SUITE("common/config") {
  // packaging/install/vmlaunch.toml is installed as /etc/vmlaunch/vmlaunch.toml.
  TEST_CASE("the shipped default file parses to the defaults, and its commented-out values are the defaults") {
    const std::string path = VMLAUNCH_SHIPPED_CONFIG;
    auto shipped = vl::load_config(path);
    REQUIRE_MESSAGE(shipped.ok(), (shipped.ok() ? "" : shipped.error().context));
    const vl::HostConfig defaults;
    CHECK(describe(*shipped) == describe(defaults));

    auto text = vl::sys::read_file(path, 1 << 20);
    REQUIRE(text.ok());
    int made_live = 0;
    auto live = parse_config(uncommented(*text, made_live), path);
    REQUIRE_MESSAGE(live.ok(), (live.ok() ? "" : live.error().context));
    CHECK(made_live > 10);
    // Made live, the file says what the defaults say, plus its two example zones.
    vl::HostConfig expected;
    expected.zones = {{"dmz", "br-dmz"}, {"intranet", "br-intra"}};
    CHECK(describe(*live) == describe(expected));
  }

  TEST_CASE("an empty file gives the documented defaults") {
    auto r = parse_config("", "x.toml");
    REQUIRE(r.ok());
    CHECK(r->domains_dir == "/etc/vmlaunch/domains");
    CHECK(r->runtime_dir == "/run/vmlaunch");
    CHECK(r->control_socket() == "/run/vmlaunch/control.sock");
    CHECK(r->uids.first == 70000);
    CHECK(r->emulators == std::vector<std::string>{"/usr/bin/qemu-system-x86_64"});
    CHECK(r->zones.empty());
  }

  TEST_CASE("a full file is read") {
    auto r = parse_config(R"(
[paths]
domains = "/srv/vm/domains"
runtime = "/run/vl"
state = "/var/lib/vl"
cache = "/var/cache/vl"

[users]
daemon_user = "vld"
daemon_group = "vld"
admin_group = "vmadmin"
vm_uid_first = 200000
vm_uid_count = 500

[storage]
roots = ["/srv/images", "/dev/vg0"]

[emulators]
allowed = ["/usr/bin/qemu-system-x86_64", "/usr/bin/qemu-system-aarch64"]

[zones.dmz]
bridge = "br-dmz"

[zones.intranet]
bridge = "br-lan"
)", "x.toml");
    REQUIRE(r.ok());
    CHECK(r->domains_dir == "/srv/vm/domains");
    CHECK(r->admin_group == "vmadmin");
    CHECK(r->uids.first == 200000);
    CHECK(r->uids.contains(200499));
    CHECK_FALSE(r->uids.contains(200500));
    CHECK(r->storage_roots.size() == 2);
    REQUIRE(r->zone_named("dmz"));
    CHECK(r->zone_named("dmz")->bridge == "br-dmz");
    CHECK(r->zone_of_bridge("br-lan")->name == "intranet");
    CHECK(r->emulator_allowed("/usr/bin/qemu-system-aarch64"));
    CHECK_FALSE(r->emulator_allowed("/bin/sh"));
  }

  TEST_CASE("errors name file, line and key") {
    struct Case {
      const char* toml;
      const char* expected;
    };
    const Case cases[] = {
        {"[paths]\ndomain = \"/x\"\n", "vmlaunch.toml:2: key 'paths.domain': unknown key"},
        {"\n\n[storage]\nroots = \"/srv\"\n", ":4: key 'storage.roots': expected an array"},
        {"[paths]\nruntime = 5\n", ":2: key 'paths.runtime': expected a string"},
        {"[paths]\ncache = \"var/cache\"\n", ":2: key 'paths.cache': expected an absolute path"},
        {"[paths]\ncache = \"/var/../etc\"\n", "absolute path"},
        {"bogus = 1\n", ":1: key 'bogus': unknown key"},
        {"[zones.dmz]\nbridge = \"br0\"\n[zones.lan]\nbridge = \"br0\"\n", "already zone 'dmz'"},
        {"[zones.dmz]\nbridge = \"this-name-is-too-long\"\n", "not a valid interface name"},
        {"[zones.dmz]\nbrige = \"br0\"\n", "key 'zones.dmz.brige': unknown key"},
        {"[zones.DMZ]\nbridge = \"br0\"\n", "zone names are"},
        {"[users]\nvm_uid_first = 500\n", "key 'users.vm_uid_first': range overlaps system users"},
        {"[users]\nvm_uid_first = 60000\nvm_uid_count = 5000\n", "overlaps systemd dynamic users"},
        {"[users]\nvm_uid_first = 65000\nvm_uid_count = 1000\n", "overlaps"},
        {"[users]\nvm_uid_count = 0\n", "at least 1"},
        {"[users]\nvm_uid_first = -3\n", "out of range"},
        {"[storage]\nroots = [\"/\"]\n", "system directory"},
        {"[storage]\nroots = [\"/etc\"]\n", "system directory"},
        {"[storage]\nroots = [\"/srv\", \"/srv\"]\n", "listed twice"},
        {"[users]\nadmin_group = \"bad group\"\n", "key 'users.admin_group': 'bad group' is not a valid user or group name"},
        {"[users]\nvm_uid_count = 0\n", "key 'users.vm_uid_count'"},
        {"[paths\n", "vmlaunch.toml:1:"},
        {"[control]\nmax_connections = 0\n", "key 'control.max_connections': must be 1-512"},
        {"[control]\nmax_connections = 4\nmax_connections_per_uid = 5\n", "key 'control.max_connections_per_uid'"},
        {"[control]\nmax_message_kib = 1\n", "key 'control.max_message_kib': must be 4-131072"},
        {"[control]\nmessage_timeout = 0\n", "key 'control.message_timeout'"},
        {"[control]\nmax_clients = 3\n", "key 'control.max_clients': unknown key"},
        {"[control]\nreadonly_group = \"a b\"\n", "key 'control.readonly_group': 'a b' is not a valid group name"},
        {"[control]\nreadonly_group = \"vmlaunch-admin\"\n", "key 'control.readonly_group': is the admin group"},
        {"[tls]\nlisten = \"0.0.0.0\"\n", "key 'tls.listen': '0.0.0.0' is not ADDRESS:PORT"},
        {"[tls]\nlisten = \"0.0.0.0:0\"\n", "key 'tls.listen'"},
        {"[tls]\nlisten = \"0.0.0.0:65536\"\n", "key 'tls.listen'"},
        {"[tls]\nlisten = \"[::1:16514\"\n", "key 'tls.listen'"},
        {"[tls]\nlisten = \"host name:1\"\n", "key 'tls.listen'"},
        {"[tls]\nkey = \"serverkey.pem\"\n", "key 'tls.key': expected an absolute path"},
        {"[tls]\nadmin_dns = \"CN=*\"\n", "key 'tls.admin_dns': expected an array of strings"},
        {"[tls]\nadmin_dns = [\"\"]\n", "key 'tls.admin_dns': '' is not a DN pattern"},
        {"[tls]\nreadonly_dns = [\"CN=a\", \"CN=a\"]\n", "key 'tls.readonly_dns': 'CN=a' is listed twice"},
        {"[tls]\nallowed_dns = []\n", "key 'tls.allowed_dns': unknown key"},
    };
    for (const auto& c : cases) {
      CAPTURE(c.toml);
      std::string err = error_of(c.toml);
      CAPTURE(err);
      CHECK(err.find(c.expected) != std::string::npos);
      CHECK(err.rfind("/etc/vmlaunch/vmlaunch.toml:", 0) == 0);
    }
  }

  TEST_CASE("control socket limits: documented defaults, and the [control] section overrides them") {
    auto defaults = vl::parse_config("", "/etc/vmlaunch/vmlaunch.toml");
    REQUIRE(defaults.ok());
    CHECK(defaults->control.max_connections == 64);
    CHECK(defaults->control.max_connections_per_uid == 16);
    CHECK(defaults->control.max_message_kib == 1024);
    CHECK(defaults->control.message_timeout == 10);
    auto set = vl::parse_config("[control]\nmax_connections = 8\nmax_connections_per_uid = 2\n"
                                "max_message_kib = 64\nmessage_timeout = 3\n",
                                "/etc/vmlaunch/vmlaunch.toml");
    REQUIRE(set.ok());
    CHECK(set->control.max_connections == 8);
    CHECK(set->control.max_connections_per_uid == 2);
    CHECK(set->control.max_message_kib == 64);
    CHECK(set->control.message_timeout == 3);
  }

  TEST_CASE("the read-only group and the TLS listener: off by default, read from [control] and [tls]") {
    auto defaults = vl::parse_config("", "/etc/vmlaunch/vmlaunch.toml");
    REQUIRE(defaults.ok());
    CHECK(defaults->readonly_group.empty());
    CHECK(defaults->tls.listen.empty());
    CHECK(defaults->tls.cert == "/etc/pki/vmlaunch/servercert.pem");
    CHECK(defaults->tls.key == "/etc/pki/vmlaunch/private/serverkey.pem");
    CHECK(defaults->tls.ca == "/etc/pki/vmlaunch/cacert.pem");
    CHECK(defaults->tls.admin_dns.empty());
    auto set = vl::parse_config("[control]\nreadonly_group = \"vmlaunch-ro\"\n[tls]\nlisten = \"[::]:16514\"\n"
                                "cert = \"/srv/c.pem\"\nkey = \"/srv/k.pem\"\nca = \"/srv/ca.pem\"\n"
                                "admin_dns = [\"CN=*,OU=ops,O=Example\"]\nreadonly_dns = [\"CN=*,O=Example\"]\n",
                                "/etc/vmlaunch/vmlaunch.toml");
    REQUIRE_MESSAGE(set.ok(), (set.ok() ? "" : set.error().context));
    CHECK(set->readonly_group == "vmlaunch-ro");
    CHECK(set->tls.listen == "[::]:16514");
    CHECK(set->tls.cert == "/srv/c.pem");
    CHECK(set->tls.key == "/srv/k.pem");
    CHECK(set->tls.ca == "/srv/ca.pem");
    CHECK(set->tls.admin_dns == std::vector<std::string>{"CN=*,OU=ops,O=Example"});
    CHECK(set->tls.readonly_dns == std::vector<std::string>{"CN=*,O=Example"});
  }

  TEST_CASE("VNC over TLS: off by default, read from [vnc], strict about types and paths") {
    auto defaults = vl::parse_config("", "x.toml");
    REQUIRE(defaults.ok());
    CHECK_FALSE(defaults->vnc.tls);
    CHECK(defaults->vnc.tls_dir == "/etc/pki/vmlaunch-vnc");
    CHECK_FALSE(defaults->vnc.verify_client);
    auto set = vl::parse_config("[vnc]\ntls = true\ntls_dir = \"/srv/pki/vnc\"\ntls_verify_client = true\n", "x.toml");
    REQUIRE_MESSAGE(set.ok(), (set.ok() ? "" : set.error().context));
    CHECK(set->vnc.tls);
    CHECK(set->vnc.tls_dir == "/srv/pki/vnc");
    CHECK(set->vnc.verify_client);
    auto name = vl::VmName::parse("web1");
    REQUIRE(name.ok());
    CHECK(set->vnc_tls_dir(*name) == "/run/vmlaunch/vnc-tls/web1");
    struct Bad {
      const char* text;
      const char* expected;
    } bad[] = {
        {"[vnc]\ntls = \"yes\"\n", "x.toml:2: key 'vnc.tls': expected true or false"},
        {"[vnc]\ntls = 1\n", "key 'vnc.tls': expected true or false"},
        {"[vnc]\ntls_verify_client = \"on\"\n", "key 'vnc.tls_verify_client': expected true or false"},
        {"[vnc]\ntls_dir = \"pki/vnc\"\n", "key 'vnc.tls_dir': expected an absolute path"},
        {"[vnc]\ntls_dir = \"/etc/pki/../vnc\"\n", "key 'vnc.tls_dir': expected an absolute path"},
        {"[vnc]\ntls_x509_cert_dir = \"/etc/pki/vnc\"\n", "key 'vnc.tls_x509_cert_dir': unknown key"},
        {"vnc = true\n", "key 'vnc': expected a table"},
    };
    for (const Bad& b : bad) {
      CAPTURE(b.text);
      auto r = vl::parse_config(b.text, "x.toml");
      REQUIRE_FALSE(r.ok());
      CHECK(r.error().context.find(b.expected) != std::string::npos);
    }
  }

  TEST_CASE("HOST:PORT: names, IPv4, bracketed IPv6, and the default port") {
    struct Row {
      const char* text;
      uint16_t default_port;
      const char* host;  // nullptr: rejected
      uint16_t port;
    };
    const Row rows[] = {
        {"0.0.0.0:16514", 0, "0.0.0.0", 16514},  {"[::]:16514", 0, "::", 16514},
        {"[::1]", 22, "::1", 22},                {"host.example:2222", 22, "host.example", 2222},
        {"host", 16514, "host", 16514},          {"host", 0, nullptr, 0},
        {"host:", 22, nullptr, 0},               {"host:x", 22, nullptr, 0},
        {":22", 22, nullptr, 0},                 {"[]:22", 22, nullptr, 0},
        {"host:65536", 22, nullptr, 0},          {"host:0", 22, nullptr, 0},
        {"-oProxyCommand=x", 22, nullptr, 0},    // would be an option to ssh
        {"a;b:1", 22, nullptr, 0},               {"[::1]x", 22, nullptr, 0},
    };
    for (const Row& r : rows) {
      CAPTURE(r.text);
      auto hp = vl::split_host_port(r.text, r.default_port);
      CHECK(hp.has_value() == (r.host != nullptr));
      if (hp && r.host) {
        CHECK(hp->host == r.host);
        CHECK(hp->port == r.port);
      }
    }
  }

  TEST_CASE("NUL bytes and invalid UTF-8 are rejected") {
    CHECK(error_of(std::string_view("a = 1\0", 6)).find("NUL") != std::string::npos);
    error_of("[zones.dmz]\nbridge = \"br\xff\"\n");
  }

  TEST_CASE("interface name validation") {
    CHECK(vl::is_valid_ifname("br-dmz"));
    CHECK(vl::is_valid_ifname("abcdefghijklmno"));
    CHECK_FALSE(vl::is_valid_ifname("abcdefghijklmnop"));
    CHECK_FALSE(vl::is_valid_ifname(""));
    CHECK_FALSE(vl::is_valid_ifname(".."));
    CHECK_FALSE(vl::is_valid_ifname("br/0"));
    CHECK_FALSE(vl::is_valid_ifname("br 0"));
  }

  TEST_CASE("a table header that starts with a character no key can start with is an error") {
    // Found by fuzz/config_fuzzer: toml++ 3.3.0 asserts instead of reporting these, and
    // assertions are on in vmlaunch's default build type, so a typo aborted every program.
    for (const char* text : {"[*]", "[ *]", "[[*", "[*", "[zones]\n[+x]\n"}) {
      CAPTURE(std::string(text));
      auto r = vl::parse_config(text, "/etc/vmlaunch/vmlaunch.toml");
      REQUIRE_FALSE(r.ok());
      CHECK(r.error().context.find("/etc/vmlaunch/vmlaunch.toml:") == 0);
      CHECK(r.error().context.find("expected bare key starting character") != std::string::npos);
    }
  }
}
