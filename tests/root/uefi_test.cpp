// UEFI end to end: what virt-install --boot uefi writes boots OVMF under TCG on a variable store
// the real helper creates from the firmware's template, owned by the VM's uid, keeps across
// starts and removes on the operator's word; a failed launch leaves no store it created.
#include <doctest/doctest.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>

#include "helper/uid_map.h"
#include "tests/fixtures/virt_install.h"
#include "tests/support/helper_env.h"
#include "tests/support/system_env.h"

#include <nlohmann/json.hpp>

using vl::test::HelperEnv;
using vl::test::owner_and_mode;
using vl::test::SystemEnv;

namespace {

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) s.replace(at, from.size(), to);
  return s;
}

// The fixture as an operator installs it, under TCG (this machine's KVM runs no firmware
// past reset; real hosts keep type='kvm'), its disk the boot-sector guest, which OVMF does not
// boot: the firmware runs its boot manager, writing its variables.
std::string uefi_domain(HelperEnv& env, const std::string& name) {
  std::string disk = env.root() + "/images/" + name + ".img";
  std::filesystem::copy_file(vl::test::build_path("VMLAUNCH_GUEST_IMG"), disk, std::filesystem::copy_options::overwrite_existing);
  std::string xml = replace_all(vl::test::kVirtInstallUefi, "@DISK@", disk);
  xml = replace_all(xml, "<name>deb12uefi</name>", "<name>" + name + "</name>");
  xml = replace_all(xml, "<domain type=\"kvm\">", "<domain type=\"qemu\">");
  return replace_all(xml, "  <cpu mode=\"host-passthrough\"/>\n", "");
}

std::string contents(const std::string& path) { return vl::sys::read_file(path, 1 << 24).value(); }

// Runs the guest of a launched VM: the helper leaves it in prelaunch (-S) for the supervisor.
void cont(HelperEnv& env, const std::string& name) {
  auto qmp = vl::test::QmpConnection::connect(env.root() + "/run/vms/" + name + "/qmp.sock");
  REQUIRE_MESSAGE(qmp.ok(), (qmp.ok() ? "" : qmp.error().message()));
  REQUIRE(qmp->execute("qmp_capabilities").ok());
  REQUIRE(qmp->execute("cont").ok());
  CHECK((*qmp->execute("query-status"))["status"] == "running");
}

// Polls (generously: TCG under load) until OVMF has written its variable store.
bool store_written(const std::string& path, const std::string& from) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(300);
  while (std::chrono::steady_clock::now() < deadline) {
    if (contents(path) != from) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return false;
}

#ifdef VMLAUNCH_FAULT_INJECTION
constexpr bool kFaultInjection = true;
#else
constexpr bool kFaultInjection = false;
#endif

}  // namespace

