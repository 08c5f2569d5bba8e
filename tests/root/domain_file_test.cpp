// Domain definitions hold what root acts on and the VM's secrets (the VNC password): root
// uses one only when root alone can change it and only root and the daemon's group can read
// it (common/domain_file.h), and the daemon reports the same refusal.
#include <doctest/doctest.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/support/system_env.h"

using vl::test::HelperEnv;
using vl::test::owner_and_mode;

TEST_SUITE("root/domain_file") {
  TEST_CASE("a domain file others could read or change is refused by the helper, naming it, and nothing changes") {
    HelperEnv env;
    env.define({.name = "web1"});
    std::string xml = env.root() + "/domains/web1.xml";
    REQUIRE(owner_and_mode(xml) == "0:0 0640");  // what define() writes, root:DAEMON_GROUP (root here)
    struct Case {
      const char* what;
      mode_t mode;
      uid_t owner;
      const char* problem;
    };
    const Case cases[] = {
        {"world-readable, as the demo used to write it", 0644, 0, "is readable by others"},
        {"group-writable", 0660, 0, "is writable by group or others"},
        {"world-writable", 0646, 0, "is writable by group or others"},
        {"owned by a user", 0640, 65534, "is not owned by root"},
    };
    for (const Case& c : cases) {
      INFO(std::string(c.what));
      REQUIRE(::chown(xml.c_str(), c.owner, 0) == 0);
      REQUIRE(::chmod(xml.c_str(), c.mode) == 0);
      vl::test::check_launch_refused(env, "web1", "domain file '" + xml + "' " + c.problem);
      vl::test::check_launch_refused(env, "web1", "chown root:root " + xml + "; chmod 0640 " + xml);
      REQUIRE(::chown(xml.c_str(), 0, 0) == 0);
      REQUIRE(::chmod(xml.c_str(), 0640) == 0);
    }

    // A symlink, even to a root-owned 0640 file: its target's directory is not checked.
    std::string elsewhere = env.root() + "/elsewhere.xml";
    std::filesystem::rename(xml, elsewhere);
    std::filesystem::create_symlink(elsewhere, xml);
    vl::test::check_launch_refused(env, "web1", "domain file '" + xml + "' is a symbolic link");
    std::filesystem::remove(xml);
    std::filesystem::rename(elsewhere, xml);

    // A domains directory someone else could write to: they could swap the file.
    std::string dir = env.root() + "/domains";
    for (mode_t mode : {mode_t{0777}, mode_t{0775}, mode_t{01777}}) {
      INFO(mode);
      REQUIRE(::chmod(dir.c_str(), mode) == 0);
      vl::test::check_launch_refused(env, "web1", "domains directory '" + dir + "'");
    }
    REQUIRE(::chmod(dir.c_str(), 0755) == 0);
    REQUIRE(::chown(dir.c_str(), 65534, 0) == 0);
    vl::test::check_launch_refused(env, "web1", "domains directory '" + dir + "'");
    REQUIRE(::chown(dir.c_str(), 0, 0) == 0);

    // root:DAEMON_GROUP 0640 launches.
    auto r = env.launch("web1");
    REQUIRE_MESSAGE(r.running(), r.log);
    env.kill_vm(r.pid);
    (void)env.helper({"cleanup", "web1"});
  }

  TEST_CASE("the daemon reports a world-readable domain file in list, status and start, and starts it once fixed") {
    vl::test::SystemEnv env;
    env.define({.name = "web1", .zone = "dmz"});
    std::string xml = env.root() + "/domains/web1.xml";
    REQUIRE(owner_and_mode(xml) == "0:65534 0640");  // root:nogroup, the daemon's group here
    REQUIRE(::chmod(xml.c_str(), 0644) == 0);
    std::string expected = "domain file '" + xml + "' is readable by others";
    auto list = env.vmctl({"list"});
    CHECK_MESSAGE(list.out.find(expected) != std::string::npos, list.out);
    auto status = env.vmctl({"status", "web1"});
    CHECK(status.exit_code != 0);
    CHECK_MESSAGE(status.out.find(expected) != std::string::npos, status.out);
    auto start = env.vmctl({"start", "web1"});
    CHECK(start.exit_code != 0);
    CHECK_MESSAGE(start.out.find(expected) != std::string::npos, start.out);

    REQUIRE(::chmod(xml.c_str(), 0640) == 0);
    auto fixed = env.vmctl({"start", "web1"});
    CHECK_MESSAGE(fixed.exit_code == 0, fixed.out);
    CHECK(env.vmctl({"stop", "web1", "--force"}).exit_code == 0);
  }

  TEST_CASE("vmlaunchd plan still reads an operator's file of any owner and mode") {
    HelperEnv env;
    std::string xml = env.define({.name = "web1"});
    std::string draft = env.root() + "/draft.xml";
    std::ofstream(draft) << xml;
    REQUIRE(::chmod(draft.c_str(), 0666) == 0);
    REQUIRE(::chown(draft.c_str(), 65534, 65534) == 0);
    auto r = vl::test::run_program(vl::test::build_path("VMLAUNCH_DAEMON"),
                                   {"vmlaunchd", "--config", env.config_path(), "plan", draft});
    CHECK_MESSAGE(r.exit_code == 0, r.out);
    CHECK_MESSAGE(r.out.find("\"argv\"") != std::string::npos, r.out);
  }
}
