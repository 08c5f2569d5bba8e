// The helper decides what qemu runs: hostile plans from the daemon's uid, through
// `launch --plan` and through a tampered plan cache, against the real helper and qemu.
#include <doctest/doctest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "daemon/planner.h"
#include "tests/support/helper_env.h"

using vl::test::DomainSpec;
using vl::test::HelperEnv;

namespace {

// The plan of `name` with `extra` words appended to its argv.
std::string plan_plus(HelperEnv& env, const std::string& name, const std::vector<std::string>& extra) {
  auto plan = vl::plan_from_json(env.plan_json(name));
  REQUIRE_MESSAGE(plan.ok(), plan.error().context);
  plan->argv.insert(plan->argv.end(), extra.begin(), extra.end());
  return vl::plan_to_json(*plan, false);
}

// The targets of the fds a process holds.
std::vector<std::string> open_files(pid_t pid) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec))
    out.push_back(std::filesystem::read_symlink(e.path(), ec).string());
  return out;
}

}  // namespace

TEST_SUITE("root/plan_policy") {
  TEST_CASE("hostile command lines from the daemon's uid are refused by the helper and change nothing") {
    HelperEnv env;
    env.define({.name = "web1", .mac = "52:54:00:00:01:01"});
    std::string marker = "/tmp/vmlaunch-test-incoming-" + std::to_string(::getpid());
    std::filesystem::remove(marker);
    struct Case {
      std::vector<std::string> extra;
      const char* expected;
    };
    const Case cases[] = {
        // Seen running a shell as the VM's uid with the old helper.
        {{"-sandbox", "off", "-incoming", "exec:touch " + marker}, "-sandbox"},
        {{"-incoming", "exec:touch " + marker}, "incoming migration"},
        {{"-plugin", "file=/tmp/x.so"}, "loads code"},
        {{"-net", "socket,listen=127.0.0.1:0"}, "tap fds only"},
        {{"-nic", "user"}, "tap fds only"},
        {{"-netdev", R"({"type":"socket","id":"n9","connect":"127.0.0.1:9"})"}, "netdev property 'connect'"},
        {{"-chardev", "socket,id=c9,host=127.0.0.1,port=9"}, "only socket chardev"},
        {{"-gdb", "tcp:127.0.0.1:1234"}, "debugger"},
        {{"-blockdev", R"({"driver":"file","filename":"/etc/shadow","node-name":"x"})"}, "not a disk of the domain"},
        // A writable UEFI variable store (libvirt's pflash1) the XML does not declare.
        {{"-blockdev", R"({"driver":"file","filename":"/var/lib/libvirt/qemu/nvram/web1_VARS.fd","node-name":"libvirt-pflash1-storage","auto-read-only":true,"discard":"unmap"})"},
         "not a disk of the domain"},
        // Firmware code from a path a user can write, even read-only.
        {{"-blockdev", R"({"driver":"file","filename":"/tmp/OVMF_CODE.fd","node-name":"libvirt-pflash0-storage","read-only":true})"},
         "neither named"},
        {{"-object", R"({"qom-type":"memory-backend-file","id":"m","mem-path":"/dev/shm/x","size":1048576})"}, "memory-backend-file"},
        {{"-readconfig", "/tmp/x.cfg"}, "-readconfig"},
        {{"-kernel", "/tmp/vmlinuz"}, "neither named"},
    };
    auto before = env.snapshot();
    for (const Case& c : cases) {
      std::string shown;
      for (const auto& w : c.extra) shown += w + " ";
      CAPTURE(shown);
      auto r = env.helper({"launch", "web1", "--plan", env.write_plan("web1", plan_plus(env, "web1", c.extra))});
      CHECK_FALSE(r.running());
      if (r.running()) env.kill_vm(r.pid);
      CHECK(WEXITSTATUS(r.status) == 1);
      CHECK_MESSAGE(r.log.find("the emulator command line is refused") != std::string::npos, r.log);
      CHECK_MESSAGE(r.log.find(c.expected) != std::string::npos, r.log);
      CHECK_MESSAGE(vl::test::snapshot_diff(before, env.snapshot()).empty(), vl::test::snapshot_diff(before, env.snapshot()));
    }
    CHECK_FALSE(std::filesystem::exists(marker));
    std::filesystem::remove(marker);

    // The unmodified plan still runs, under the helper's own sandbox.
    auto ok = env.launch("web1");
    REQUIRE_MESSAGE(ok.running(), ok.log);
    // Right after execve the kernel may not have set up the new argv yet: wait for QEMU.
    REQUIRE(vl::test::QmpConnection::connect(env.root() + "/run/vms/web1/qmp.sock").ok());
    auto cmdline = vl::sys::read_file("/proc/" + std::to_string(ok.pid) + "/cmdline", 1 << 16).value();
    CHECK(cmdline.find(std::string("-sandbox\0on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny", 79)) !=
          std::string::npos);
    env.kill_vm(ok.pid);
    CHECK(env.helper({"cleanup", "web1"}).status == 0);
  }

  TEST_CASE("a qcow2 disk never opens the backing file its image header names") {
    HelperEnv env;
    // A file the VM's uid could read, outside every storage root, named as the backing file.
    std::filesystem::create_directory(env.root() + "/public");
    std::string base = env.root() + "/public/base.img";
    std::string overlay = env.root() + "/images/web1.qcow2";
    vl::test::run_ok("qemu-img create -q -f raw " + base + " 1M");
    ::chmod(base.c_str(), 0644);
    vl::test::run_ok("qemu-img create -q -f qcow2 -b " + base + " -F raw " + overlay);
    ::chmod(overlay.c_str(), 0644);
    env.define({.name = "web1", .mac = "52:54:00:00:01:02", .disk = overlay, .disk_format = "qcow2"});

    auto vm = env.launch("web1");
    REQUIRE_MESSAGE(vm.running(), vm.log);
    // The greeting comes after every -blockdev is open.
    auto qmp = vl::test::QmpConnection::connect(env.root() + "/run/vms/web1/qmp.sock");
    REQUIRE_MESSAGE(qmp.ok(), qmp.error().context);
    auto files = open_files(vm.pid);
    CHECK(std::find(files.begin(), files.end(), overlay) != files.end());
    CHECK_MESSAGE(std::find(files.begin(), files.end(), base) == files.end(), "qemu opened the backing file " << base);
    env.kill_vm(vm.pid);
    CHECK(env.helper({"cleanup", "web1"}).status == 0);
  }

  TEST_CASE("a tampered plan cache is refused at plan time, naming the option") {
    HelperEnv env;
    env.define({.name = "web1", .mac = "52:54:00:00:01:03"});
    std::string xml = vl::sys::read_file(env.root() + "/domains/web1.xml", 1 << 20).value();
    auto domain = vl::parse_domain(xml, "web1.xml");
    REQUIRE(domain.ok());
    vl::Planner planner(env.config());
    auto plan = planner.plan(*domain, xml);
    REQUIRE_MESSAGE(plan.ok(), plan.error().context);
    // The cache belongs to the daemon's uid: whoever holds it can rewrite the entry.
    std::string entry = env.config().cache_dir + "/plans/" + plan->cache_key + ".argv";
    std::string text = vl::sys::read_file(entry, 1 << 20).value();
    while (!text.empty() && text.back() == '\n') text.pop_back();
    std::ofstream(entry, std::ios::trunc) << text << " -plugin file=/tmp/x.so\n";
    auto tampered = planner.plan(*domain, xml);
    std::filesystem::remove(entry);
    REQUIRE_FALSE(tampered.ok());
    CHECK_MESSAGE(tampered.error().context.find("-plugin") != std::string::npos, tampered.error().context);
  }
}

