#include "common/domain_file.h"

#include <doctest/doctest.h>

#include <string>

namespace {

constexpr gid_t kDaemonGid = 123;

struct stat file_stat(mode_t type_and_mode, uid_t uid, gid_t gid, nlink_t links = 1) {
  struct stat st {};
  st.st_mode = type_and_mode;
  st.st_uid = uid;
  st.st_gid = gid;
  st.st_nlink = links;
  return st;
}

}  // namespace

TEST_SUITE("common/domain_file") {
  TEST_CASE("a domain file is accepted only when root alone writes it and only root and the daemon's group read it") {
    struct Case {
      const char* what;
      struct stat st;
      const char* problem;  // nullptr: accepted
    };
    const Case cases[] = {
        {"root:daemon 0640", file_stat(S_IFREG | 0640, 0, kDaemonGid), nullptr},
        {"root:daemon 0440", file_stat(S_IFREG | 0440, 0, kDaemonGid), nullptr},
        {"root:root 0600", file_stat(S_IFREG | 0600, 0, 0), nullptr},
        {"root:root 0640", file_stat(S_IFREG | 0640, 0, 0), nullptr},
        {"root:other 0600 (group cannot read)", file_stat(S_IFREG | 0600, 0, 999), nullptr},
        {"root:daemon 0644", file_stat(S_IFREG | 0644, 0, kDaemonGid), "is readable by others"},
        {"root:daemon 0604", file_stat(S_IFREG | 0604, 0, kDaemonGid), "is readable by others"},
        {"root:daemon 0660", file_stat(S_IFREG | 0660, 0, kDaemonGid), "is writable by group or others"},
        {"root:daemon 0642", file_stat(S_IFREG | 0642, 0, kDaemonGid), "is writable by group or others"},
        {"root:other 0640", file_stat(S_IFREG | 0640, 0, 999), "is readable by group 999"},
        {"user-owned 0640", file_stat(S_IFREG | 0640, 1000, kDaemonGid), "is not owned by root"},
        {"user-owned 0600", file_stat(S_IFREG | 0600, 1000, 0), "is not owned by root"},
        {"two hard links", file_stat(S_IFREG | 0640, 0, kDaemonGid, 2), "has 2 hard links"},
        {"a directory", file_stat(S_IFDIR | 0750, 0, kDaemonGid), "is not a regular file"},
        {"a FIFO", file_stat(S_IFIFO | 0640, 0, kDaemonGid), "is not a regular file"},
        {"a symlink (lstat)", file_stat(S_IFLNK | 0777, 0, 0), "is not a regular file"},
    };
    for (const Case& c : cases) {
      INFO(c.what);
      auto r = vl::check_domain_file(c.st, "/etc/vmlaunch/domains/web1.xml", "vmlaunch", kDaemonGid);
      if (!c.problem) {
        CHECK_MESSAGE(r.ok(), r.error().message());
        continue;
      }
      REQUIRE_FALSE(r.ok());
      const std::string& m = r.error().context;
      CHECK(r.error().code == vl::ErrorCode::kDenied);
      CHECK_MESSAGE(m.find("domain file '/etc/vmlaunch/domains/web1.xml' ") != std::string::npos, m);
      CHECK_MESSAGE(m.find(c.problem) != std::string::npos, m);
      CHECK_MESSAGE(m.find("owner " + std::to_string(c.st.st_uid) + ":" + std::to_string(c.st.st_gid)) != std::string::npos, m);
      CHECK_MESSAGE(m.find("chown root:vmlaunch /etc/vmlaunch/domains/web1.xml; chmod 0640 /etc/vmlaunch/domains/web1.xml") !=
                        std::string::npos, m);
    }
  }

  TEST_CASE("the mode in the message is the file's, in octal") {
    auto r = vl::check_domain_file(file_stat(S_IFREG | 0644, 0, 0), "/d/web1.xml", "vmlaunch", kDaemonGid);
    REQUIRE_FALSE(r.ok());
    CHECK_MESSAGE(r.error().context.find("(owner 0:0, mode 0644)") != std::string::npos, r.error().context);
  }

  TEST_CASE("the domains directory is accepted only when root alone can change it") {
    struct Case {
      const char* what;
      struct stat st;
      bool ok;
    };
    const Case cases[] = {
        {"root 0755", file_stat(S_IFDIR | 0755, 0, 0), true},
        {"root:daemon 0750", file_stat(S_IFDIR | 0750, 0, kDaemonGid), true},
        {"root 0700", file_stat(S_IFDIR | 0700, 0, 0), true},
        {"group-writable", file_stat(S_IFDIR | 0775, 0, kDaemonGid), false},
        {"world-writable", file_stat(S_IFDIR | 0777, 0, 0), false},
        {"world-writable and sticky", file_stat(S_IFDIR | 01777, 0, 0), false},
        {"owned by a user", file_stat(S_IFDIR | 0755, 1000, 0), false},
        {"not a directory", file_stat(S_IFREG | 0755, 0, 0), false},
    };
    for (const Case& c : cases) {
      INFO(c.what);
      auto r = vl::check_domains_dir(c.st, "/etc/vmlaunch/domains");
      CHECK(r.ok() == c.ok);
      if (!r.ok()) {
        CHECK(r.error().code == vl::ErrorCode::kDenied);
        CHECK_MESSAGE(r.error().context.find("domains directory '/etc/vmlaunch/domains'") != std::string::npos,
                      r.error().context);
      }
    }
  }
}
