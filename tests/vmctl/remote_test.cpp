// vmctl -H: which URLs name a far daemon, and the ssh command line they become.
#include "vmctl/remote.h"

#include <doctest/doctest.h>

TEST_SUITE("vmctl/remote") {
  TEST_CASE("-H URLs: ssh:// and tls:// with their default ports; anything else is refused, naming the URL") {
    struct Row {
      const char* url;
      bool ok;
      vl::ctl::RemoteTarget::Kind kind;
      const char* user;
      const char* host;
      uint16_t port;
    };
    using K = vl::ctl::RemoteTarget::Kind;
    const Row rows[] = {
        {"ssh://vmhost", true, K::kSsh, "", "vmhost", 22},
        {"ssh://alice@vmhost.example:2222", true, K::kSsh, "alice", "vmhost.example", 2222},
        {"ssh://alice@[2001:db8::1]:2222/", true, K::kSsh, "alice", "2001:db8::1", 2222},
        {"ssh://192.0.2.10", true, K::kSsh, "", "192.0.2.10", 22},
        {"tls://vmhost", true, K::kTls, "", "vmhost", 16514},
        {"tls://vmhost:1234", true, K::kTls, "", "vmhost", 1234},
        {"vmhost", false, K::kSsh, "", "", 0},
        {"http://vmhost", false, K::kSsh, "", "", 0},
        {"ssh://", false, K::kSsh, "", "", 0},
        {"ssh://alice@", false, K::kSsh, "", "", 0},
        {"ssh://-oProxyCommand=sh", false, K::kSsh, "", "", 0},  // would be an option to ssh
        {"ssh://-l@vmhost", false, K::kSsh, "", "", 0},
        {"ssh://a b@vmhost", false, K::kSsh, "", "", 0},
        {"ssh://vm;host", false, K::kSsh, "", "", 0},
        {"ssh://vmhost:0", false, K::kSsh, "", "", 0},
        {"ssh://vmhost:99999", false, K::kSsh, "", "", 0},
        {"tls://alice@vmhost", false, K::kTls, "", "", 0},  // a user is ssh's
    };
    for (const Row& r : rows) {
      CAPTURE(r.url);
      auto t = vl::ctl::parse_remote(r.url);
      REQUIRE(t.ok() == r.ok);
      if (!t) {
        CHECK(t.error().message().rfind("host '", 0) == 0);
        // Each value quoted once: 'x', never ''x''.
        CHECK_MESSAGE(t.error().message().find("''") == std::string::npos, t.error().message());
        continue;
      }
      CHECK(t->kind == r.kind);
      CHECK(t->user == r.user);
      CHECK(t->host == r.host);
      CHECK(t->port == r.port);
    }
  }

  TEST_CASE("the ssh address runs ssh -xT with port, user and host after --, then vmctl dial-stdio") {
    auto t = vl::ctl::parse_remote("ssh://alice@vmhost.example:2222");
    REQUIRE(t.ok());
    CHECK(vl::ctl::ssh_bus_address(*t, "ssh") ==
          "unixexec:path=ssh,argv0=ssh,argv1=-xT,argv2=-p,argv3=2222,argv4=-l,argv5=alice,argv6=--,"
          "argv7=vmhost.example,argv8=vmctl,argv9=dial-stdio");
    auto no_user = vl::ctl::parse_remote("ssh://[::1]");
    REQUIRE(no_user.ok());
    CHECK(vl::ctl::ssh_bus_address(*no_user, "/opt/my ssh") ==
          "unixexec:path=/opt/my%20ssh,argv0=/opt/my%20ssh,argv1=-xT,argv2=-p,argv3=22,argv4=--,argv5=%3a%3a1,"
          "argv6=vmctl,argv7=dial-stdio");
  }

  TEST_CASE("address values escape everything but [A-Za-z0-9_/.-]") {
    CHECK(vl::ctl::bus_address_escape("a-Z_0/.") == "a-Z_0/.");
    CHECK(vl::ctl::bus_address_escape("a,b=c;d%") == "a%2cb%3dc%3bd%25");
    CHECK(vl::ctl::bus_address_escape("\xff") == "%ff");
  }
}
