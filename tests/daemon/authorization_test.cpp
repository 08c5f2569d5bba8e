// One authorization model for every transport: who a caller is, and what each role may call.
#include "daemon/authorization.h"

#include <doctest/doctest.h>

namespace {

const vl::LocalRoles kRoles{100, 200, "vmlaunch-admin", "vmlaunch-ro"};

}  // namespace

TEST_SUITE("daemon/authorization") {
  TEST_CASE("DN patterns match the whole DN, with * for any run of characters (libvirt's semantics)") {
    struct Row {
      const char* pattern;
      const char* dn;
      bool match;
    };
    const Row rows[] = {
        {"CN=alice,O=Example", "CN=alice,O=Example", true},
        {"CN=alice,O=Example", "CN=alice,O=Example,C=GB", false},  // whole DN, not a prefix
        {"CN=alice,O=Example", "CN=alicE,O=Example", false},       // case matters
        {"CN=*,O=Example", "CN=bob,O=Example", true},
        {"CN=*,O=Example", "CN=bob,O=Other", false},
        {"CN=*,O=Example", "CN=,O=Example", true},                 // * matches the empty run
        {"*,O=Example", "CN=x,OU=ops,O=Example", true},
        {"CN=admin-*", "CN=admin-1", true},
        {"CN=admin-*", "CN=user,CN=admin-1", false},
        {"*", "anything at all", true},
        {"CN=a*b*c", "CN=aXXbYYc", true},
        {"CN=a*b*c", "CN=aXXbYYcd", false},
        {"CN=?", "CN=x", false},                                   // only * is special
        {"", "", true},
        {"", "CN=x", false},
    };
    for (const Row& r : rows) {
      CAPTURE(r.pattern);
      CAPTURE(r.dn);
      CHECK(vl::dn_matches(r.pattern, r.dn) == r.match);
    }
  }

  // subject_dn escapes a ',' or '+' inside a value as "\," and "\+" (RFC 2253). A '*' that could
  // end on such a backslash would let the pattern's next ',' match the escaped one: a CN that
  // ends in ",OU=ops" would pass for a member of OU=ops.
  TEST_CASE("a * never ends inside an escape: a value with an escaped comma is not read as more RDNs") {
    struct Row {
      const char* pattern;
      const char* dn;
      bool match;
    };
    // Raw strings: the DN as subject_dn prints it, backslashes and all.
    const Row rows[] = {
        {R"(CN=*,O=Example)", R"(CN=x\\,O=Example)", true},              // CN "x\": the comma separates
        {R"(CN=*,O=Example)", R"(CN=x\\\,O=Example)", false},            // CN "x\,O=Example"
        {R"(CN=*,O=Example)", R"(CN=x\,O=Example)", false},              // CN "x,O=Example", no O
        {R"(CN=*,O=Example)", R"(CN=x,O=Evil\,O=Example)", false},       // O "Evil,O=Example"
        {R"(CN=*,OU=ops,O=Example)", R"(CN=mole\,OU=ops,O=Example)", false},
        {R"(*,O=Example)", R"(CN=x,OU=a\,O=Example)", false},
        {R"(CN=*,O=Example)", R"(CN=Smith\, John,O=Example)", true},     // an escaped comma inside the *
        {R"(CN=Smith\, John,O=Example)", R"(CN=Smith\, John,O=Example)", true},
        {R"(CN=Smith*,O=Example)", R"(CN=Smith\, John,O=Example)", true},
        {R"(CN=*,O=Example)", R"(CN=alice+UID=7,O=Example)", true},      // a multi-valued RDN, O=Example
        {R"(CN=*,O=Example)", R"(CN=alice\+O=Example)", false},          // CN "alice+O=Example"
        {R"(CN=caf\C3\A9,O=Example)", R"(CN=caf\C3\A9,O=Example)", true},  // escaped UTF-8
        {R"(CN=*\A9,O=Example)", R"(CN=caf\C3\A9,O=Example)", true},
    };
    for (const Row& r : rows) {
      CAPTURE(r.pattern);
      CAPTURE(r.dn);
      CHECK(vl::dn_matches(r.pattern, r.dn) == r.match);
    }
  }

  TEST_CASE("a hostile DN with many stars against a long DN is answered, not backtracked exponentially") {
    std::string pattern = "CN=" + std::string(200, '*') + "!";
    std::string dn = "CN=" + std::string(5000, 'a');
    CHECK_FALSE(vl::dn_matches(pattern, dn));
  }

  TEST_CASE("local peers: root, the admin group, the read-only group, anyone else") {
    CHECK(vl::local_identity(0, {}, kRoles).role == vl::Role::kRoot);
    CHECK(vl::local_identity(1000, {5, 100}, kRoles).role == vl::Role::kAdmin);
    CHECK(vl::local_identity(1000, {100, 200}, kRoles).role == vl::Role::kAdmin);  // the higher role wins
    CHECK(vl::local_identity(1000, {200}, kRoles).role == vl::Role::kReadOnly);
    CHECK(vl::local_identity(1000, {5}, kRoles).role == vl::Role::kNone);
    vl::LocalRoles no_readonly = kRoles;
    no_readonly.readonly_gid = static_cast<gid_t>(-1);
    no_readonly.readonly_group = "";
    CHECK(vl::local_identity(1000, {static_cast<gid_t>(-1)}, no_readonly).role == vl::Role::kNone);
    vl::Identity id = vl::local_identity(1000, {}, kRoles);
    CHECK(id.transport == "local");
    CHECK_FALSE(id.remote());
    CHECK(id.who.rfind("uid 1000", 0) == 0);
    CHECK(id.uid == 1000);
  }

  TEST_CASE("TLS peers get the role of the first list whose pattern matches their DN") {
    const std::vector<std::string> admins = {"CN=*,OU=ops,O=Example"}, readers = {"CN=*,O=Example"};
    vl::Identity admin = vl::tls_identity("CN=alice,OU=ops,O=Example", admins, readers);
    CHECK(admin.role == vl::Role::kAdmin);
    CHECK(admin.transport == "tls");
    CHECK(admin.remote());
    CHECK(admin.who == "certificate 'CN=alice,OU=ops,O=Example'");
    CHECK(vl::tls_identity("CN=bob,O=Example", admins, readers).role == vl::Role::kReadOnly);
    CHECK(vl::tls_identity("CN=eve,O=Evil", admins, readers).role == vl::Role::kNone);
    CHECK(vl::tls_identity("CN=eve,O=Evil", {}, {}).role == vl::Role::kNone);
    // No certificate ever becomes root: the root-only calls stay local.
    CHECK(vl::tls_identity("CN=root", {"*"}, {}).role == vl::Role::kAdmin);
  }

  TEST_CASE("each role may call exactly its methods; the refusal names the caller and what it lacks") {
    const char* kMethods[] = {"List", "Status", "Start", "Stop", "Shutdown", "Restart", "Kill",
                              "GetLaunchPlan", "Launched", "LaunchFailed", "StartWithPassphrase",
                              "TakePassphrase", "SomeFutureMethod"};
    vl::Identity root = vl::local_identity(0, {}, kRoles);
    vl::Identity admin = vl::local_identity(1000, {100}, kRoles);
    vl::Identity reader = vl::local_identity(1001, {200}, kRoles);
    vl::Identity stranger = vl::local_identity(1002, {}, kRoles);
    for (const char* m : kMethods) {
      CAPTURE(m);
      std::string_view method = m;
      bool read = method == "List" || method == "Status";
      bool root_only = method == "GetLaunchPlan" || method == "Launched" || method == "LaunchFailed" ||
                       method == "TakePassphrase";
      CHECK(vl::permit(root, method).ok());
      CHECK(vl::permit(admin, method).ok() == !root_only);
      CHECK(vl::permit(reader, method).ok() == read);
      CHECK_FALSE(vl::permit(stranger, method).ok());
    }
    auto refused = vl::permit(reader, "Start");
    REQUIRE_FALSE(refused.ok());
    CHECK(refused.error().code == vl::ErrorCode::kDenied);
    CHECK(refused.error().message().find("uid 1001") != std::string::npos);
    CHECK(refused.error().message().find("is read-only and may not call Start") != std::string::npos);
    auto stranger_refused = vl::permit(stranger, "List");
    REQUIRE_FALSE(stranger_refused.ok());
    CHECK(stranger_refused.error().message().find("is neither root nor in group 'vmlaunch-admin' or 'vmlaunch-ro'") !=
          std::string::npos);
    auto tls_refused = vl::permit(vl::tls_identity("CN=eve", {"CN=alice"}, {}), "List");
    REQUIRE_FALSE(tls_refused.ok());
    CHECK(tls_refused.error().message() ==
          "permission denied: certificate 'CN=eve' matches no allowed DN (tls.admin_dns, tls.readonly_dns)");
  }

  TEST_CASE("every remote call is audited; local calls only when they change something") {
    vl::Identity local_admin = vl::local_identity(1000, {100}, kRoles);
    vl::Identity remote_reader = vl::tls_identity("CN=r", {}, {"CN=r"});
    CHECK(vl::is_audited(local_admin, "Start"));
    CHECK(vl::is_audited(local_admin, "Kill"));
    CHECK_FALSE(vl::is_audited(local_admin, "List"));
    CHECK_FALSE(vl::is_audited(local_admin, "Status"));
    CHECK_FALSE(vl::is_audited(local_admin, "ChannelWrite"));
    CHECK(vl::is_audited(remote_reader, "List"));
    CHECK(vl::is_audited(remote_reader, "Status"));
  }

  TEST_CASE("a local peer relaying an SSH session is audited on every call, with the role of its uid") {
    vl::Identity relayed = vl::local_identity(1000, {200}, kRoles);
    relayed.from = vl::ssh_relay_claim("vmlaunch-ssh-relay 4321 192.0.2.7 40112");
    CHECK(relayed.from == "ssh client 192.0.2.7 port 40112");
    CHECK(vl::is_audited(relayed, "List"));
    CHECK(vl::is_audited(relayed, "Status"));
    CHECK_FALSE(vl::is_audited(relayed, "ChannelWrite"));  // a channel's bytes never are
    // The claim changes nothing it may call.
    CHECK(relayed.role == vl::Role::kReadOnly);
    CHECK(vl::permit(relayed, "List").ok());
    CHECK_FALSE(vl::permit(relayed, "Start").ok());
  }

  TEST_CASE("the SSH client a relay's socket name claims: an IP address and a port, or unreadable, or no claim") {
    struct Row {
      const char* name;
      const char* claim;
    };
    const Row rows[] = {
        {"vmlaunch-ssh-relay 4321 192.0.2.7 40112", "ssh client 192.0.2.7 port 40112"},
        {"vmlaunch-ssh-relay 1 2001:db8::7 22", "ssh client 2001:db8::7 port 22"},
        {"vmlaunch-ssh-relay 1 ::1 65535", "ssh client ::1 port 65535"},
        {"vmlaunch-ssh-relay 1 192.0.2.7 65536", "ssh client (unreadable address)"},
        {"vmlaunch-ssh-relay 1 192.0.2.7", "ssh client (unreadable address)"},
        {"vmlaunch-ssh-relay 1 192.0.2.7 22 extra", "ssh client (unreadable address)"},
        {"vmlaunch-ssh-relay 1 host.example 22", "ssh client (unreadable address)"},
        {"vmlaunch-ssh-relay 1 192.0.2.7\n[forged] 22", "ssh client (unreadable address)"},
        {"vmlaunch-ssh-relay x 192.0.2.7 22", "ssh client (unreadable address)"},
        {"vmlaunch-ssh-relay ", "ssh client (unreadable address)"},
        {"vmlaunch-ssh-relay", ""},
        {"", ""},
        {"some-other-name", ""},
    };
    for (const Row& r : rows) {
      CAPTURE(r.name);
      CHECK(vl::ssh_relay_claim(r.name) == r.claim);
    }
  }
}