TEST_SUITE("root/plan_policy") {
  TEST_CASE("a declared backing layer is opened read-only and checked like a disk; one outside the roots is refused") {
    HelperEnv env;
    std::string base = env.root() + "/images/base.img";
    std::string overlay = env.root() + "/images/web1.qcow2";
    std::filesystem::copy_file(vl::test::build_path("VMLAUNCH_GUEST_IMG"), base);
    ::chmod(base.c_str(), 0644);  // shared by every VM built on it: root's, readable
    vl::test::run_ok("qemu-img create -q -f qcow2 -b " + base + " -F raw " + overlay);
    ::chmod(overlay.c_str(), 0644);
    auto define_layered = [&](const std::string& layer) {
      std::string xml = env.define({.name = "web1", .mac = "52:54:00:00:01:04", .disk = overlay, .disk_format = "qcow2"});
      std::string source = "<source file='" + overlay + "'/>";
      xml.replace(xml.find(source), source.size(),
                  source + "<backingStore type='file'><format type='raw'/><source file='" + layer + "'/></backingStore>");
      std::ofstream(env.root() + "/domains/web1.xml", std::ios::trunc) << xml;
    };

    define_layered(base);
    auto vm = env.launch("web1");
    REQUIRE_MESSAGE(vm.running(), vm.log);
    auto qmp = vl::test::QmpConnection::connect(env.root() + "/run/vms/web1/qmp.sock");
    REQUIRE_MESSAGE(qmp.ok(), qmp.error().context);
    auto files = open_files(vm.pid);
    CHECK(std::find(files.begin(), files.end(), base) != files.end());
    // The layer is read by the VM's uid but stays root's: other VMs share it.
    CHECK(vl::test::owner_and_mode(base) == "0:0 0644");
    env.kill_vm(vm.pid);
    CHECK(env.helper({"cleanup", "web1"}).status == 0);

    // A layer outside every storage root, or one a VM user could rewrite, is refused.
    std::filesystem::create_directory(env.root() + "/public");
    std::string outside = env.root() + "/public/base.img";
    std::filesystem::copy_file(base, outside);
    define_layered(outside);
    vl::test::check_launch_refused(env, "web1", "not below any storage root");
    define_layered(base);
    ::chmod(base.c_str(), 0666);
    vl::test::check_launch_refused(env, "web1", "writable");
  }
}
