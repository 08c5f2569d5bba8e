// systemd mode under a real systemd: a container boots with the built programs installed at
// the units' paths, ten VMs enabled in kvm-vms.target, and checks that systemctl and vmctl
// tell one truth about every VM: started at boot, by `systemctl start` or by `vmctl start`, a
// VM is running (guest resumed, supervised by vmlaunchd) when the command returns, and a failed
// launch fails both commands with its own error; `systemctl stop`, `vmctl stop` and the host's
// poweroff stop it through the power button; cleanup follows even `systemctl kill -s KILL`.
#include <doctest/doctest.h>

#include <chrono>
#include <nlohmann/json.hpp>

#include "tests/support/system_env.h"
#include "tests/support/systemd_container.h"
#include "vmlaunch_build_config.h"

using vl::test::SystemdContainer;
using Json = nlohmann::json;

namespace {

// Eight enabled units and two VMs whose XML says autostart (start order 1, then 2).
constexpr int kBootVms = 10;
constexpr int kEnabledVms = 8;
// vm0..vm2 ignore the power button; their units' stop deadline is 4 s.
constexpr int kStubbornVms = 3;
constexpr int kStubbornDeadline = 4;

std::string vm_xml(const std::string& name, int n, const std::string& bridge, int autostart_order) {
  char mac[18];
  std::snprintf(mac, sizeof mac, "52:54:00:00:20:%02x", n);
  return "<domain type='qemu'>\n  <name>" + name + "</name>\n  <memory unit='MiB'>32</memory>\n"
         "  <os><type arch='x86_64' machine='pc'>hvm</type></os>\n  <features><acpi/></features>\n" +
         (autostart_order > 0 ? "  <metadata><vl:vm xmlns:vl='urn:vmlaunch:domain:1'><vl:autostart>yes</vl:autostart>"
                                "<vl:start-order>" + std::to_string(autostart_order) + "</vl:start-order></vl:vm></metadata>\n"
                              : std::string()) +
         "  <devices>\n    <emulator>/usr/bin/qemu-system-x86_64</emulator>\n"
         "    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/var/lib/vmlaunch-images/" +
         name + ".img'/><target dev='hda' bus='ide'/></disk>\n"
         "    <interface type='bridge'><mac address='" + std::string(mac) + "'/><source bridge='" + bridge +
         "'/><model type='e1000'/></interface>\n"
         "    <graphics type='vnc' autoport='yes' listen='127.0.0.1'/>\n"
         // The second port stays a pty, whose notice is output of qemu's own (journal check below).
         "    <serial type='pty'/>\n    <serial type='pty'/>\n  </devices>\n</domain>\n";
}

// The host's part of a package installation, done by hand into the container: programs at the
// units' paths, units, configuration, users, a zone bridge brought up before the VMs start.
void install_programs(SystemdContainer& c) {
  using vl::test::build_path;
  c.install(build_path("VMLAUNCH_HELPER"), "/usr/libexec/vmlaunch/vmlaunch-helper");
  c.install(build_path("VMLAUNCH_CONVERTER"), "/usr/libexec/vmlaunch/vmlaunch-convert");
  c.install(build_path("VMLAUNCH_CONVERTER"), VMLAUNCH_CONVERTER);  // where vmlaunchd looks
  c.install(build_path("VMLAUNCH_DAEMON"), "/usr/sbin/vmlaunchd");
  c.install(build_path("VMLAUNCH_VMCTL"), "/usr/bin/vmctl");
  std::string units = build_path("VMLAUNCH_UNITS");
  for (const char* unit : {"kvm-vm@.service", "kvm-vms.target", "vmlaunch-autostart.service", "vmlaunch-broker.service",
                           "vmlaunchd.service"})
    c.install(units + "/" + unit, std::string("/etc/systemd/system/") + unit, 0644);
  for (const char* command : {"useradd --system --user-group --no-create-home --home-dir /nonexistent vmlaunch",
                              "groupadd --system vmlaunch-admin"})
    vl::test::run_ok("chroot " + c.root() + " " + command);
  c.write("/etc/vmlaunch/vmlaunch.toml",
          "[users]\ndaemon_user = \"vmlaunch\"\ndaemon_group = \"vmlaunch\"\nadmin_group = \"vmlaunch-admin\"\n"
          "vm_uid_first = 300000\nvm_uid_count = 1000\n"
          "[storage]\nroots = [\"/var/lib/vmlaunch-images\"]\n"
          "[zones.dmz]\nbridge = \"br-dmz\"\n[zones.lan]\nbridge = \"br-lan\"\n");
  // The zone bridge, as the host's network configuration would make it (br-lan is never made:
  // VMs in zone lan cannot launch).
  c.write("/etc/systemd/system/test-zones.service",
          "[Unit]\nBefore=network.target vmlaunch-broker.service\n[Service]\nType=oneshot\nRemainAfterExit=yes\n"
          "ExecStart=/sbin/ip link add br-dmz type bridge\nExecStart=/sbin/ip link set br-dmz up\n"
          "[Install]\nWantedBy=multi-user.target\n");
  c.enable("test-zones.service", "multi-user.target", "test-zones.service");
  for (const char* unit : {"vmlaunch-broker.service", "vmlaunchd.service", "kvm-vms.target"})
    c.enable(unit, "multi-user.target", unit);
  c.enable("vmlaunch-autostart.service", "kvm-vms.target", "vmlaunch-autostart.service");
  std::filesystem::create_directories(c.root() + "/var/log/journal");  // read after poweroff
  std::filesystem::create_directories(c.root() + "/var/lib/vmlaunch-images");
  ::chmod((c.root() + "/var/lib/vmlaunch-images").c_str(), 0755);
}

// A VM of the container, booting the test guest from its disk. Domain definitions are
// root:daemon-group 0640 (common/domain_file.h).
void define(SystemdContainer& c, const std::string& name, int n, const std::string& bridge, int autostart_order = 0,
            const std::string& xml = "") {
  c.write("/etc/vmlaunch/domains/" + name + ".xml", xml.empty() ? vm_xml(name, n, bridge, autostart_order) : xml, 0640);
  vl::test::run_ok("chroot " + c.root() + " chgrp vmlaunch /etc/vmlaunch/domains/" + name + ".xml");
  c.install(vl::test::build_path("VMLAUNCH_GUEST_IMG"), "/var/lib/vmlaunch-images/" + name + ".img", 0644);
}

// install_programs(), and the VMs of the boot test.
void install_vmlaunch(SystemdContainer& c) {
  using vl::test::build_path;
  install_programs(c);
  for (int i = 0; i < kBootVms; ++i) {
    bool enabled = i < kEnabledVms;
    define(c, "vm" + std::to_string(i), i, "br-dmz", enabled ? 0 : i - kEnabledVms + 1);
    if (enabled) c.enable("kvm-vm@vm" + std::to_string(i) + ".service", "kvm-vms.target", "kvm-vm@.service");
  }
  // What the first autostart VM was when the second one's unit began.
  c.write("/etc/systemd/system/kvm-vm@vm" + std::to_string(kEnabledVms + 1) + ".service.d/order.conf",
          "[Service]\nExecStartPre=/bin/sh -c 'mkdir -p /run/vmlaunch-test; vmctl status --json vm" +
              std::to_string(kEnabledVms) + " > /run/vmlaunch-test/order'\n");
  // Guests that ignore the power button, with a short stop deadline: a host poweroff waits
  // for their deadline (then quits them), once for all of them if they stop in parallel.
  for (int i = 0; i < kStubbornVms; ++i) {
    std::string name = "vm" + std::to_string(i);
    c.install(build_path("VMLAUNCH_GUEST_STUBBORN_IMG"), "/var/lib/vmlaunch-images/" + name + ".img", 0644);
    c.write("/etc/systemd/system/kvm-vm@" + name + ".service.d/deadline.conf",
            "[Service]\nExecStop=\nExecStop=/usr/bin/vmctl stop --timeout " + std::to_string(kStubbornDeadline) + " %i\n");
  }
  define(c, "vmx", 20, "br-dmz");
  define(c, "vmy", 21, "br-dmz");
  define(c, "vmbad", 22, "br-lan");
}

Json vm_list(SystemdContainer& c) {
  auto r = c.run("vmctl list --json");
  REQUIRE_MESSAGE(r.exit_code == 0, r.out);
  Json j = Json::parse(r.out, nullptr, false);
  REQUIRE_MESSAGE(j.is_array(), r.out);
  return j;
}

Json vm_row(SystemdContainer& c, const std::string& name) {
  for (const Json& row : vm_list(c))
    if (row["name"] == name) return row;
  FAIL("vmctl list has no row for " << name);
  return {};
}

std::string unit_state(SystemdContainer& c, const std::string& vm) {
  auto r = c.run("systemctl is-active kvm-vm@" + vm + ".service");
  std::string s = r.out;
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

int running_count(const Json& list) {
  int n = 0;
  for (const Json& row : list) n += row["state"] == "running";
  return n;
}

// Polls (a test may; the product never does) until `done` or the deadline.
template <typename F>
bool eventually(F done, std::chrono::seconds deadline = std::chrono::seconds(60)) {
  auto end = std::chrono::steady_clock::now() + deadline;
  while (std::chrono::steady_clock::now() < end) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return done();
}

double seconds(std::chrono::milliseconds ms) { return static_cast<double>(ms.count()) / 1000.0; }

}  // namespace

TEST_SUITE("systemd") {

// qemu's own words reach the operator under systemd too, where its output goes to the journal:
// the start error and status quote the last lines of that run, never an earlier run's.
TEST_CASE("under systemd, a start qemu refuses says what qemu said, from the journal, of that run only") {
  SystemdContainer c("vmlaunch-sd-said");
  install_programs(c);
  // A kernel file the VM's uid can read, which QEMU refuses after its exec.
  c.write("/var/lib/vmlaunch-boot/vmlinuz", "not a kernel\n", 0644);
  c.write("/var/lib/vmlaunch-boot/initramfs", "initramfs\n", 0644);
  ::chmod((c.root() + "/var/lib/vmlaunch-boot").c_str(), 0755);
  std::string disk_boot = vm_xml("kern1", 30, "br-dmz", 0), kernel_boot = disk_boot;
  kernel_boot.insert(kernel_boot.find("</os>"),
                     "<kernel>/var/lib/vmlaunch-boot/vmlinuz</kernel><initrd>/var/lib/vmlaunch-boot/initramfs</initrd>"
                     "<cmdline>console=ttyS0</cmdline>");
  define(c, "kern1", 30, "br-dmz", 0, kernel_boot);
  c.boot();

  auto started = c.run("vmctl start kern1");
  CHECK(started.exit_code != 0);
  // QEMU's own words, whatever they are for this file ("qemu: linux kernel too old to load a
  // ram disk" from QEMU 7.2), not only that the emulator exited.
  const std::string said = "qemu said: qemu: ";
  std::string journal =
      started.out.find(said) != std::string::npos
          ? ""
          : c.run("journalctl -b -o verbose _SYSTEMD_UNIT=kvm-vm@kern1.service _TRANSPORT=stdout | "
                  "grep -E 'MESSAGE=|_PID=|_SYSTEMD_INVOCATION_ID='; ls -lnR /var/log/journal /run/log/journal; "
                  "ps -o pid,user,group,supgrp -C vmlaunchd; journalctl -b -u vmlaunchd -o cat | tail -20").out;
  CHECK_MESSAGE(started.out.find(said) != std::string::npos, started.out << journal);
  CHECK_MESSAGE(started.out.find("kernel") != std::string::npos, started.out);
  Json row = vm_row(c, "kern1");
  CHECK(row["state"] == "failed");
  CHECK_MESSAGE(row["reason"].get<std::string>().find(said) != std::string::npos, row.dump());

  // The next run boots from its disk, and dies without a word (SIGKILL): its reason quotes
  // nothing, although the unit's journal still holds the first run's lines.
  define(c, "kern1", 30, "br-dmz", 0, disk_boot);
  std::string last;
  // The daemon follows the domains directory; until it read the new definition, starts fail.
  CHECK(eventually([&] {
    auto r = c.run("vmctl start kern1");
    last = r.out;
    return r.exit_code == 0;
  }));
  REQUIRE_MESSAGE(vm_row(c, "kern1")["state"] == "running", last);
  CHECK(c.run("systemctl kill -s KILL kvm-vm@kern1.service").exit_code == 0);
  CHECK(eventually([&] { return vm_row(c, "kern1")["state"] == "failed"; }));
  row = vm_row(c, "kern1");
  std::string reason = row["reason"];
  CHECK_MESSAGE(reason.find("exited unexpectedly") != std::string::npos, row.dump());
  CHECK_MESSAGE(reason.find("qemu said") == std::string::npos, row.dump());
}

TEST_CASE("under systemd, vmctl and systemctl tell one truth from boot to poweroff") {
  SystemdContainer c("vmlaunch-sd");
  install_vmlaunch(c);
  // Boot to all running: is-system-running --wait returns when the boot's jobs are done, and a
  // kvm-vm@ unit's start job ends only once vmlaunchd has its guest running.
  auto booted = c.boot();
  Json list = vm_list(c);
  auto boot_to_running = booted;
  if (running_count(list) < kBootVms) {
    auto t0 = std::chrono::steady_clock::now();
    eventually([&] { return running_count(list = vm_list(c)) >= kBootVms; });
    boot_to_running += std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
  }
  MESSAGE("boot to " << kBootVms << " VMs running: " << seconds(boot_to_running) << " s (boot finished at "
                     << seconds(booted) << " s)");
  // Diagnostics are gathered before an assertion, never inside its message (which doctest
  // evaluates while it reports, where a nested failure cannot unwind).
  std::string why = running_count(list) == kBootVms ? "" : c.run("systemctl --failed; journalctl -b -p warning -o cat | tail -40").out;
  CHECK_MESSAGE(running_count(list) == kBootVms, list.dump() << why);
  for (int i = 0; i < kBootVms; ++i) CHECK(unit_state(c, "vm" + std::to_string(i)) == "active");
  // The autostart VMs started in their declared order, and a start is over only when its guest
  // runs: when the second one's unit began (a drop-in's ExecStartPre, below), vmlaunchd already
  // had the first one running.
  {
    auto seen = c.run("cat /run/vmlaunch-test/order");
    CHECK_MESSAGE((seen.out.find("running") != std::string::npos && seen.out.find("starting") == std::string::npos), seen.out);
  }
  // Every running VM serves VNC on its own socket (its emulator has a network namespace of its
  // own, entered by the launch inside the unit).
  for (const Json& row : list)
    if (row["state"] == "running") CHECK_MESSAGE(row["vnc_display"].get<int>() == 0, row.dump());

  // `vmctl vnc` works under the units' sandboxes: the daemon reaches the VM's VNC socket and a
  // viewer gets its RFB banner.
  {
    auto banner = c.run(
        "bash -c 'vmctl vnc vm0 --listen 127.0.0.1:15900 >/tmp/vmctl-vnc.out 2>&1 & p=$!; "
        "for i in $(seq 100); do exec 3<>/dev/tcp/127.0.0.1/15900 2>/dev/null && break; sleep 0.2; done; "
        "timeout 20 head -c 12 <&3; kill $p; cat /tmp/vmctl-vnc.out'");
    CHECK_MESSAGE(banner.out.find("RFB 003.008") != std::string::npos, banner.out);
  }

  // vmlaunchd is Type=notify and reports its VMs; machined knows every VM, class vm.
  {
    auto status = c.run("systemctl show -p StatusText --value vmlaunchd.service");
    CHECK_MESSAGE(status.out.find(std::to_string(kBootVms) + " running") != std::string::npos, status.out);
    auto watchdog = c.run("systemctl show -p WatchdogTimestampMonotonic --value vmlaunchd.service");
    CHECK_MESSAGE(std::strtoull(watchdog.out.c_str(), nullptr, 10) > 0, "no WATCHDOG=1 seen: " << watchdog.out);
    auto machines = c.run("machinectl list --no-legend --no-pager");
    for (int i = 0; i < kBootVms; ++i)
      CHECK_MESSAGE(machines.out.find("vm" + std::to_string(i) + " vm ") != std::string::npos, machines.out);
    auto leader = c.run("machinectl show -p Leader --value vm0");
    CHECK(std::atoi(leader.out.c_str()) == vm_row(c, "vm0")["pid"].get<int>());
    auto interfaces = c.run("busctl get-property org.freedesktop.machine1 /org/freedesktop/machine1/machine/vm0 "
                            "org.freedesktop.machine1.Machine NetworkInterfaces");
    auto tap = c.run("cat /sys/class/net/vm0-0/ifindex");
    CHECK_MESSAGE((!tap.out.empty() && interfaces.out == "ai 1 " + tap.out), interfaces.out << " vs " << tap.out);
    // qemu's own output is tagged with the VM's name.
    auto tagged = c.run("journalctl -b -t qemu-vm0 -o cat --no-pager");
    CHECK_MESSAGE(tagged.out.find("char device redirected") != std::string::npos, tagged.out);
  }

  // `systemctl start` returns once the guest runs, supervised; vmctl agrees at once.
  {
    auto r = c.run("systemctl start kvm-vm@vmx.service");
    std::string journal = r.exit_code == 0 ? "" : c.run("journalctl -b -u kvm-vm@vmx -o cat | tail -30").out;
    REQUIRE_MESSAGE(r.exit_code == 0, r.out << journal);
    Json row = vm_row(c, "vmx");
    CHECK_MESSAGE(row["state"] == "running", row.dump());
  }
  // `vmctl start` returns once the guest runs; systemd agrees at once.
  {
    auto r = c.run("vmctl start vmy");
    std::string journal = r.exit_code == 0 ? "" : c.run("journalctl -b -u kvm-vm@vmy -o cat | tail -30").out;
    REQUIRE_MESSAGE(r.exit_code == 0, r.out << journal);
    CHECK(unit_state(c, "vmy") == "active");
    CHECK(vm_row(c, "vmy")["state"] == "running");
  }
  // A launch that fails fails both commands, with the launch's own error, and leaves nothing.
  {
    auto r = c.run("vmctl start vmbad");
    CHECK(r.exit_code != 0);
    CHECK_MESSAGE(r.out.find("br-lan") != std::string::npos, r.out);
    CHECK(eventually([&] { return unit_state(c, "vmbad") == "failed"; }));
    auto s = c.run("systemctl start kvm-vm@vmbad.service");
    CHECK(s.exit_code != 0);
    Json row = vm_row(c, "vmbad");
    CHECK_MESSAGE(row["state"] == "failed", row.dump());
    CHECK_MESSAGE(row["reason"].get<std::string>().find("br-lan") != std::string::npos, row.dump());
    CHECK_FALSE(std::filesystem::exists(c.root() + "/run/vmlaunch/vms/vmbad"));
  }

  // `systemctl stop` is the power button through vmlaunchd: the VM reads stopped, not failed,
  // and the unit inactive; qemu never saw SIGTERM.
  {
    auto r = c.run("systemctl stop kvm-vm@vmx.service");
    CHECK_MESSAGE(r.exit_code == 0, r.out);
    Json row = vm_row(c, "vmx");
    CHECK_MESSAGE(row["state"] == "stopped", row.dump());
    CHECK(unit_state(c, "vmx") == "inactive");
    auto journal = c.run("journalctl -b -u kvm-vm@vmx -o cat --no-pager");
    CHECK_MESSAGE(journal.out.find("terminating on signal") == std::string::npos, journal.out);
  }
  // `vmctl stop`: the same, and the unit follows. Its time is one guest's graceful stop.
  std::chrono::milliseconds one_stop{0};
  {
    auto t0 = std::chrono::steady_clock::now();
    auto r = c.run("vmctl stop vmy");
    one_stop = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
    CHECK_MESSAGE(r.exit_code == 0, r.out);
    CHECK(vm_row(c, "vmy")["state"] == "stopped");
    CHECK(eventually([&] { return unit_state(c, "vmy") == "inactive"; }));
    CHECK(eventually([&] { return c.run("machinectl status vmy").exit_code != 0; }));  // unregistered
    MESSAGE("one graceful stop (vmctl stop): " << seconds(one_stop) << " s");
  }
  // `systemctl kill -s KILL`: the unit's ExecStopPost cleans up; vmctl reads failed.
  {
    std::string vm = "vm" + std::to_string(kBootVms - 1);
    auto r = c.run("systemctl kill -s KILL kvm-vm@" + vm + ".service");
    CHECK_MESSAGE(r.exit_code == 0, r.out);
    CHECK(eventually([&] {
      std::string s = unit_state(c, vm);
      return s == "failed" || s == "inactive";
    }));
    CHECK(eventually([&] { return !std::filesystem::exists(c.root() + "/run/vmlaunch/vms/" + vm); }));
    CHECK(eventually([&] { return c.run("ip link show " + vm + "-0").exit_code != 0; }));
    CHECK(eventually([&] { return vm_row(c, vm)["state"] == "failed"; }));
    CHECK(eventually([&] { return c.run("machinectl status " + vm).exit_code != 0; }));
    auto again = c.run("vmctl start " + vm);
    CHECK_MESSAGE(again.exit_code == 0, again.out);
  }
  // READY=1 means ready: a restarted daemon answers at once and still knows every VM.
  {
    auto r = c.run("systemctl restart vmlaunchd.service && vmctl list --json");
    REQUIRE_MESSAGE(r.exit_code == 0, r.out);
    CHECK(eventually([&] { return running_count(vm_list(c)) == kBootVms; }));
  }

  // Host poweroff: every VM gets the power button at once, through vmlaunchd.
  auto down = c.poweroff(std::chrono::seconds(300));
  REQUIRE_MESSAGE(down.count() >= 0, "the container did not power off in time");
  MESSAGE("poweroff with " << kBootVms << " VMs running, to the container's end: " << seconds(down) << " s");
  MESSAGE("(" << kStubbornVms << " of them ignore the power button and are quit at their " << kStubbornDeadline
             << " s deadline; the others power off at the first press, " << seconds(one_stop) << " s for one)");
  // Each VM was stopped by its unit's ExecStop through vmlaunchd (vmctl's "NAME stopped"), and
  // its unit ended with the emulator's own exit, never by systemd's SIGTERM.
  for (int i = 0; i < kBootVms; ++i) {
    std::string unit = "kvm-vm@vm" + std::to_string(i) + ".service";
    auto journal = vl::test::run_program("/usr/bin/journalctl", {"journalctl", "-D", c.root() + "/var/log/journal", "-o",
                                                                 "cat", "--no-pager", "-u", unit});
    CHECK_MESSAGE(journal.out.find("terminating on signal") == std::string::npos, journal.out);
    CHECK_MESSAGE(journal.out.find("vm" + std::to_string(i) + " stopped") != std::string::npos, journal.out);
    CHECK_MESSAGE(journal.out.rfind("Deactivated successfully") != std::string::npos, journal.out);
  }
}

}  // TEST_SUITE
