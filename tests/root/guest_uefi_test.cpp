// What virt-install --boot uefi writes (tests/fixtures/virt_install.h) boots a real guest: the
// Linux test guest (tests/guest/init.sh), its kernel given to OVMF by direct kernel boot, through
// the real daemon, broker and helper, on the variable store the helper creates for the VM.
// root/uefi_test.cpp covers the store's life; this shows the firmware gets a guest running.
#include <doctest/doctest.h>

#include <filesystem>

#include "helper/uid_map.h"
#include "tests/fixtures/virt_install.h"
#include "tests/support/linux_guest.h"
#include "tests/support/live_vmctl.h"

using vl::test::SystemEnv;
using vl::test::log_shows;
using namespace std::chrono_literals;

namespace {

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) s.replace(at, from.size(), to);
  return s;
}

}  // namespace

TEST_SUITE("root/guest_uefi") {
  TEST_CASE("virt-install --boot uefi boots the Linux test guest under OVMF, on the VM's own variable store") {
    vl::test::LinuxGuestFiles files;
    SystemEnv env;
    std::string disk = env.root() + "/images/efi1.img";
    std::filesystem::copy_file(vl::test::build_path("VMLAUNCH_GUEST_IMG"), disk);
    // As written, but under TCG (this machine's KVM runs no firmware past reset; real hosts
    // keep type='kvm' and the host CPU), and booting the test guest's kernel instead of a disk.
    std::string xml = replace_all(vl::test::kVirtInstallUefi, "@DISK@", disk);
    xml = replace_all(xml, "<name>deb12uefi</name>", "<name>efi1</name>");
    xml = replace_all(xml, "<domain type=\"kvm\">", "<domain type=\"qemu\">");
    xml = replace_all(xml, "  <cpu mode=\"host-passthrough\"/>\n", "");
    xml = replace_all(xml, "<boot dev=\"hd\"/>",
                      "<kernel>" + files.kernel() + "</kernel>\n    <initrd>" + files.initrd() +
                          "</initrd>\n    <cmdline>console=ttyS0 quiet panic=-1 vlg.scenario=console</cmdline>");
    REQUIRE(xml.find("<os firmware=\"efi\">") != std::string::npos);
    env.install_domain("efi1", xml);

    auto started = env.vmctl({"start", "efi1"});
    REQUIRE_MESSAGE(started.exit_code == 0, started.out << env.log());
    std::string log;
    // OVMF, then the kernel: tens of seconds under TCG; generous for a loaded host.
    CHECK_MESSAGE(log_shows(env, "efi1", "VLG READY", 300s, log), log << env.log());
    const std::string store = env.root() + "/images/nvram/efi1_VARS.fd";
    auto u = std::to_string(vl::helper::read_uid_map(env.config()).value().at("efi1"));
    CHECK(vl::test::owner_and_mode(store) == u + ":" + u + " 0600");

    auto stopped = env.vmctl({"stop", "efi1", "--force"});
    CHECK_MESSAGE(stopped.exit_code == 0, stopped.out << env.log());
    CHECK(std::filesystem::exists(store));  // kept across starts, until remove-nvram
  }
}
