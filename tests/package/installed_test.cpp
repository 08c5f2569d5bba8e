// The Debian package as an operator meets it on a fresh host: installed with dpkg into a booted
// systemd (a container on an overlay of `/`, tests/support/systemd_container.h), it runs a VM
// from the installed files alone: the packaged units and programs, the shipped configuration
// with a zone added, a domain definition and a disk below the default storage root. Purged, it
// leaves only what docs/packaging.md says purging keeps.
//
// Takes the .deb from VMLAUNCH_DEB_DIR (the 'package' test's output); where none is there yet,
// it builds one there with packaging/build-deb, as that test does.
#include <doctest/doctest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "tests/support/systemd_container.h"

using vl::test::SystemdContainer;
using Json = nlohmann::json;

namespace {

constexpr const char* kVm = "guest1";
constexpr const char* kBridge = "br-pkg";

std::string env(const char* name) {
  const char* value = std::getenv(name);
  REQUIRE_MESSAGE((value != nullptr && *value != '\0'), name << " is not set (tests/meson.build sets it)");
  return value;
}

std::string trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// The .deb in DIR, built there first if there is none.
std::string package(const std::string& dir) {
  auto find = [&]() -> std::string {
    if (!std::filesystem::is_directory(dir)) return "";
    for (const auto& entry : std::filesystem::directory_iterator(dir)) {
      std::string name = entry.path().filename().string();
      if (name.starts_with("vmlaunch_") && name.ends_with(".deb")) return entry.path().string();
    }
    return "";
  };
  if (std::string deb = find(); !deb.empty()) return deb;
  std::string build = env("VMLAUNCH_SOURCE_DIR") + "/packaging/build-deb '" + dir + "' > /dev/null 2>&1";
  int status = std::system(build.c_str());
  std::string deb = find();
  REQUIRE_MESSAGE(!deb.empty(), "packaging/build-deb made no package (exit status " << status << "); see "
                                                                                     << dir << "/build.log");
  return deb;
}

std::string domain_xml() {
  return std::string("<domain type='qemu'>\n  <name>") + kVm + "</name>\n  <memory unit='MiB'>32</memory>\n"
         "  <os><type arch='x86_64' machine='pc'>hvm</type></os>\n  <features><acpi/></features>\n"
         "  <devices>\n    <emulator>/usr/bin/qemu-system-x86_64</emulator>\n"
         "    <disk type='file' device='disk'><driver name='qemu' type='raw'/>"
         "<source file='/var/lib/vmlaunch/images/" + kVm + ".img'/><target dev='hda' bus='ide'/></disk>\n"
         "    <interface type='bridge'><mac address='52:54:00:00:30:01'/><source bridge='" + kBridge + "'/>"
         "<model type='e1000'/></interface>\n"
         "    <graphics type='vnc' autoport='yes' listen='127.0.0.1'/>\n"
         "    <serial type='pty'/>\n  </devices>\n</domain>\n";
}

Json vm_status(SystemdContainer& c) {
  auto r = c.run(std::string("vmctl status --json ") + kVm);
  Json j = Json::parse(r.out, nullptr, false);  // an array of one object of strings
  REQUIRE_MESSAGE((r.exit_code == 0 && j.is_array() && j.size() == 1 && j[0].is_object()), r.out);
  return j[0];
}

// Everything named for vmlaunch where a package or its programs write (its logs and man-db's cache of
// formatted pages excepted: they are not the package's), sorted.
std::string vmlaunch_files(SystemdContainer& c) {
  return c.run("find /etc /usr /var /run /opt /srv /root -xdev -path '*vmlaunch*' ! -path '/var/log/*' "
               "! -path '/var/cache/man/*' | sort -u").out;
}

}  // namespace

