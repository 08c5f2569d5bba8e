#include "daemon/emulator_output.h"

#include <doctest/doctest.h>

TEST_SUITE("daemon/emulator_output") {
  TEST_CASE("QEMU's refusal of a LUKS passphrase names the disk, by the secret its node names") {
    const std::vector<std::string> targets = {"vda", "hdb"};
    std::string said = vl::format_emulator_said(
        {"qemu-system-x86_64: -blockdev {\"node-name\":\"libvirt-1-format\",\"read-only\":false,\"driver\":\"luks\","
         "\"file\":\"libvirt-1-storage\",\"key-secret\":\"disk1-secret\"}: Invalid password, cannot unlock any keyslot"});
    std::string explained = vl::explain_emulator_said(said, targets);
    CHECK(explained.rfind("; wrong passphrase for disk 'hdb'; qemu said: ", 0) == 0);
    CHECK(explained.ends_with(said));  // qemu's own line is still quoted
    // qcow2's LUKS layer says it the same way.
    said = vl::format_emulator_said({"qemu-system-x86_64: -blockdev {\"driver\":\"qcow2\",\"encrypt\":{\"format\":\"luks\","
                                     "\"key-secret\":\"disk0-secret\"}}: Invalid password, cannot unlock any keyslot"});
    CHECK(vl::explain_emulator_said(said, targets).rfind("; wrong passphrase for disk 'vda';", 0) == 0);
    // A secret no disk has, or none named: still the reason, without a name.
    said = vl::format_emulator_said({"x: {\"key-secret\":\"disk7-secret\"}: Invalid password, cannot unlock any keyslot"});
    CHECK(vl::explain_emulator_said(said, targets).rfind("; wrong passphrase for an encrypted disk;", 0) == 0);
    CHECK(vl::explain_emulator_said("; qemu said: Invalid password, cannot unlock any keyslot", {}).rfind(
              "; wrong passphrase for an encrypted disk;", 0) == 0);
    // Anything else is left as qemu said it.
    said = vl::format_emulator_said({"qemu-system-x86_64: -kernel /x: Could not open"});
    CHECK(vl::explain_emulator_said(said, targets) == said);
    CHECK(vl::explain_emulator_said("", targets).empty());
  }
}