TEST_SUITE("root/uefi") {
  TEST_CASE("virt-install --boot uefi boots OVMF on a store the helper creates, keeps across starts and removes") {
    HelperEnv env;
    env.install_domain("efi1", uefi_domain(env, "efi1"));
    const std::string store = env.root() + "/images/nvram/efi1_VARS.fd";
    const std::string vars_template = contents("/usr/share/OVMF/OVMF_VARS_4M.fd");

    auto r = env.launch("efi1");
    REQUIRE_MESSAGE(r.running(), r.log);
    auto u = std::to_string(vl::helper::read_uid_map(env.config()).value().at("efi1"));
    // Created from the template, the VM's alone; its directory root's, traversable only.
    CHECK(owner_and_mode(store) == u + ":" + u + " 0600");
    CHECK(owner_and_mode(env.root() + "/images/nvram") == "0:0 0711");
    CHECK(contents(store) == vars_template);
    auto cmdline = contents("/proc/" + std::to_string(r.pid) + "/cmdline");
    CHECK(cmdline.find("\"filename\":\"" + store + "\"") != std::string::npos);
    CHECK(cmdline.find("\"filename\":\"/usr/share/OVMF/OVMF_CODE_4M.fd\"") != std::string::npos);
    // OVMF runs as the VM's uid and writes its variables through pflash1.
    cont(env, "efi1");
    REQUIRE_MESSAGE(store_written(store, vars_template), "OVMF did not write " << store);
    env.kill_vm(r.pid);
    CHECK(WEXITSTATUS(env.helper({"cleanup", "efi1"}).status) == 0);

    // Kept by cleanup, and reused by the next start: the same file, with what OVMF wrote,
    // its owner and mode put back if they drifted.
    const std::string written = contents(store);
    struct stat before {};
    REQUIRE(::stat(store.c_str(), &before) == 0);
    REQUIRE(::chown(store.c_str(), 0, 0) == 0);
    REQUIRE(::chmod(store.c_str(), 0644) == 0);
    auto again = env.launch("efi1");
    REQUIRE_MESSAGE(again.running(), again.log);
    struct stat after {};
    REQUIRE(::stat(store.c_str(), &after) == 0);
    CHECK(after.st_ino == before.st_ino);
    CHECK(contents(store) == written);  // the guest is still in prelaunch: nothing wrote it since
    CHECK(owner_and_mode(store) == u + ":" + u + " 0600");

    // Not while the VM runs; then removed, and removing again is no error.
    auto busy = env.helper({"remove-nvram", "efi1"});
    CHECK(WEXITSTATUS(busy.status) == 1);
    CHECK_MESSAGE(busy.log.find("is running") != std::string::npos, busy.log);
    CHECK(std::filesystem::exists(store));
    env.kill_vm(again.pid);
    CHECK(WEXITSTATUS(env.helper({"cleanup", "efi1"}).status) == 0);
    CHECK(WEXITSTATUS(env.helper({"remove-nvram", "efi1"}).status) == 0);
    CHECK_FALSE(std::filesystem::exists(store));
    CHECK(WEXITSTATUS(env.helper({"remove-nvram", "efi1"}).status) == 0);
  }

  TEST_CASE("vmctl starts virt-install's UEFI domain through the daemon and the broker; OVMF runs as the VM's uid") {
    SystemEnv env;
    env.install_domain("efi6", uefi_domain(env, "efi6"));
    const std::string store = env.root() + "/images/nvram/efi6_VARS.fd";
    auto started = env.vmctl({"start", "efi6"});
    REQUIRE_MESSAGE(started.exit_code == 0, started.out << env.log());
    auto list = env.vmctl({"list", "--json"});
    REQUIRE_MESSAGE(list.exit_code == 0, list.out);
    nlohmann::json row;
    for (const auto& r : nlohmann::json::parse(list.out))
      if (r["name"] == "efi6") row = r;
    CHECK(row["state"] == "running");
    auto u = std::to_string(vl::helper::read_uid_map(env.config()).value().at("efi6"));
    CHECK(owner_and_mode(store) == u + ":" + u + " 0600");
    CHECK_MESSAGE(store_written(store, contents("/usr/share/OVMF/OVMF_VARS_4M.fd")), "OVMF did not write " << store);
    auto stopped = env.vmctl({"stop", "efi6", "--force"});
    CHECK_MESSAGE(stopped.exit_code == 0, stopped.out << env.log());
    CHECK(std::filesystem::exists(store));
  }

  TEST_CASE("a failed launch removes the store it created, and keeps one it found" * doctest::skip(!kFaultInjection)) {
    HelperEnv env;
    env.install_domain("efi2", uefi_domain(env, "efi2"));
    const std::string store = env.root() + "/images/nvram/efi2_VARS.fd";
    std::filesystem::create_directory(env.root() + "/images/nvram");
    ::chmod((env.root() + "/images/nvram").c_str(), 0711);
    auto before = env.snapshot();
    for (const char* step : {"disk-journal", "exec"}) {
      INFO(std::string(step));
      auto r = env.launch("efi2", {std::string("VMLAUNCH_FAIL_AT=") + step});
      CHECK_FALSE(r.running());
      CHECK_MESSAGE(r.log.find(std::string("injected fault at step '") + step + "'") != std::string::npos, r.log);
      CHECK_FALSE(std::filesystem::exists(store));
      CHECK_MESSAGE(vl::test::snapshot_diff(before, env.snapshot()).empty(), vl::test::snapshot_diff(before, env.snapshot()));
    }
    // A store from an earlier start survives a failed one.
    std::filesystem::copy_file("/usr/share/OVMF/OVMF_VARS_4M.fd", store);
    auto r = env.launch("efi2", {"VMLAUNCH_FAIL_AT=exec"});
    CHECK_FALSE(r.running());
    CHECK(std::filesystem::exists(store));
  }

  TEST_CASE("hostile pflash plans from the daemon's uid are refused by the real helper, and no store is created") {
    HelperEnv env;
    env.install_domain("efi4", uefi_domain(env, "efi4"));
    const std::string store = env.root() + "/images/nvram/efi4_VARS.fd";
    const std::string other = env.root() + "/images/nvram/efi5_VARS.fd";
    std::filesystem::create_directory(env.root() + "/images/nvram");
    std::filesystem::copy_file("/usr/share/OVMF/OVMF_VARS_4M.fd", other);
    const std::string writable_code = "/tmp/vmlaunch-test-OVMF_CODE-" + std::to_string(::getpid()) + ".fd";
    std::filesystem::copy_file("/usr/share/OVMF/OVMF_CODE_4M.fd", writable_code, std::filesystem::copy_options::overwrite_existing);
    ::chmod(writable_code.c_str(), 0666);
    const std::string plan = env.plan_json("efi4");
    REQUIRE(plan.find(store) != std::string::npos);
    struct Case {
      std::string from, to;
      const char* expected;
    };
    const Case cases[] = {
        {store, other, "is not a disk of the domain"},                                   // another VM's store
        {store, env.root() + "/images/efi4.img", "is opened twice"},                     // the VM's disk as its store
        {"/usr/share/OVMF/OVMF_CODE_4M.fd", writable_code, "is not a disk of the domain"},  // a loader a user can write
        {"/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_CODE_4M.ms.fd", "pflash0 must be the domain's UEFI code image"},
        // The code pflash without readonly.
        {R"(\"node-name\":\"libvirt-pflash0-format\",\"read-only\":true)",
         R"(\"node-name\":\"libvirt-pflash0-format\",\"read-only\":false)", "firmware must be opened read-only"},
    };
    for (const Case& c : cases) {
      INFO(c.to);
      REQUIRE(plan.find(c.from) != std::string::npos);
      auto r = env.helper({"launch", "efi4", "--plan", env.write_plan("efi4", replace_all(plan, c.from, c.to))});
      CHECK_FALSE(r.running());
      CHECK_MESSAGE(r.log.find(c.expected) != std::string::npos, r.log);
      CHECK_FALSE(std::filesystem::exists(store));
      CHECK(contents(other) == contents("/usr/share/OVMF/OVMF_VARS_4M.fd"));
    }
    std::filesystem::remove(writable_code);
  }

  TEST_CASE("a template or code image root did not install is refused by the helper, and nothing is created") {
    HelperEnv env;
    // A template the VM could read through root: any file outside the firmware directories.
    std::string xml = replace_all(uefi_domain(env, "efi3"), "<os firmware=\"efi\">",
                                  "<os><loader readonly=\"yes\" type=\"pflash\">/usr/share/OVMF/OVMF_CODE_4M.fd</loader>"
                                  "<nvram template=\"/etc/shadow\"/>");
    env.install_domain("efi3", xml);
    std::string plan = env.write_plan("efi3", env.plan_json("efi3"));
    auto r = env.helper({"launch", "efi3", "--plan", plan});
    CHECK_FALSE(r.running());
    CHECK_MESSAGE(r.log.find("UEFI variable store template '/etc/shadow' is not in a firmware directory") != std::string::npos, r.log);
    CHECK_FALSE(std::filesystem::exists(env.root() + "/images/nvram/efi3_VARS.fd"));
  }

  TEST_CASE("another VM's variable store is refused as a disk, and keeps its owner") {
    HelperEnv env;
    env.install_domain("efi7", uefi_domain(env, "efi7"));
    auto r = env.launch("efi7");
    REQUIRE_MESSAGE(r.running(), r.log);
    env.kill_vm(r.pid);
    CHECK(WEXITSTATUS(env.helper({"cleanup", "efi7"}).status) == 0);
    const std::string store = env.root() + "/images/nvram/efi7_VARS.fd";
    const std::string owner = owner_and_mode(store);
    env.define({.name = "web1", .mac = "52:54:00:00:30:01", .disk = store});
    auto web1 = env.launch("web1");
    CHECK_FALSE(web1.running());
    CHECK_MESSAGE(web1.log.find("where the UEFI variable stores of VMs live") != std::string::npos, web1.log);
    CHECK(owner_and_mode(store) == owner);
  }

  TEST_CASE("a store with a second link, or a symlink in its place, is refused and not chowned") {
    HelperEnv env;
    env.install_domain("efi8", uefi_domain(env, "efi8"));
    auto first = env.launch("efi8");
    REQUIRE_MESSAGE(first.running(), first.log);
    env.kill_vm(first.pid);
    REQUIRE(WEXITSTATUS(env.helper({"cleanup", "efi8"}).status) == 0);
    const std::string store = env.root() + "/images/nvram/efi8_VARS.fd";
    const std::string link = env.root() + "/images/efi8-link";

    // A second name for the store: whoever holds it could be handed the store's contents.
    REQUIRE(::link(store.c_str(), link.c_str()) == 0);
    REQUIRE(::chown(store.c_str(), 0, 0) == 0);
    auto linked = env.launch("efi8");
    CHECK_FALSE(linked.running());
    CHECK_MESSAGE(linked.log.find("must be a regular file with one link") != std::string::npos, linked.log);
    CHECK(owner_and_mode(store).rfind("0:0 ", 0) == 0);
    REQUIRE(::unlink(link.c_str()) == 0);

    // A symlink in the store's place is never followed.
    const std::string target = env.root() + "/root-file";
    { std::ofstream(target) << "root's"; }
    REQUIRE(::unlink(store.c_str()) == 0);
    REQUIRE(::symlink(target.c_str(), store.c_str()) == 0);
    const std::string before = owner_and_mode(target);
    auto symlinked = env.launch("efi8");
    CHECK_FALSE(symlinked.running());
    CHECK_MESSAGE(symlinked.log.find("must be a regular file with one link") != std::string::npos, symlinked.log);
    CHECK(owner_and_mode(target) == before);
  }
}
