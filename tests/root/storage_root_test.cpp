// Storage roots: only directories that root alone controls, and below /dev the links LVM makes.
#include <doctest/doctest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helper/uid_map.h"
#include "tests/support/helper_env.h"
#include "tests/support/loop_device.h"

using vl::test::HelperEnv;
using vl::test::owner_and_mode;

namespace {

// HelperEnv writes one storage root (ROOT/images); the helper re-reads the file on every run.
void add_storage_root(const HelperEnv& env, const std::string& root) {
  std::string toml = vl::sys::read_file(env.config_path(), 1 << 16).value();
  std::string images = "roots = [\"" + env.root() + "/images\"";
  auto at = toml.find(images);
  REQUIRE(at != std::string::npos);
  toml.insert(at + images.size(), ", \"" + root + "\"");
  std::ofstream(env.config_path()) << toml;
}

}  // namespace

TEST_SUITE("root/storage_root") {
  TEST_CASE("a storage root that someone besides root can change is refused, naming it, and nothing changes") {
    HelperEnv env;
    env.define({.name = "web1"});
    std::string images = env.root() + "/images";
    struct Case {
      const char* what;
      std::string dir;
      mode_t mode;
      uid_t owner;
    };
    const Case cases[] = {
        {"world-writable and sticky, like /dev/shm", images, 01777, 0},
        {"group-writable", images, 0775, 0},
        {"owned by another user", images, 0755, 65534},
        {"below a directory others can write to", env.root(), 0777, 0},
        {"below a directory of another user", env.root(), 0755, 65534},
    };
    for (const Case& c : cases) {
      INFO(std::string(c.what));
      REQUIRE(::chmod(c.dir.c_str(), c.mode) == 0);
      REQUIRE(::chown(c.dir.c_str(), c.owner, 0) == 0);
      vl::test::check_launch_refused(env, "web1", "storage root '" + images + "'");
      CHECK(owner_and_mode(images + "/web1.img") == "0:0 0644");
      REQUIRE(::chown(c.dir.c_str(), 0, 0) == 0);
      REQUIRE(::chmod(c.dir.c_str(), 0755) == 0);
    }
    // Above the root a sticky directory is fine (the test root itself lies in /tmp): others can
    // add entries there but not rename or remove root's.
    REQUIRE(::chmod(env.root().c_str(), 01777) == 0);
    auto r = env.launch("web1");
    REQUIRE_MESSAGE(r.running(), r.log);
    env.kill_vm(r.pid);
    CHECK(WEXITSTATUS(env.helper({"cleanup", "web1"}).status) == 0);
    REQUIRE(::chmod(env.root().c_str(), 0755) == 0);
  }

  TEST_CASE("with /dev/shm as a storage root, a planted link to a host block device is refused") {
    HelperEnv env;
    vl::test::LoopDevice loop(env.root() + "/loop.img");
    // What any local user can do: a link in /dev/shm that resolves inside /dev.
    std::string planted = "/dev/shm/vmlaunch-test-" + std::to_string(::getpid());
    std::filesystem::remove(planted);
    std::filesystem::create_symlink(".." + loop.path().substr(4), planted);
    add_storage_root(env, "/dev/shm");
    env.define({.name = "web1", .block_disk = planted});
    std::string loop_before = owner_and_mode(loop.path());
    vl::test::check_launch_refused(env, "web1", "storage root '/dev/shm'");
    CHECK(owner_and_mode(loop.path()) == loop_before);
    std::filesystem::remove(planted);
  }

  TEST_CASE("below a /dev root, absolute and relative links to block devices work; links out of /dev do not") {
    HelperEnv env;
    vl::test::LoopDevice loop(env.root() + "/loop.img");
    vl::test::TempDir vg("/dev");  // a directory of the test's own in the real /dev: LVM's /dev/VG
    REQUIRE(::chmod(vg.path().c_str(), 0755) == 0);
    // LVM without udev links /dev/VG/LV to /dev/mapper/VG-LV (absolute); udev links to ../dm-N.
    std::filesystem::create_symlink(loop.path(), vg.path() + "/absolute");
    std::filesystem::create_symlink(".." + loop.path().substr(4), vg.path() + "/relative");
    std::filesystem::create_symlink(vg.path() + "/absolute", vg.path() + "/chain");
    std::filesystem::create_symlink(env.root() + "/loop.img", vg.path() + "/outside");
    add_storage_root(env, vg.path());
    std::string loop_before = owner_and_mode(loop.path());

    for (const char* name : {"absolute", "relative", "chain"}) {
      INFO(std::string(name));
      env.define({.name = "web1", .block_disk = vg.path() + "/" + name});
      auto r = env.launch("web1");
      REQUIRE_MESSAGE(r.running(), r.log);
      std::string uid = std::to_string(vl::helper::read_uid_map(env.config()).value().at("web1"));
      CHECK(owner_and_mode(loop.path()) == uid + ":" + uid + " 0600");
      env.kill_vm(r.pid);
      CHECK(WEXITSTATUS(env.helper({"cleanup", "web1"}).status) == 0);
      CHECK(owner_and_mode(loop.path()) == loop_before);
    }

    env.define({.name = "web1", .block_disk = vg.path() + "/outside"});
    vl::test::check_launch_refused(env, "web1", "disk '" + vg.path() + "/outside' is a link out of /dev");
  }
}
