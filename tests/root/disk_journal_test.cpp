// The disk journal (STATE/disks/NAME.json) is what lets cleanup hand disks back: a record is
// never dropped before its disk is restored, and a journal that cannot be read blocks claims.
#include <doctest/doctest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>

#include <nlohmann/json.hpp>

#include "helper/uid_map.h"
#include "tests/support/helper_env.h"
#include "tests/support/loop_device.h"

using vl::test::HelperEnv;
using vl::test::owner_and_mode;

TEST_SUITE("root/disk_journal") {
  TEST_CASE("cleanup keeps the journal entry of a replaced disk, fails naming it, and restores the rest") {
    HelperEnv env;
    vl::test::LoopDevice loop(env.root() + "/loop.img");
    std::string node = env.root() + "/images/data";
    REQUIRE(::mknod(node.c_str(), S_IFBLK | 0640, loop.rdev()) == 0);
    env.define({.name = "web1", .block_disk = node});
    std::string disk = env.root() + "/images/web1.img";
    std::string journal = env.root() + "/state/disks/web1.json";

    auto vm = env.launch("web1");
    REQUIRE_MESSAGE(vm.running(), vm.log);
    env.kill_vm(vm.pid);
    // The image is replaced while the VM is down: the path now names another inode, which
    // cleanup must not touch; the inode the journal records (still the VM's) is elsewhere.
    std::filesystem::rename(disk, env.root() + "/moved.img");
    std::filesystem::copy_file(vl::test::build_path("VMLAUNCH_GUEST_IMG"), disk);
    ::chmod(disk.c_str(), 0644);

    for (int attempt = 0; attempt < 2; ++attempt) {
      CAPTURE(attempt);
      auto cleaned = env.helper({"cleanup", "web1"});
      CHECK(WEXITSTATUS(cleaned.status) == 1);
      CHECK_MESSAGE(cleaned.log.find("disk '" + disk + "'") != std::string::npos, cleaned.log);
      CHECK_MESSAGE(cleaned.log.find(journal) != std::string::npos, cleaned.log);
      // The replaced image is left alone, the block device is restored and leaves the journal.
      CHECK(owner_and_mode(disk) == "0:0 0644");
      CHECK(owner_and_mode(node) == "0:0 0640");
      REQUIRE(std::filesystem::exists(journal));
      auto kept = nlohmann::json::parse(vl::sys::read_file(journal, 1 << 20).value(), nullptr, false);
      REQUIRE(kept.is_object());
      REQUIRE(kept["disks"].size() == 1);
      CHECK(kept["disks"][0]["path"] == disk);
    }
    // A new launch would overwrite (and on failure delete) the record: it is refused.
    vl::test::check_launch_refused(env, "web1", "disk journal '" + journal + "'");
    CHECK(owner_and_mode(node) == "0:0 0640");

    // Once the operator has dealt with it by hand, cleanup and launch work again.
    std::filesystem::remove(journal);
    CHECK(WEXITSTATUS(env.helper({"cleanup", "web1"}).status) == 0);
    auto again = env.launch("web1");
    REQUIRE_MESSAGE(again.running(), again.log);
    env.kill_vm(again.pid);
    CHECK(WEXITSTATUS(env.helper({"cleanup", "web1"}).status) == 0);
    CHECK_FALSE(std::filesystem::exists(journal));
    CHECK(owner_and_mode(disk) == "0:0 0644");
    std::string uid = std::to_string(vl::helper::read_uid_map(env.config()).value().at("web1"));
    CHECK(owner_and_mode(env.root() + "/moved.img") == uid + ":" + uid + " 0600");  // what the operator deals with
  }

  TEST_CASE("a corrupt or unreadable journal of another VM refuses every claim, naming the journal") {
    HelperEnv env;
    env.define({.name = "web1"});
    std::string other = env.root() + "/state/disks/other.json";
    struct Case {
      const char* what;
      const char* content;  // nullptr: a directory, which cannot be read as a file
    };
    const Case cases[] = {
        {"not JSON", "{\"vm\":\"other\",\"disks\":[{\"path\""},
        {"no disk list", "{\"vm\":\"other\"}"},
        {"an entry with a field of the wrong type", "{\"vm\":\"other\",\"disks\":[{\"path\":\"/x\",\"dev\":\"one\",\"ino\":1,"
                                                   "\"uid\":0,\"gid\":0,\"mode\":420}]}"},
        {"an entry without its inode", "{\"vm\":\"other\",\"disks\":[{\"path\":\"/x\",\"dev\":1,\"uid\":0,\"gid\":0,\"mode\":420}]}"},
        {"unreadable", nullptr},
    };
    for (const Case& c : cases) {
      INFO(std::string(c.what));
      if (c.content) std::ofstream(other) << c.content;
      else std::filesystem::create_directory(other);
      vl::test::check_launch_refused(env, "web1", "disk journal '" + other + "'");
      std::filesystem::remove(other);
    }
    // A valid journal of a VM that claims other disks does not get in the way.
    std::ofstream(other) << "{\"vm\":\"other\",\"disks\":[]}\n";
    auto r = env.launch("web1");
    REQUIRE_MESSAGE(r.running(), r.log);
    env.kill_vm(r.pid);
    CHECK(WEXITSTATUS(env.helper({"cleanup", "web1"}).status) == 0);
  }
}