TEST_SUITE("package") {

TEST_CASE("the installed package runs a VM under systemd, and purging leaves only what policy keeps") {
  std::string deb = package(env("VMLAUNCH_DEB_DIR"));
  SystemdContainer c("vmlaunch-pkg");
  // The host's policy-rc.d (inherited by the overlay) forbids maintainer scripts to start
  // services; a real host has none.
  std::filesystem::remove(c.root() + "/usr/sbin/policy-rc.d");
  c.install(deb, "/var/tmp/package.deb", 0644);
  std::filesystem::create_directories(c.root() + "/var/log/journal");
  c.boot();
  std::string before = vmlaunch_files(c);

  {
    auto r = c.run("DEBIAN_FRONTEND=noninteractive dpkg -i /var/tmp/package.deb 2>&1");
    REQUIRE_MESSAGE(r.exit_code == 0, r.out);
  }
  // The postinst started the broker and the daemon.
  for (const char* unit : {"vmlaunch-broker.service", "vmlaunchd.service"})
    CHECK_MESSAGE(trimmed(c.run(std::string("systemctl is-active ") + unit).out) == "active", unit);

  // The operator's part: a zone bridge, the zone declared in the shipped configuration, a domain
  // definition (root:vmlaunch 0640) and its disk below the default storage root.
  {
    auto r = c.run(std::string("ip link add ") + kBridge + " type bridge && ip link set " + kBridge + " up");
    REQUIRE_MESSAGE(r.exit_code == 0, r.out);
  }
  {
    auto r = c.run(std::string("printf '\\n[zones.pkg]\\nbridge = \"") + kBridge +
                   "\"\\n' >> /etc/vmlaunch/vmlaunch.toml");
    REQUIRE_MESSAGE(r.exit_code == 0, r.out);
  }
  c.write(std::string("/etc/vmlaunch/domains/") + kVm + ".xml", domain_xml(), 0640);
  c.run(std::string("chgrp vmlaunch /etc/vmlaunch/domains/") + kVm + ".xml");
  c.install(env("VMLAUNCH_GUEST_IMG"), std::string("/var/lib/vmlaunch/images/") + kVm + ".img", 0644);

  // systemctl start returns once the guest runs, as the VM's own uid.
  {
    auto r = c.run(std::string("systemctl start kvm-vm@") + kVm + ".service");
    std::string journal = r.exit_code == 0 ? "" : c.run("journalctl -b -o cat --no-pager | tail -40").out;
    REQUIRE_MESSAGE(r.exit_code == 0, r.out << journal);
  }
  CHECK(trimmed(c.run(std::string("systemctl is-active kvm-vm@") + kVm + ".service").out) == "active");
  Json status = vm_status(c);
  CHECK_MESSAGE(status["state"] == "running", status.dump());
  {
    auto list = c.run("vmctl list");
    CHECK_MESSAGE(list.out.find(kVm) != std::string::npos, list.out);
    int pid = std::atoi(status.value("pid", "0").c_str());
    REQUIRE_MESSAGE(pid > 0, status.dump());
    auto owner = c.run("stat -c '%u %n' /proc/" + std::to_string(pid) + " && readlink /proc/" + std::to_string(pid) +
                       "/exe");
    unsigned uid = static_cast<unsigned>(std::strtoul(owner.out.c_str(), nullptr, 10));
    // The shipped configuration's VM uid range.
    CHECK_MESSAGE((uid >= 70000 && uid < 80000), owner.out);
    CHECK_MESSAGE(std::to_string(uid) == status.value("uid", ""), owner.out << " vs " << status.dump());
    CHECK_MESSAGE(owner.out.find("qemu-system-x86_64") != std::string::npos, owner.out);
  }

  // vmctl stop stops it; systemd agrees.
  {
    auto r = c.run(std::string("vmctl stop ") + kVm);
    CHECK_MESSAGE(r.exit_code == 0, r.out);
    CHECK_MESSAGE(vm_status(c)["state"] == "stopped", vm_status(c).dump());
    // The unit follows once vmlaunchd has told systemd (polled: its own pace).
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    std::string unit;
    while ((unit = trimmed(c.run(std::string("systemctl is-active kvm-vm@") + kVm + ".service").out)) != "inactive" &&
           std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    CHECK(unit == "inactive");
  }

  // Purged, nothing of vmlaunch runs and no file of it is left but what docs/packaging.md says
  // purging keeps: the disk below the default storage root (with that directory), the domain
  // definition, and /run/vmlaunch (emptied by the next boot). The accounts stay too.
  {
    auto r = c.run("DEBIAN_FRONTEND=noninteractive dpkg --purge vmlaunch 2>&1");
    REQUIRE_MESSAGE(r.exit_code == 0, r.out);
  }
  auto units = c.run("systemctl list-units --all --no-legend --plain 'vmlaunch*' 'kvm-vm*' | grep -v ' inactive dead '");
  CHECK_MESSAGE(trimmed(units.out).empty(), units.out);
  // A program of the package, an emulator, or anything running as the daemon's user or a VM's.
  auto processes = c.run("ps -e -o user=,uid=,comm= | awk '$1 == \"vmlaunch\" || $3 ~ /vmlaunch|qemu/ || "
                         "$2 >= 70000 && $2 < 80000'");
  CHECK_MESSAGE(trimmed(processes.out).empty(), processes.out);
  CHECK(c.run("getent passwd vmlaunch").exit_code == 0);
  CHECK(c.run("getent group vmlaunch-admin").exit_code == 0);
  std::string after = vmlaunch_files(c);
  std::string kept = std::string("/etc/vmlaunch\n/etc/vmlaunch/domains\n/etc/vmlaunch/domains/") + kVm +
                     ".xml\n/var/lib/vmlaunch\n/var/lib/vmlaunch/images\n/var/lib/vmlaunch/images/" + kVm + ".img\n";
  // What the installation added (the host under the overlay may hold paths of that name) that
  // is not /run/vmlaunch, kept until the next boot.
  auto added = [&](const std::string& lines) {
    std::string out;
    for (size_t at = 0; at < lines.size();) {
      size_t end = lines.find('\n', at);
      std::string line = lines.substr(at, end - at);
      at = end == std::string::npos ? lines.size() : end + 1;
      if (line.empty() || before.find(line + "\n") != std::string::npos) continue;
      if (line == "/run/vmlaunch" || line.starts_with("/run/vmlaunch/")) continue;
      out += line + "\n";
    }
    return out;
  };
  CHECK(added(after) == added(kept));
}

}  // TEST_SUITE
