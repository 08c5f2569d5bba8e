#include "common/argv_policy.h"

#include <doctest/doctest.h>

#include <algorithm>
#include <string>
#include <vector>

using vl::FdSlot;
using vl::Plan;

namespace {

constexpr char kVncSocket[] = "/run/vmlaunch/vnc/web1/vnc.sock";
constexpr char kVnc[] = "unix:/run/vmlaunch/vnc/web1/vnc.sock,password=on,audiodev=audio1";

// A domain as the helper reads it: its VNC socket set from the configuration (resolve_vnc).
vl::Result<vl::Domain> parse_resolved(const std::string& xml) {
  auto d = vl::parse_domain(xml, "web1.xml");
  if (d.ok() && d->vnc) d->vnc->socket = kVncSocket;
  return d;
}

constexpr char kEmulator[] = "/usr/bin/qemu-system-x86_64";

vl::Domain sample_domain(const std::string& extra_devices = "") {
  std::string xml =
      "<domain type='qemu'><name>web1</name><uuid>6a3c5e1e-1111-2222-3333-444455556666</uuid><devices>"
      "<emulator>/usr/bin/qemu-system-x86_64</emulator>"
      "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/srv/vm/web1.qcow2'/>"
      "<target dev='vda' bus='virtio'/></disk>"
      "<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='/srv/iso/inst.iso'/>"
      "<target dev='hdc' bus='ide'/><readonly/></disk>"
      "<interface type='bridge'><mac address='52:54:00:00:00:01'/><source bridge='br-dmz'/></interface>"
      "<graphics type='vnc' passwd='secret'/><serial type='pty'/>" +
      extra_devices + "</devices></domain>";
  auto d = parse_resolved(xml);
  REQUIRE_MESSAGE(d.ok(), d.error().context);
  return std::move(d).value();
}

// The shape of a real plan for sample_domain(), as the daemon makes it from libvirt 9's output.
std::vector<std::string> sample_args() {
  return {
      "-name", "guest=web1,debug-threads=on", "-S",
      "-machine", "pc-i440fx-7.2,usb=off,dump-guest-core=off,memory-backend=pc.ram",
      "-accel", "tcg", "-cpu", "qemu64", "-m", "256",
      "-object", R"({"qom-type":"memory-backend-ram","id":"pc.ram","size":268435456})",
      "-overcommit", "mem-lock=off", "-smp", "1,sockets=1,cores=1,threads=1",
      "-uuid", "6a3c5e1e-1111-2222-3333-444455556666", "-no-user-config", "-nodefaults",
      "-chardev", "socket,id=charmonitor,fd=3,server=on,wait=off",
      "-mon", "chardev=charmonitor,id=monitor,mode=control",
      "-rtc", "base=utc", "-no-shutdown", "-boot", "strict=on",
      "-blockdev", R"({"driver":"file","filename":"/srv/vm/web1.qcow2","node-name":"libvirt-2-storage","auto-read-only":true,"discard":"unmap"})",
      "-blockdev", R"({"node-name":"libvirt-2-format","read-only":false,"driver":"qcow2","file":"libvirt-2-storage","backing":null})",
      "-device", R"({"driver":"virtio-blk-pci","bus":"pci.0","addr":"0x7","drive":"libvirt-2-format","id":"virtio-disk0","bootindex":1})",
      "-blockdev", R"({"driver":"file","filename":"/srv/iso/inst.iso","node-name":"libvirt-1-storage","auto-read-only":true,"discard":"unmap"})",
      "-blockdev", R"({"node-name":"libvirt-1-format","read-only":true,"driver":"raw","file":"libvirt-1-storage"})",
      "-device", R"({"driver":"ide-cd","bus":"ide.1","unit":0,"drive":"libvirt-1-format","id":"ide0-1-0"})",
      "-netdev", R"({"type":"tap","fd":"4","id":"hostnet0"})",
      "-device", R"({"driver":"virtio-net-pci","netdev":"hostnet0","id":"net0","mac":"52:54:00:00:00:01","bus":"pci.0","addr":"0x3"})",
      "-chardev", "pty,id=charserial0",
      "-device", R"({"driver":"isa-serial","chardev":"charserial0","id":"serial0","index":0})",
      "-audiodev", R"({"id":"audio1","driver":"none"})",
      "-vnc", kVnc,
      "-device", R"({"driver":"cirrus-vga","id":"video0","bus":"pci.0","addr":"0x2"})",
      "-object", R"({"qom-type":"rng-random","id":"objrng0","filename":"/dev/urandom"})",
      "-device", R"({"driver":"virtio-rng-pci","rng":"objrng0","id":"rng0","bus":"pci.0","addr":"0x9"})",
      "-watchdog-action", "reset", "-msg", "timestamp=on"};
}

Plan plan_with(const std::vector<std::string>& args) {
  Plan p;
  p.vm = "web1";
  p.emulator = kEmulator;
  p.argv = {kEmulator};
  p.argv.insert(p.argv.end(), args.begin(), args.end());
  p.fds = {{FdSlot::Kind::kMonitor, 3, -1}, {FdSlot::Kind::kTap, 4, 0}};
  p.vnc = vl::VncSetup{kVncSocket, true};
  p.serial_ptys = 1;
  return p;
}

std::vector<std::string> plus(std::vector<std::string> extra) {
  std::vector<std::string> args = sample_args();
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

// The sample with the value of `option`'s first occurrence replaced.
std::vector<std::string> with_value(const std::string& option, const std::string& value, int occurrence = 0) {
  std::vector<std::string> args = sample_args();
  for (size_t i = 0; i + 1 < args.size(); ++i)
    if (args[i] == option && occurrence-- == 0) {
      args[i + 1] = value;
      return args;
    }
  FAIL("no option " << option);
  return args;
}

std::vector<std::string> without(const std::string& option) {
  std::vector<std::string> args = sample_args();
  for (size_t i = 0; i < args.size(); ++i)
    if (args[i] == option) {
      bool flag = option == "-S" || option == "-no-shutdown";
      args.erase(args.begin() + static_cast<ptrdiff_t>(i), args.begin() + static_cast<ptrdiff_t>(i) + (flag ? 1 : 2));
      return args;
    }
  FAIL("no option " << option);
  return args;
}


// `text` with the first `from` replaced by `to`.
std::string replaced(std::string text, const std::string& from, const std::string& to) {
  size_t at = text.find(from);
  REQUIRE_MESSAGE(at != std::string::npos, from);
  return text.replace(at, from.size(), to);
}

// A domain with one file disk, encrypted (unless `encrypted` is false), of format `format`.
vl::Domain luks_domain(const std::string& format = "raw", bool encrypted = true) {
  std::string xml =
      "<domain type='qemu'><name>web1</name><devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
      "<disk type='file' device='disk'><driver name='qemu' type='" + format + "'/><source file='/srv/vm/web1.img'/>"
      "<target dev='vda' bus='virtio'/>" +
      std::string(encrypted ? "<encryption format='luks'><secret type='passphrase' usage='web1'/></encryption>" : "") +
      "</disk></devices></domain>";
  auto d = vl::parse_domain(xml, "web1.xml");
  REQUIRE_MESSAGE(d.ok(), d.error().context);
  return std::move(d).value();
}

constexpr char kLuksSecret[] = R"({"qom-type":"secret","id":"disk0-secret","format":"raw","file":"/proc/self/fd/17"})";
constexpr char kLuksFormat[] =
    R"({"node-name":"libvirt-1-format","read-only":false,"driver":"luks","file":"libvirt-1-storage","key-secret":"disk0-secret"})";
constexpr char kQcow2LuksFormat[] =
    R"({"node-name":"libvirt-1-format","read-only":false,"driver":"qcow2","file":"libvirt-1-storage","backing":null,"encrypt":{"format":"luks","key-secret":"disk0-secret"}})";

// The rewritten command line for luks_domain(): the secret (if any) just before the disk's
// format node, then `more`.
std::vector<std::string> luks_args(const std::string& secret = kLuksSecret, const std::string& format = kLuksFormat,
                                   const std::vector<std::string>& more = {}) {
  std::vector<std::string> args = {
      "-name", "guest=web1,debug-threads=on", "-S", "-machine", "pc-i440fx-7.2,usb=off", "-accel", "tcg", "-m", "64",
      "-no-user-config", "-nodefaults", "-chardev", "socket,id=charmonitor,fd=3,server=on,wait=off",
      "-mon", "chardev=charmonitor,id=monitor,mode=control", "-no-shutdown",
      "-blockdev", R"({"driver":"file","filename":"/srv/vm/web1.img","node-name":"libvirt-1-storage","auto-read-only":true,"discard":"unmap"})"};
  if (!secret.empty()) args.insert(args.end(), {"-object", secret});
  args.insert(args.end(), {"-blockdev", format, "-device",
                           R"({"driver":"virtio-blk-pci","bus":"pci.0","addr":"0x4","drive":"libvirt-1-format","id":"virtio-disk0"})"});
  args.insert(args.end(), more.begin(), more.end());
  return args;
}

Plan luks_plan(const std::vector<std::string>& args) {
  Plan p;
  p.vm = "web1";
  p.emulator = kEmulator;
  p.argv = {kEmulator};
  p.argv.insert(p.argv.end(), args.begin(), args.end());
  p.fds = {{FdSlot::Kind::kMonitor, 3, -1}, {FdSlot::Kind::kDiskSecret, 17, -1}};
  return p;
}

}  // namespace

TEST_SUITE("common/argv_policy") {
  TEST_CASE("a plan shaped like libvirt's output for the domain is accepted") {
    auto r = vl::check_plan_argv(plan_with(sample_args()), sample_domain());
    CHECK_MESSAGE(r.ok(), (r.ok() ? "" : r.error().context));
  }

  TEST_CASE("the helper's own sandbox is QEMU's with every denial on") {
    auto args = vl::emulator_sandbox_args();
    REQUIRE(args.size() == 2);
    CHECK(args[0] == "-sandbox");
    CHECK(args[1] == "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny");
  }

  TEST_CASE("hostile command lines are refused, each with its reason") {
    struct Case {
      std::vector<std::string> args;
      const char* expected;
    };
    const Case cases[] = {
        // Code execution and escapes seen against the old helper.
        {plus({"-sandbox", "off"}), "-sandbox"},
        {plus({"-incoming", "exec:sh -c id"}), "incoming migration"},
        {plus({"-plugin", "file=/tmp/x.so"}), "loads code"},
        {plus({"-net", "socket,listen=:1234"}), "tap fds only"},
        {plus({"-nic", "user"}), "tap fds only"},
        {plus({"-netdev", R"({"type":"user","id":"n1"})"}), "netdev"},
        {plus({"-netdev", R"({"type":"socket","id":"n1","connect":"10.0.0.1:1"})"}), "netdev property 'connect'"},
        {plus({"-netdev", R"({"type":"tap","fd":"9","id":"n1"})"}), "not one of the plan's tap fds"},
        {plus({"-netdev", R"({"type":"tap","fd":"4","id":"n1"})"}), "used twice"},
        {plus({"-netdev", R"({"type":"tap","fd":"3","id":"n1"})"}), "not one of the plan's tap fds"},
        {plus({"-netdev", R"({"type":"tap","fd":"4","id":"n1","script":"/bin/sh"})"}), "script"},
        {plus({"-daemonize"}), "foreground"},
        {plus({"-runas", "root"}), "-runas"},
        {plus({"-chroot", "/"}), "-chroot"},
        {plus({"-readconfig", "/tmp/x.cfg"}), "-readconfig"},
        {plus({"-add-fd", "fd=5,set=1"}), "the only fd set is the plan's serial log pipe"},
        {plus({"-D", "/tmp/log"}), "-D"},
        {plus({"-trace", "file=/etc/passwd"}), "-trace"},
        {plus({"-L", "/tmp"}), "-L"},
        {plus({"-gdb", "tcp::1234"}), "debugger"},
        {plus({"-s"}), "debugger"},
        {plus({"-spice", "port=5930"}), "SPICE"},
        {plus({"-monitor", "tcp:0.0.0.0:4444,server"}), "-monitor"},
        {plus({"-serial", "tcp:10.0.0.1:1"}), "-serial"},
        {plus({"-set", "device.net0.mac=52:54:00:00:00:02"}), "-set"},
        {plus({"-drive", "file=/etc/shadow,format=raw"}), "-drive"},
        {plus({"-frobnicate", "x"}), "not an option vmlaunch allows"},
        // Character devices: only pty, null and the monitor on its fd.
        {plus({"-chardev", "socket,id=c1,host=10.0.0.1,port=1"}), "only socket chardev"},
        {plus({"-chardev", "socket,id=c1,path=/tmp/s,server=on"}), "only socket chardev"},
        {plus({"-chardev", "udp,id=c1,host=10.0.0.1,port=1"}), "backend 'udp'"},
        {plus({"-chardev", "file,id=c1,path=/tmp/out"}), "backend 'file'"},
        {plus({"-chardev", "pty,id=c1,logfile=/tmp/x"}), "take no options"},
        {plus({"-chardev", "socket,id=charmonitor,fd=3,server=on,wait=off"}), "only socket chardev"},
        {plus({"-chardev", "pty,id=c1", "-mon", "chardev=c1,mode=readline"}), "-mon"},
        {plus({"-device", R"({"driver":"isa-serial","chardev":"nope"})"}), "does not declare"},
        // Disks: the domain's, exactly, with their declared format and no backing file.
        {plus({"-blockdev", R"({"driver":"file","filename":"/etc/shadow","node-name":"x"})"}), "not a disk of the domain"},
        {plus({"-blockdev", R"({"driver":"nbd","server":{"type":"inet","host":"10.0.0.1","port":"1"},"node-name":"x"})"}), "driver 'nbd'"},
        {plus({"-blockdev", R"({"driver":"http","url":"http://10.0.0.1/x","node-name":"x"})"}), "driver 'http'"},
        {with_value("-blockdev", R"({"node-name":"libvirt-2-format","read-only":false,"driver":"qcow2","file":"libvirt-2-storage"})", 1),
         "backing"},
        {with_value("-blockdev", R"({"node-name":"libvirt-2-format","read-only":false,"driver":"qcow2","file":"libvirt-2-storage","backing":"x"})", 1),
         "backing"},
        {with_value("-blockdev", R"({"node-name":"libvirt-2-format","read-only":false,"driver":"raw","file":"libvirt-2-storage"})", 1),
         "declared 'qcow2'"},
        {with_value("-blockdev", R"({"node-name":"libvirt-2-format","driver":"qcow2","file":{"driver":"nbd"},"backing":null})", 1),
         "plain value"},
        {with_value("-blockdev", R"({"node-name":"libvirt-2-format","driver":"qcow2","file":"libvirt-2-storage","backing":null,"data-file":"d"})", 1),
         "'data-file'"},
        {with_value("-blockdev", R"({"node-name":"libvirt-1-format","read-only":false,"driver":"raw","file":"libvirt-1-storage"})", 3),
         "read-only in the domain XML"},
        {with_value("-blockdev", R"({"driver":"host_device","filename":"/srv/vm/web1.qcow2","node-name":"libvirt-2-storage"})", 0),
         "does not match the domain's disk type"},
        {plus({"-blockdev", R"({"driver":"file","filename":"/srv/vm/web1.qcow2","node-name":"again"})"}), "opened twice"},
        // Memory, objects, audio.
        {plus({"-object", R"({"qom-type":"memory-backend-file","id":"m","mem-path":"/dev/shm/x","size":1})"}), "memory-backend-file"},
        {plus({"-object", R"({"qom-type":"input-linux","id":"i","evdev":"/dev/input/event0"})"}), "input-linux"},
        {plus({"-object", R"({"qom-type":"rng-random","id":"r","filename":"/etc/shadow"})"}), "/dev/urandom"},
        {plus({"-object", R"({"qom-type":"secret","id":"s","file":"/etc/shadow"})"}), "'secret'"},
        {plus({"-audiodev", R"({"id":"a","driver":"wav","path":"/tmp/x.wav"})"}), "audio backends"},
        {plus({"-mem-path", "/dev/shm"}), "anonymous memory"},
        // Devices that reach host resources.
        {plus({"-device", R"({"driver":"vfio-pci","host":"0000:00:1f.0"})"}), "reaches host resources"},
        {plus({"-device", R"({"driver":"loader","file":"/etc/shadow","addr":"0"})"}), "reaches host resources"},
        {plus({"-device", R"({"driver":"usb-mtp","rootdir":"/"})"}), "reaches host resources"},
        {plus({"-device", R"({"driver":"vhost-vsock-pci","guest-cid":3})"}), "reaches host resources"},
        {plus({"-device", R"({"driver":"e1000","romfile":"/tmp/evil.rom"})"}), "romfile"},
        {plus({"-device", "e1000,netdev=hostnet0"}), "JSON object"},
        {plus({"-global", "isa-serial.chardev=charmonitor"}), "global property 'chardev'"},
        // VNC on the VM's own socket and nowhere else (its emulator has a network namespace of
        // its own), with the password the XML says.
        {with_value("-vnc", "127.0.0.1:2,password=on,audiodev=audio1"), "unix:/run/vmlaunch/vnc/web1/vnc.sock (the VM's own socket)"},
        {with_value("-vnc", "0.0.0.0:2,password=on"), "the VM's own socket"},
        {with_value("-vnc", "[::]:2,password=on"), "the VM's own socket"},
        {with_value("-vnc", "unix:/run/vmlaunch/vnc/web2/vnc.sock,password=on"), "the VM's own socket"},
        {with_value("-vnc", "unix:/run/vmlaunch/vms/web2/qmp.sock,password=on"), "the VM's own socket"},
        {with_value("-vnc", "unix:/run/vmlaunch/vnc/web1/../web2/vnc.sock,password=on"), "the VM's own socket"},
        {with_value("-vnc", "unix:/run/vmlaunch/vnc/web1/vnc.sock/,password=on"), "the VM's own socket"},
        {with_value("-vnc", "/run/vmlaunch/vnc/web1/vnc.sock,password=on"), "the VM's own socket"},
        {with_value("-vnc", "none"), "the VM's own socket"},
        {with_value("-vnc", "vnc=unix:/run/vmlaunch/vnc/web1/vnc.sock,password=on"), "the VM's own socket"},
        {with_value("-vnc", std::string(kVnc) + ",websocket=5700"), "'websocket'"},
        {with_value("-vnc", std::string(kVnc) + ",websocket=on"), "'websocket'"},
        {with_value("-vnc", std::string(kVnc) + ",to=99"), "'to'"},
        {with_value("-vnc", std::string(kVnc) + ",reverse=on"), "'reverse'"},
        {with_value("-vnc", std::string(kVnc) + ",ipv4=on"), "'ipv4'"},
        {with_value("-vnc", std::string(kVnc) + ",display=video0"), "'display'"},
        {with_value("-vnc", "unix:/run/vmlaunch/vnc/web1/vnc.sock,audiodev=audio1"), "requires a VNC password"},
        {with_value("-vnc", std::string(kVnc) + ",tls-creds=t"), "'tls-creds'"},
        // Boot files only from directories root controls; no symlinks.
        {plus({"-kernel", "/tmp/vmlinuz"}), "neither named"},
        {plus({"-bios", "/etc/passwd"}), "neither named in the domain's <os> nor QEMU firmware"},
        {plus({"-blockdev", R"({"driver":"file","filename":"/etc/passwd","node-name":"fw","read-only":true})"}), "neither named"},
        {plus({"-kernel", "/usr/share/qemu/../../../tmp/vmlinuz"}), "canonical"},
        {plus({"-fw_cfg", "name=opt/x,file=/etc/shadow"}), "no files"},
        {plus({"-smbios", "file=/etc/shadow"}), "type=N"},
        {with_value("-boot", "splash=/etc/shadow"), "'splash'"},
        // Identity and the supervisor's protocol.
        {with_value("-name", "guest=other"), "must be 'web1'"},
        {with_value("-name", "guest=web1,process=sshd"), "'process'"},
        {with_value("-uuid", "00000000-0000-0000-0000-000000000000"), "UUID"},
        {without("-S"), "-S and -no-shutdown"},
        {plus({"-S"}), "-S and -no-shutdown"},
        {without("-mon"), "QMP monitor"},
        {plus({"-machine", "pc"}), "more than once"},
        {with_value("-machine", "pc,dumpdtb=/tmp/x"), "'dumpdtb'"},
        {with_value("-accel", "xen"), "tcg or kvm"},
        {with_value("-cpu", "host,x=/etc"), "CPU model"},
        {plus({"-device", "{\"driver\":\"e1000\",\"id\":\"a\nb\"}"}), "control characters"},
    };
    for (const Case& c : cases) {
      std::string shown;
      for (const auto& a : c.args) shown += a + " ";
      CAPTURE(shown);
      auto r = vl::check_plan_argv(plan_with(c.args), sample_domain());
      REQUIRE_FALSE(r.ok());
      CAPTURE(r.error().context);
      CHECK(r.error().context.find(c.expected) != std::string::npos);
      CHECK(r.error().code == vl::ErrorCode::kDenied);
    }
  }

  TEST_CASE("a JSON member of the wrong type is refused, not an abort of the helper") {
    // Found by fuzz/qemu_argv_fuzzer: typed reads of these members aborted the process (no
    // exceptions), so the daemon's uid could make root's launch die instead of refusing.
    struct Case {
      std::vector<std::string> args;
      const char* expected;
    };
    const Case cases[] = {
        {plus({"-blockdev", R"({"driver":5,"node-name":"x"})"}), "'driver' must be a string"},
        {plus({"-blockdev", R"({"driver":"file","node-name":["x"]})"}), "'node-name' must be a string"},
        {plus({"-blockdev", R"({"driver":"file","filename":"/srv/vm/web1.qcow2","node-name":"x","aio":1})"}),
         "'aio' must be a string"},
        {with_value("-blockdev", R"({"node-name":"libvirt-1-format","read-only":"yes","driver":"raw","file":"libvirt-1-storage"})", 3),
         "'read-only' must be a boolean"},
        {with_value("-blockdev", R"({"node-name":"libvirt-1-format","read-only":1,"driver":"raw","file":"libvirt-1-storage"})", 3),
         "'read-only' must be a boolean"},
        {plus({"-object", R"({"qom-type":5,"id":"o1"})"}), "'qom-type' must be a string"},
        {plus({"-object", R"({"qom-type":"rng-random","id":true})"}), "'id' must be a string"},
        {plus({"-object", R"({"qom-type":"rng-random","id":"r1","filename":0})"}), "'filename' must be a string"},
        {plus({"-audiodev", R"({"id":2,"driver":"none"})"}), "'id' must be a string"},
        {plus({"-audiodev", R"({"id":"a2","driver":null})"}), "'driver' must be a string"},
        {plus({"-device", R"({"driver":7})"}), "'driver' must be a string"},
    };
    for (const auto& c : cases) {
      CAPTURE(c.expected);
      auto r = vl::check_plan_argv(plan_with(c.args), sample_domain());
      REQUIRE_FALSE(r.ok());
      CAPTURE(r.error().context);
      CHECK(r.error().context.find(c.expected) != std::string::npos);
    }
  }

  TEST_CASE("VNC may not appear for a domain without graphics, nor without its password") {
    std::string xml =
        "<domain type='qemu'><name>web1</name><devices><emulator>/usr/bin/qemu-system-x86_64</emulator>"
        "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/srv/vm/web1.qcow2'/></disk>"
        "<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='/srv/iso/inst.iso'/><readonly/></disk>"
        "<interface type='bridge'><mac address='52:54:00:00:00:01'/><source bridge='br-dmz'/></interface>"
        "</devices></domain>";
    auto headless = parse_resolved(xml);
    REQUIRE(headless.ok());
    auto r = vl::check_plan_argv(plan_with(sample_args()), *headless);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().context.find("no <graphics type='vnc'>") != std::string::npos);
  }

  TEST_CASE("boot files: those <os> names or QEMU's firmware, and only if root alone can change them") {
    auto firmware = plus({"-blockdev", R"({"driver":"file","filename":"/usr/share/seabios/bios.bin","node-name":"fw","read-only":true})",
                          "-blockdev", R"({"node-name":"fw-format","driver":"raw","file":"fw","read-only":true})",
                          "-bios", "/usr/share/seabios/vgabios.bin"});
    auto ok = vl::check_plan_argv(plan_with(firmware), sample_domain());
    CHECK_MESSAGE(ok.ok(), (ok.ok() ? "" : ok.error().context));
    auto writable = plus({"-blockdev", R"({"driver":"file","filename":"/usr/share/seabios/bios.bin","node-name":"fw"})",
                          "-blockdev", R"({"node-name":"fw-format","driver":"raw","file":"fw"})"});
    CHECK_FALSE(vl::check_plan_argv(plan_with(writable), sample_domain()).ok());

    // A kernel the XML names is allowed where root alone controls it.
    std::string xml = "<domain type='qemu'><name>web1</name><uuid>6a3c5e1e-1111-2222-3333-444455556666</uuid>"
                      "<os><type>hvm</type><kernel>/usr/bin/env</kernel><initrd>/tmp/initrd</initrd></os><devices>"
                      "<emulator>/usr/bin/qemu-system-x86_64</emulator>"
                      "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/srv/vm/web1.qcow2'/></disk>"
                      "<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='/srv/iso/inst.iso'/><readonly/></disk>"
                      "<interface type='bridge'><mac address='52:54:00:00:00:01'/><source bridge='br-dmz'/></interface>"
                      "<graphics type='vnc' passwd='secret'/></devices></domain>";
    auto with_kernel = parse_resolved(xml);
    REQUIRE_MESSAGE(with_kernel.ok(), with_kernel.error().context);
    CHECK(vl::check_plan_argv(plan_with(plus({"-kernel", "/usr/bin/env"})), *with_kernel).ok());
    auto tmp = vl::check_plan_argv(plan_with(plus({"-initrd", "/tmp/initrd"})), *with_kernel);
    REQUIRE_FALSE(tmp.ok());
    CHECK(tmp.error().context.find("users other than root") != std::string::npos);

    CHECK_FALSE(vl::check_root_owned_file("/tmp").ok());
    CHECK(vl::check_root_owned_file("/bin/sh").ok());  // symlinks that root placed are followed
    CHECK(vl::check_root_owned_file("/usr/bin/env").ok());
    CHECK_FALSE(vl::check_root_owned_file("/etc").ok());
  }

  TEST_CASE("a declared backing chain is opened exactly as declared, read-only, and ends where the XML ends it") {
    std::string xml =
        "<domain type='qemu'><name>web1</name><uuid>6a3c5e1e-1111-2222-3333-444455556666</uuid><devices>"
        "<emulator>/usr/bin/qemu-system-x86_64</emulator>"
        "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/srv/vm/web1.qcow2'/>"
        "<backingStore type='file'><format type='qcow2'/><source file='/srv/vm/base.qcow2'/><backingStore/></backingStore>"
        "</disk>"
        "<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='/srv/iso/inst.iso'/><readonly/></disk>"
        "<interface type='bridge'><mac address='52:54:00:00:00:01'/><source bridge='br-dmz'/></interface>"
        "<graphics type='vnc' passwd='secret'/></devices></domain>";
    auto domain = parse_resolved(xml);
    REQUIRE_MESSAGE(domain.ok(), domain.error().context);
    REQUIRE(domain->disks[0].backing.size() == 1);
    CHECK(domain->disks[0].backing[0] == vl::BackingLayer{false, "/srv/vm/base.qcow2", "qcow2"});
    // libvirt declares the layer first, then the disk naming it as its backing node.
    auto layered = [&](const std::string& base_format, const std::string& top_backing) {
      std::vector<std::string> args = sample_args();
      for (size_t i = 0; i < args.size(); ++i)
        if (args[i].find("libvirt-2-format") != std::string::npos && args[i - 1] == "-blockdev")
          args[i] = R"({"node-name":"libvirt-2-format","read-only":false,"driver":"qcow2","file":"libvirt-2-storage","backing":)" + top_backing + "}";
      std::vector<std::string> layer = {
          "-blockdev", R"({"driver":"file","filename":"/srv/vm/base.qcow2","node-name":"libvirt-3-storage","auto-read-only":true})",
          "-blockdev", R"({"node-name":"libvirt-3-format","read-only":true,"driver":"qcow2","file":"libvirt-3-storage","backing":)" + base_format + "}"};
      args.insert(args.begin(), layer.begin(), layer.end());
      return plan_with(args);
    };
    auto ok = vl::check_plan_argv(layered("null", "\"libvirt-3-format\""), *domain);
    CHECK_MESSAGE(ok.ok(), (ok.ok() ? "" : ok.error().context));
    auto beyond = vl::check_plan_argv(layered("\"libvirt-2-format\"", "\"libvirt-3-format\""), *domain);
    REQUIRE_FALSE(beyond.ok());
    CHECK(beyond.error().context.find("not the layer the domain XML declares") != std::string::npos);
    auto skipped = vl::check_plan_argv(layered("null", "null"), *domain);
    REQUIRE_FALSE(skipped.ok());
    CHECK(skipped.error().context.find("declares a backing layer here") != std::string::npos);
    auto unset = vl::check_plan_argv(plan_with([&] {
      auto args = layered("null", "\"libvirt-3-format\"").argv;
      args.erase(args.begin());
      for (auto& a : args)
        if (a.find("libvirt-3-format\",\"read-only\":true") != std::string::npos) a = R"({"node-name":"libvirt-3-format","read-only":true,"driver":"qcow2","file":"libvirt-3-storage"})";
      return args;
    }()), *domain);
    REQUIRE_FALSE(unset.ok());
    CHECK(unset.error().context.find("must say \"backing\": null") != std::string::npos);
  }
}

TEST_SUITE("common/argv_policy: guest agent channel") {
  constexpr char kAgentChannel[] =
      "<channel type='unix'><source mode='bind'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>";

  std::vector<std::string> agent_args(const std::string& chardev) {
    return plus({"-device", R"({"driver":"virtio-serial-pci","id":"virtio-serial0","bus":"pci.0","addr":"0x5"})",
                 "-chardev", chardev,
                 "-device", R"({"driver":"virtserialport","bus":"virtio-serial0.0","nr":1,"chardev":"charchannel0","id":"channel0","name":"org.qemu.guest_agent.0"})"});
  }

  Plan agent_plan(const std::string& chardev) {
    Plan p = plan_with(agent_args(chardev));
    p.fds.push_back({FdSlot::Kind::kAgent, 14, -1});
    return p;
  }

  TEST_CASE("the agent's socket chardev on the plan's agent fd is accepted for a domain that declares it") {
    auto r = vl::check_plan_argv(agent_plan("socket,id=charchannel0,fd=14,server=on,wait=off"), sample_domain(kAgentChannel));
    CHECK_MESSAGE(r.ok(), r.error().message());
  }

  TEST_CASE("an agent chardev anywhere but the plan's own fd, or without a declared agent, is refused") {
    vl::Domain with_agent = sample_domain(kAgentChannel);
    for (const char* chardev : {
             "socket,id=charchannel0,path=/run/vmlaunch/vms/other/qmp.sock,server=on,wait=off",
             "socket,id=charchannel0,path=/tmp/agent.sock,server=on,wait=off",
             "socket,id=charchannel0,fd=3,server=on,wait=off",    // the monitor's fd
             "socket,id=charchannel0,fd=4,server=on,wait=off",    // a tap's fd
             "socket,id=charchannel0,host=127.0.0.1,port=4444,server=on,wait=off",
             "socket,id=charchannel0,fd=14,server=on,wait=off,logfile=/etc/passwd",
             "socket,id=charchannel1,fd=14,server=on,wait=off",
         }) {
      INFO(chardev);
      auto r = vl::check_plan_argv(agent_plan(chardev), with_agent);
      REQUIRE_FALSE(r.ok());
      CHECK(r.error().code == vl::ErrorCode::kDenied);
    }
    // No <channel> in the XML: the daemon cannot add one.
    auto r = vl::check_plan_argv(agent_plan("socket,id=charchannel0,fd=14,server=on,wait=off"), sample_domain());
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().message().find("the only socket chardevs are the QMP monitor and the guest agent") != std::string::npos);
  }
}

namespace {

constexpr char kNvram[] = "/srv/vm/nvram/web1_VARS.fd";

// sample_domain() booting UEFI (what virt-install --boot uefi writes), with the variable store
// the configuration derives for it.
vl::Domain uefi_domain() {
  vl::Domain d = sample_domain();
  d.uefi = vl::Uefi{"/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd", kNvram};
  return d;
}

// sample_args() with the pflash pair as libvirt 9 writes it; `code`, `nvram` and the
// -machine suffix replaceable.
std::vector<std::string> uefi_args(const std::string& code = R"({"driver":"file","filename":"/usr/share/OVMF/OVMF_CODE_4M.fd","node-name":"libvirt-pflash0-storage","auto-read-only":true,"discard":"unmap"})",
                                   const std::string& code_format = R"({"node-name":"libvirt-pflash0-format","read-only":true,"driver":"raw","file":"libvirt-pflash0-storage"})",
                                   const std::string& nvram = std::string(R"({"driver":"file","filename":")") + kNvram + R"(","node-name":"libvirt-pflash1-storage","auto-read-only":true,"discard":"unmap"})",
                                   const std::string& flash = "pflash0=libvirt-pflash0-format,pflash1=libvirt-pflash1-format") {
  std::vector<std::string> args = sample_args();
  for (size_t i = 0; i + 1 < args.size(); ++i)
    if (args[i] == "-machine") args[i + 1] += "," + flash;
  args.insert(args.end(), {"-blockdev", code, "-blockdev", code_format, "-blockdev", nvram, "-blockdev",
                           R"({"node-name":"libvirt-pflash1-format","read-only":false,"driver":"raw","file":"libvirt-pflash1-storage"})"});
  return args;
}

}  // namespace

TEST_SUITE("common/argv_policy: UEFI") {
  TEST_CASE("pflash0 the domain's read-only code image and pflash1 its own variable store are accepted") {
    auto r = vl::check_plan_argv(plan_with(uefi_args()), uefi_domain());
    CHECK_MESSAGE(r.ok(), (r.ok() ? "" : r.error().context));
  }

  TEST_CASE("a pflash at another VM's store, a disk, a writable or other loader, or a writable code node is refused") {
    struct Case {
      std::vector<std::string> args;
      const char* reason;
    };
    const std::string code = R"({"driver":"file","filename":"/usr/share/OVMF/OVMF_CODE_4M.fd","node-name":"libvirt-pflash0-storage","auto-read-only":true,"discard":"unmap"})";
    const std::string other_vm = R"({"driver":"file","filename":"/srv/vm/nvram/web2_VARS.fd","node-name":"libvirt-pflash1-storage","auto-read-only":true,"discard":"unmap"})";
    const std::string disk = R"({"driver":"file","filename":"/srv/vm/web1.qcow2","node-name":"libvirt-pflash1-storage","auto-read-only":true,"discard":"unmap"})";
    const std::string tmp_code = R"({"driver":"file","filename":"/tmp/OVMF_CODE_4M.fd","node-name":"libvirt-pflash0-storage","auto-read-only":true,"discard":"unmap"})";
    const std::string ms_code = R"({"driver":"file","filename":"/usr/share/OVMF/OVMF_CODE_4M.ms.fd","node-name":"libvirt-pflash0-storage","auto-read-only":true,"discard":"unmap"})";
    const std::string writable_format = R"({"node-name":"libvirt-pflash0-format","read-only":false,"driver":"raw","file":"libvirt-pflash0-storage"})";
    const std::string code_format = R"({"node-name":"libvirt-pflash0-format","read-only":true,"driver":"raw","file":"libvirt-pflash0-storage"})";
    const std::string nvram = std::string(R"({"driver":"file","filename":")") + kNvram + R"(","node-name":"libvirt-pflash1-storage","auto-read-only":true,"discard":"unmap"})";
    const Case cases[] = {
        {uefi_args(code,
                   code_format, other_vm), "not a disk of the domain"},
        // The domain's disk opened a second time, as a flash.
        {uefi_args(code,
                   code_format, disk), "opened twice"},
        // The disk's own node mapped as the variable store.
        {uefi_args(code,
                   code_format, nvram, "pflash0=libvirt-pflash0-format,pflash1=libvirt-2-format"), "pflash1 must be the domain's UEFI variable store"},
        {uefi_args(tmp_code), "not a disk of the domain"},
        {uefi_args(ms_code), "pflash0 must be the domain's UEFI code image"},
        // The code image without readonly: a writable format node.
        {uefi_args(code,
                   writable_format), "firmware must be opened read-only"},
        // The variable store as the code the guest executes.
        {uefi_args(code,
                   code_format, nvram, "pflash0=libvirt-pflash1-format,pflash1=libvirt-pflash1-format"), "pflash0 must be a read-only firmware image"},
    };
    for (const Case& c : cases) {
      auto r = vl::check_plan_argv(plan_with(c.args), uefi_domain());
      REQUIRE_FALSE_MESSAGE(r.ok(), c.reason);
      CHECK_MESSAGE(r.error().message().find(c.reason) != std::string::npos, r.error().message());
    }
  }

  TEST_CASE("the variable store is no drive for a device, and a domain without UEFI has none") {
    auto as_drive = uefi_args();
    as_drive.insert(as_drive.end(), {"-device", R"({"driver":"virtio-blk-pci","drive":"libvirt-pflash1-format","id":"x"})"});
    auto r = vl::check_plan_argv(plan_with(as_drive), uefi_domain());
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().message().find("libvirt-pflash1-format") != std::string::npos);
    auto plain = vl::check_plan_argv(plan_with(uefi_args()), sample_domain());
    REQUIRE_FALSE(plain.ok());
    CHECK(plain.error().message().find("is not a disk of the domain") != std::string::npos);
  }
}

TEST_SUITE("common/argv_policy: serial console and its log") {
  constexpr char kConsole[] = "socket,id=charserial0,fd=15,server=on,wait=off,logfile=/dev/fdset/16,logappend=on";

  // The sample with the daemon's console in place of the pty: the chardev, the fd set, the slots.
  Plan serial_plan(const std::string& chardev, std::vector<std::string> fd_sets = {"fd=16,set=16"},
                   bool slots = true) {
    std::vector<std::string> args = with_value("-chardev", chardev, 1);
    for (const std::string& set : fd_sets) {
      args.push_back("-add-fd");
      args.push_back(set);
    }
    Plan p = plan_with(args);
    if (slots) {
      p.fds.push_back({FdSlot::Kind::kSerial, 15, -1});
      p.fds.push_back({FdSlot::Kind::kSerialLog, 16, -1});
    }
    return p;
  }

  TEST_CASE("the console on the plan's serial fd, logged to the plan's log pipe, is accepted") {
    auto r = vl::check_plan_argv(serial_plan(kConsole), sample_domain());
    CHECK_MESSAGE(r.ok(), r.error().message());
  }

  TEST_CASE("a console or logfile anywhere else, or an fd set of another fd, is refused") {
    for (const char* chardev : {
             "socket,id=charserial0,fd=15,server=on,wait=off,logfile=/etc/shadow,logappend=on",
             "socket,id=charserial0,fd=15,server=on,wait=off,logfile=/var/log/vmlaunch/other.serial.log,logappend=on",
             "socket,id=charserial0,fd=15,server=on,wait=off,logfile=/dev/fdset/3,logappend=on",
             "socket,id=charserial0,fd=15,server=on,wait=off",                         // no log
             "socket,id=charserial0,fd=3,server=on,wait=off,logfile=/dev/fdset/16,logappend=on",  // the monitor
             "socket,id=charserial0,path=/tmp/c.sock,server=on,wait=off,logfile=/dev/fdset/16,logappend=on",
             "socket,id=charserial0,host=0.0.0.0,port=4555,server=on,wait=off,logfile=/dev/fdset/16,logappend=on",
             "socket,id=charserial0,fd=15,server=on,wait=off,logfile=/dev/fdset/16,logappend=on,tls-creds=x",
             "file,id=charserial0,path=/dev/fdset/16",
             "pty,id=charserial0,logfile=/dev/fdset/16",
         }) {
      INFO(chardev);
      auto r = vl::check_plan_argv(serial_plan(chardev), sample_domain());
      REQUIRE_FALSE(r.ok());
      CHECK(r.error().code == vl::ErrorCode::kDenied);
    }
    for (std::vector<std::string> sets : std::vector<std::vector<std::string>>{
             {"fd=3,set=16"},                  // the monitor's socket under the log's name
             {"fd=16,set=1"},                  // a set the logfile does not name
             {"fd=16,set=16,opaque=x"},
             {"fd=16,set=16", "fd=4,set=16"},  // a tap added to the log's set
             {"fd=16,set=16", "fd=16,set=16"},
             {}}) {
      INFO(sets.size());
      auto r = vl::check_plan_argv(serial_plan(kConsole, sets), sample_domain());
      REQUIRE_FALSE(r.ok());
      CHECK(r.error().code == vl::ErrorCode::kDenied);
    }
    // Without the slots root would bind the console and the pipe for, nothing of it is allowed.
    auto r = vl::check_plan_argv(serial_plan(kConsole, {"fd=16,set=16"}, false), sample_domain());
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == vl::ErrorCode::kDenied);
  }
}

namespace {

constexpr char kTlsDir[] = "/run/vmlaunch/vnc-tls/web1";
constexpr char kTlsObject[] =
    R"({"qom-type":"tls-creds-x509","id":"vnc-tls-creds0","dir":"/run/vmlaunch/vnc-tls/web1","endpoint":"server","verify-peer":false})";
constexpr char kTlsVnc[] = "unix:/run/vmlaunch/vnc/web1/vnc.sock,password=on,audiodev=audio1,tls-creds=vnc-tls-creds0";

// sample_domain() as the helper sees it with [vnc] tls on (resolve_vnc).
vl::Domain tls_domain(bool verify_client = false) {
  vl::Domain d = sample_domain();
  d.vnc->tls_dir = kTlsDir;
  d.vnc->tls_verify_client = verify_client;
  return d;
}

// The sample's -vnc replaced by `vnc`, preceded by `objects` (each an -object value).
std::vector<std::string> tls_args(const std::string& vnc, const std::vector<std::string>& objects) {
  std::vector<std::string> args = with_value("-vnc", vnc);
  auto at = std::find(args.begin(), args.end(), "-vnc");
  for (const std::string& object : objects) at = args.insert(at, {"-object", object}) + 2;
  return args;
}

}  // namespace

TEST_SUITE("common/argv_policy") {
  TEST_CASE("VNC over TLS: the daemon's tls-creds-x509 object in the VM's own directory is accepted") {
    auto r = vl::check_plan_argv(plan_with(tls_args(kTlsVnc, {kTlsObject})), tls_domain());
    CHECK_MESSAGE(r.ok(), (r.ok() ? "" : r.error().context));
    std::string verifying = kTlsObject;
    verifying.replace(verifying.find("\"verify-peer\":false"), 19, "\"verify-peer\":true");
    r = vl::check_plan_argv(plan_with(tls_args(kTlsVnc, {verifying})), tls_domain(true));
    CHECK_MESSAGE(r.ok(), (r.ok() ? "" : r.error().context));
    // The words the daemon writes are the words the helper accepts.
    CHECK(vl::vnc_tls_object(kTlsDir, false) == kTlsObject);
  }

  TEST_CASE("VNC over TLS: credentials elsewhere, a second object, a client endpoint or clear text are refused") {
    auto object_with = [](const std::string& from, const std::string& to) { return replaced(kTlsObject, from, to); };
    struct Case {
      std::vector<std::string> args;
      vl::Domain domain;
      std::string expected;
    };
    const Case cases[] = {
        // The directory: only the one root filled for this VM.
        {tls_args(kTlsVnc, {object_with(kTlsDir, "/etc/pki/vmlaunch-vnc")}), tls_domain(), "the only TLS credentials"},
        {tls_args(kTlsVnc, {object_with(kTlsDir, "/run/vmlaunch/vnc-tls/web2")}), tls_domain(), "the only TLS credentials"},
        {tls_args(kTlsVnc, {object_with(kTlsDir, "/run/vmlaunch/vnc-tls/web1/../web2")}), tls_domain(), "the only TLS credentials"},
        {tls_args(kTlsVnc, {object_with(kTlsDir, "/home/mallory")}), tls_domain(), "the only TLS credentials"},
        // The emulator as a TLS client, or not checking what the configuration says to check.
        {tls_args(kTlsVnc, {object_with("\"server\"", "\"client\"")}), tls_domain(), "the only TLS credentials"},
        {tls_args(kTlsVnc, {kTlsObject}), tls_domain(true), "the only TLS credentials"},
        // Other properties, other types, other ids.
        {tls_args(kTlsVnc, {object_with("\"verify-peer\":false", "\"verify-peer\":false,\"priority\":\"NORMAL:+VERS-SSL3.0\"")}),
         tls_domain(), "the only TLS credentials"},
        {tls_args(kTlsVnc, {object_with("\"verify-peer\":false", "\"verify-peer\":\"no\"")}), tls_domain(), "the only TLS credentials"},
        {tls_args(kTlsVnc, {object_with("tls-creds-x509", "tls-creds-anon")}), tls_domain(), "object type 'tls-creds-anon'"},
        {tls_args(kTlsVnc, {object_with("tls-creds-x509", "tls-creds-psk")}), tls_domain(), "object type 'tls-creds-psk'"},
        {tls_args("unix:/run/vmlaunch/vnc/web1/vnc.sock,password=on,audiodev=audio1,tls-creds=evil",
                  {kTlsObject, object_with("vnc-tls-creds0", "evil")}),
         tls_domain(), "the only TLS credentials"},
        {tls_args(kTlsVnc, {kTlsObject, kTlsObject}), tls_domain(), "declared twice"},
        // -vnc: TLS exactly when configured, on the one object.
        {tls_args(kVnc, {kTlsObject}), tls_domain(), "tls-creds=vnc-tls-creds0 is required"},
        {tls_args(kVnc, {}), tls_domain(), "tls-creds=vnc-tls-creds0 is required"},
        {tls_args(kTlsVnc, {}), tls_domain(), "one credentials object"},
        {tls_args(std::string(kVnc) + ",tls-creds=vnc-tls-creds0,tls-creds=vnc-tls-creds0", {kTlsObject}),
         tls_domain(), "one credentials object"},
        {tls_args("unix:/run/vmlaunch/vnc/web1/vnc.sock,password=on,audiodev=audio1,tls-creds=objrng0", {kTlsObject}), tls_domain(), "one credentials object"},
        {tls_args(kTlsVnc + std::string(",tls-authz=a"), {kTlsObject}), tls_domain(), "'tls-authz'"},
        {tls_args(kTlsVnc + std::string(",sasl=on"), {kTlsObject}), tls_domain(), "'sasl'"},
        // With TLS off, neither the object nor tls-creds.
        {tls_args(kTlsVnc, {kTlsObject}), sample_domain(), "off for this VM"},
        {tls_args(kVnc, {kTlsObject}), sample_domain(), "off for this VM"},
        {tls_args(kTlsVnc, {}), sample_domain(), "needs VNC over TLS, which is off"},
    };
    for (const Case& c : cases) {
      std::string shown;
      for (const auto& a : c.args) shown += a + " ";
      CAPTURE(shown);
      auto r = vl::check_plan_argv(plan_with(c.args), c.domain);
      REQUIRE_FALSE(r.ok());
      CAPTURE(r.error().context);
      CHECK(r.error().context.find(c.expected) != std::string::npos);
      CHECK(r.error().code == vl::ErrorCode::kDenied);
    }
  }

  // --- Encrypted disks (<encryption format='luks'>) ---

  TEST_CASE("an encrypted disk through QEMU's LUKS driver, unlocked by its secret from the plan's fd, is accepted") {
    auto r = vl::check_plan_argv(luks_plan(luks_args()), luks_domain());
    CHECK_MESSAGE(r.ok(), (r.ok() ? "" : r.error().context));
    // qcow2 with LUKS inside: the same secret, named by "encrypt".
    r = vl::check_plan_argv(luks_plan(luks_args(kLuksSecret, kQcow2LuksFormat)), luks_domain("qcow2"));
    CHECK_MESSAGE(r.ok(), (r.ok() ? "" : r.error().context));
    // The words the daemon writes are the words the helper accepts.
    CHECK(vl::disk_secret_object(0, 17) == kLuksSecret);
  }

  TEST_CASE("hostile secrets and LUKS nodes are refused: inline data, another file, keyid, wrong disk, none at all") {
    auto secret_with = [](const std::string& from, const std::string& to) { return replaced(kLuksSecret, from, to); };
    struct Case {
      std::vector<std::string> args;
      vl::Domain domain;
      std::string expected;
      std::vector<FdSlot> fds = {{FdSlot::Kind::kDiskSecret, 17, -1}};
    };
    const std::string plain_format = R"({"node-name":"libvirt-1-format","read-only":false,"driver":"raw","file":"libvirt-1-storage"})";
    const Case cases[] = {
        // The passphrase in the argv, or from a file by path, or another fd.
        {luks_args(secret_with(R"("file":"/proc/self/fd/17")", R"("data":"hunter2")")), luks_domain(), "must be exactly"},
        {luks_args(secret_with(R"("format":"raw",)", R"("data":"hunter2","format":"raw",)")), luks_domain(), "must be exactly"},
        {luks_args(secret_with("/proc/self/fd/17", "/etc/vmlaunch/keys/web1.key")), luks_domain(), "must be exactly"},
        {luks_args(secret_with("/proc/self/fd/17", "/proc/self/fd/3")), luks_domain(), "must be exactly"},
        {luks_args(secret_with("/proc/self/fd/17", "/proc/1/fd/17")), luks_domain(), "must be exactly"},
        {luks_args(secret_with("/proc/self/fd/17", "/dev/fdset/17")), luks_domain(), "must be exactly"},
        {luks_args(secret_with(R"("format":"raw")", R"("format":"base64")")), luks_domain(), "must be exactly"},
        // Decrypted with another secret (libvirt's master key scheme), or a secret of another id.
        {luks_args(secret_with(R"("format":"raw",)", R"("format":"raw","keyid":"disk1-secret","iv":"AAAA",)")), luks_domain(), "must be exactly"},
        {luks_args(secret_with("disk0-secret", "masterKey0")), luks_domain(), "only the passphrase of an encrypted disk of the domain"},
        {luks_args(secret_with("disk0-secret", "disk1-secret")), luks_domain(), "only the passphrase of an encrypted disk of the domain"},
        // The fd slot must be the plan's.
        {luks_args(), luks_domain(), "must be exactly", {}},
        {luks_args(), luks_domain(), "must be exactly", {{FdSlot::Kind::kDiskSecret, 18, -1}}},
        // A secret on a disk the XML does not encrypt, or an encrypted disk without it.
        {luks_args(), luks_domain("raw", false), "only the passphrase of an encrypted disk of the domain"},
        {luks_args("", R"({"node-name":"libvirt-1-format","read-only":false,"driver":"luks","file":"libvirt-1-storage","key-secret":"disk0-secret"})"),
         luks_domain("raw", false), "only a disk with <encryption>"},
        {luks_args("", plain_format), luks_domain(), "encrypted in the domain XML"},
        {luks_args(kLuksSecret, plain_format), luks_domain(), "encrypted in the domain XML"},
        // The LUKS node must name this disk's own secret, declared before it, once.
        {luks_args(kLuksSecret, R"({"node-name":"libvirt-1-format","read-only":false,"driver":"luks","file":"libvirt-1-storage","key-secret":"objrng0"})"),
         luks_domain(), "its own secret"},
        {luks_args("", kLuksFormat), luks_domain(), "its own secret"},
        {luks_args(kLuksSecret, R"({"node-name":"libvirt-1-format","read-only":false,"driver":"luks","file":"libvirt-1-storage"})"),
         luks_domain(), "its own secret"},
        {luks_args(kLuksSecret, kLuksFormat, {"-object", kLuksSecret}), luks_domain(), "declared twice"},
        // Keys a LUKS node does not have, and qcow2's "encrypt" in any other shape.
        {luks_args(kLuksSecret, R"({"node-name":"libvirt-1-format","driver":"luks","file":"libvirt-1-storage","key-secret":"disk0-secret","encrypt":{}})"),
         luks_domain(), "'encrypt' is not allowed"},
        {luks_args(kLuksSecret, R"({"node-name":"libvirt-1-format","driver":"raw","file":"libvirt-1-storage","key-secret":"disk0-secret"})"),
         luks_domain(), "'key-secret' is not allowed"},
        {luks_args(kLuksSecret, R"({"node-name":"libvirt-1-format","driver":"qcow2","file":"libvirt-1-storage","backing":null,"encrypt":{"format":"luks","key-secret":"disk0-secret","keyid":"x"}})"),
         luks_domain("qcow2"), "'encrypt' must be"},
        {luks_args(kLuksSecret, R"({"node-name":"libvirt-1-format","driver":"qcow2","file":"libvirt-1-storage","backing":null,"encrypt":{"format":"aes","key-secret":"disk0-secret"}})"),
         luks_domain("qcow2"), "'encrypt' must be"},
        {luks_args(kLuksSecret, kLuksFormat), luks_domain("qcow2"), "is declared 'qcow2', not 'luks'"},
        // A declared secret that unlocks nothing is refused too.
        {luks_args(kLuksSecret, kLuksFormat, {"-object", secret_with("disk0-secret", "disk2-secret")}), luks_domain(), "only the passphrase of an encrypted disk"},
    };
    for (const Case& c : cases) {
      std::string shown;
      for (const auto& a : c.args) shown += a + " ";
      CAPTURE(shown);
      Plan p = luks_plan(c.args);
      p.fds.erase(std::remove_if(p.fds.begin(), p.fds.end(), [](const FdSlot& s) { return s.kind == FdSlot::Kind::kDiskSecret; }),
                  p.fds.end());
      p.fds.insert(p.fds.end(), c.fds.begin(), c.fds.end());
      auto r = vl::check_plan_argv(p, c.domain);
      REQUIRE_FALSE(r.ok());
      CAPTURE(r.error().context);
      CHECK(r.error().context.find(c.expected) != std::string::npos);
      CHECK(r.error().code == vl::ErrorCode::kDenied);
    }
  }
}
