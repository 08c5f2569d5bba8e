// What virt-install writes starts unchanged: its XML (tests/fixtures/virt_install.h) with the
// guest agent channel, a zone named as a libvirt network, type='kvm'; and what the daemon's uid
// could make of those new parts is refused by the real helper.
#include <doctest/doctest.h>
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "tests/fixtures/virt_install.h"
#include "tests/support/eventually.h"
#include "tests/support/kvm_device.h"
#include "tests/support/system_env.h"

using vl::test::HelperEnv;
using vl::test::KvmDevice;
using vl::test::SystemEnv;
using Json = nlohmann::json;

namespace {

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) s.replace(at, from.size(), to);
  return s;
}

// The fixture as an operator installs it for VM `name`: its disk the boot-sector guest, in the
// storage root, padded to 1 MiB: SeaBIOS does not boot a virtio disk of a single 512-byte
// sector (virt-install's disk is virtio; the guest would sit at "No bootable device").
std::string virt_install_domain(HelperEnv& env, const std::string& fixture, const std::string& fixture_name,
                                const std::string& name) {
  std::string disk = env.root() + "/images/" + name + ".img";
  std::filesystem::copy_file(vl::test::build_path("VMLAUNCH_GUEST_IMG"), disk, std::filesystem::copy_options::overwrite_existing);
  std::filesystem::resize_file(disk, 1 << 20);
  std::string xml = replace_all(fixture, "@DISK@", disk);
  xml = replace_all(xml, "<name>" + fixture_name + "</name>", "<name>" + name + "</name>");
  return xml;
}

// virt-install --network network=ZONE instead of bridge=br-dmz (see virt_install.h).
std::string on_network(std::string xml, const std::string& network, const std::string& mac) {
  xml = replace_all(xml, "<interface type=\"bridge\">\n      <source bridge=\"br-dmz\"/>",
                    "<interface type=\"network\">\n      <source network=\"" + network + "\"/>");
  size_t at = xml.find("<mac address=\"");
  REQUIRE(at != std::string::npos);
  xml.replace(at + 14, 17, mac);
  return xml;
}

Json row_of(SystemEnv& env, const std::string& name) {
  auto r = env.vmctl({"list", "--json"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.out);
  for (const Json& row : Json::parse(r.out))
    if (row["name"] == name) return row;
  FAIL("no row for " << name);
  return {};
}

// What the helper and the emulator said while launching `name` (root-only launch log).
std::string launch_log(HelperEnv& env, const std::string& name) {
  auto text = vl::sys::read_file(env.root() + "/state/logs/" + name + ".log", 1 << 20);
  return text ? "\n" + name + ".log:\n" + *text : "";
}

std::string fd_target(int pid, int fd) {
  std::error_code ec;
  return std::filesystem::read_symlink("/proc/" + std::to_string(pid) + "/fd/" + std::to_string(fd), ec).string();
}

}  // namespace

TEST_SUITE("root/libvirt_xml") {
  TEST_CASE("virt-install's domain starts unchanged under KVM, on a bridge and on a network naming the zone") {
    KvmDevice kvm;
    SystemEnv env("kvm");
    // Unchanged, it plans, with the host's CPU as virt-install asks.
    env.install_domain("deb12host", virt_install_domain(env, vl::test::kVirtInstallBios, "deb12", "deb12host"));
    auto plan = env.vmctl({"plan", "deb12host"});
    REQUIRE_MESSAGE(plan.exit_code == 0, plan.out);
    Json argv = Json::parse(plan.out)["argv"];
    auto after = [&](const char* option) {
      auto at = std::find(argv.begin(), argv.end(), option);
      return at == argv.end() || at + 1 == argv.end() ? std::string() : (at + 1)->get<std::string>();
    };
    CHECK_MESSAGE(after("-cpu").rfind("host", 0) == 0, after("-cpu"));
    CHECK(after("-accel") == "kvm");
    // This machine's KVM cannot run -cpu host: QEMU 7.2 aborts on "failed to set MSR 0x10a"
    // (IA32_ARCH_CAPABILITIES), which it passes through; real Debian KVM hosts run it. So the
    // VMs that start lose that one line and run QEMU's default CPU model, still under KVM.
    auto startable = [&](const std::string& name) {
      return replace_all(virt_install_domain(env, vl::test::kVirtInstallBios, "deb12", name), "  <cpu mode=\"host-passthrough\"/>\n", "");
    };
    REQUIRE(startable("deb12").find("host-passthrough") == std::string::npos);
    env.install_domain("deb12", startable("deb12"));
    env.install_domain("deb12net", on_network(startable("deb12net"), "dmz", "52:54:00:00:20:01"));
    env.define({.name = "plain1", .mac = "52:54:00:00:20:02"});  // no agent channel
    auto started = env.vmctl({"start", "deb12", "deb12net", "plain1"});
    REQUIRE_MESSAGE(started.exit_code == 0, started.out << env.log() << launch_log(env, "deb12"));
    for (const std::string name : {"deb12", "deb12net"}) {
      CAPTURE(name);
      Json row = row_of(env, name);
      CHECK(row["state"] == "running");
      int pid = row["pid"].get<int>();
      // Plugged into zone dmz's bridge, whichever way the XML named it.
      CHECK(vl::test::link_details(name + "-0").find("master br-dmz") != std::string::npos);
      // The guest agent's host end: a socket root bound in the runtime directory, reachable
      // by the daemon's group only, held by the emulator as its plan's fd 14.
      std::string agent = env.root() + "/run/vms/" + name + "/agent.sock";
      struct stat st {};
      REQUIRE(::lstat(agent.c_str(), &st) == 0);
      CHECK(S_ISSOCK(st.st_mode));
      CHECK(vl::test::owner_and_mode(agent) == "0:65534 0660");
      CHECK(fd_target(pid, 14).rfind("socket:", 0) == 0);
      auto cmdline = vl::sys::read_file("/proc/" + std::to_string(pid) + "/cmdline", 1 << 20).value();
      CHECK(cmdline.find(std::string("socket,id=charchannel0,fd=14,server=on,wait=off")) != std::string::npos);
      CHECK(cmdline.find(std::string("-accel\0kvm", 10)) != std::string::npos);
    }
    // The boot-sector guest runs no agent: asked through it, the stop fails and the VM runs on.
    auto by_agent = env.vmctl({"stop", "deb12", "--mode", "agent", "--timeout", "60"});
    CHECK(by_agent.exit_code == 1);
    CHECK_MESSAGE(by_agent.out.find("stop --mode agent: the guest agent did not answer within 10 s") != std::string::npos,
                  by_agent.out);
    CHECK(row_of(env, "deb12")["state"] == "running");
    auto no_channel = env.vmctl({"stop", "plain1", "--mode", "agent"});
    CHECK(no_channel.exit_code == 1);
    CHECK_MESSAGE(no_channel.out.find("the domain has no guest agent channel") != std::string::npos, no_channel.out);
    CHECK(row_of(env, "plain1")["state"] == "running");
    // The test guest booted from virt-install's virtio disk: its banner is in the serial log.
    for (const std::string name : {"deb12", "deb12net"}) {
      CAPTURE(name);
      std::string serial;
      bool booted = vl::test::eventually([&] {
        serial = env.vmctl({"console", name, "--log"}).out;
        return serial.find("vmlaunch test guest: hello from COM1") != std::string::npos;
      });
      CHECK_MESSAGE(booted, "serial log: " << serial);
    }
    auto stopped = env.vmctl({"stop", "deb12", "deb12net", "plain1", "--mode", "acpi", "--timeout", "120"});
    CHECK_MESSAGE(stopped.exit_code == 0, stopped.out << env.log());
    // It answered the power button: a stop that had to be forced would say so in its reason.
    for (const std::string name : {"deb12", "deb12net"}) {
      CAPTURE(name);
      Json row = row_of(env, name);
      CHECK(row["state"] == "stopped");
      CHECK_MESSAGE(row["reason"] == "", row.dump());
    }
    CHECK_FALSE(std::filesystem::exists(env.root() + "/run/vms/deb12"));
  }

  TEST_CASE("a network that is no zone is refused by the daemon and by the helper, naming it; nothing changes") {
    SystemEnv env;
    env.define({.name = "web1"});
    std::string xml = vl::sys::read_file(env.root() + "/domains/web1.xml", 1 << 20).value();
    xml = replace_all(xml, "<interface type='bridge'>", "<interface type='network'>");
    xml = replace_all(xml, "<source bridge='br-dmz'/>", "<source network='default'/>");
    env.install_domain("web1", xml);
    auto before = env.snapshot();
    auto started = env.vmctl({"start", "web1"});
    CHECK(started.exit_code != 0);
    CHECK_MESSAGE(started.out.find("<source network='default'> is not a zone of") != std::string::npos, started.out);
    auto helper = env.helper({"launch", "web1"});
    CHECK_FALSE(helper.running());
    CHECK_MESSAGE(helper.log.find("<source network='default'> is not a zone of") != std::string::npos, helper.log);
    CHECK_MESSAGE(vl::test::snapshot_diff(before, env.snapshot()).empty(), vl::test::snapshot_diff(before, env.snapshot()));
  }

  TEST_CASE("the daemon's uid cannot point the agent channel anywhere but the VM's own socket, nor add one") {
    HelperEnv env;
    env.define({.name = "agent1", .mac = "52:54:00:00:21:01", .guest_agent = true});
    env.define({.name = "plain1", .mac = "52:54:00:00:21:02"});
    auto agent_plan = vl::plan_from_json(env.plan_json("agent1"));
    REQUIRE_MESSAGE(agent_plan.ok(), agent_plan.error().context);
    auto it = std::find(agent_plan->argv.begin(), agent_plan->argv.end(), "socket,id=charchannel0,fd=14,server=on,wait=off");
    REQUIRE(it != agent_plan->argv.end());
    auto before = env.snapshot();
    for (const std::string& hostile : {
             "socket,id=charchannel0,path=" + env.root() + "/run/vms/plain1/qmp.sock,server=off",
             "socket,id=charchannel0,path=/tmp/vmlaunch-agent-" + std::to_string(::getpid()) + ",server=on,wait=off",
             std::string("socket,id=charchannel0,host=127.0.0.1,port=4444,server=on,wait=off"),
             std::string("socket,id=charchannel0,fd=3,server=on,wait=off"),
         }) {
      CAPTURE(hostile);
      vl::Plan plan = *agent_plan;
      *std::find(plan.argv.begin(), plan.argv.end(), *it) = hostile;
      auto r = env.helper({"launch", "agent1", "--plan", env.write_plan("agent1", vl::plan_to_json(plan, false))});
      CHECK_FALSE(r.running());
      if (r.running()) env.kill_vm(r.pid);
      CHECK_MESSAGE(r.log.find("the emulator command line is refused") != std::string::npos, r.log);
      CHECK_MESSAGE(vl::test::snapshot_diff(before, env.snapshot()).empty(), vl::test::snapshot_diff(before, env.snapshot()));
    }
    // The agent's words and fd grafted onto a domain without a <channel>.
    auto plain = vl::plan_from_json(env.plan_json("plain1"));
    REQUIRE(plain.ok());
    plain->argv.insert(plain->argv.end(), {"-chardev", "socket,id=charchannel0,fd=14,server=on,wait=off"});
    plain->fds.push_back({vl::FdSlot::Kind::kAgent, 14, -1});
    auto r = env.helper({"launch", "plain1", "--plan", env.write_plan("plain1", vl::plan_to_json(*plain, false))});
    CHECK_FALSE(r.running());
    if (r.running()) env.kill_vm(r.pid);
    CHECK_MESSAGE(r.log.find("declares no agent channel") != std::string::npos, r.log);
    CHECK_MESSAGE(vl::test::snapshot_diff(before, env.snapshot()).empty(), vl::test::snapshot_diff(before, env.snapshot()));

    // The plan as the daemon made it runs, with the agent socket on fd 14.
    auto ok = env.launch("agent1");
    REQUIRE_MESSAGE(ok.running(), ok.log);
    CHECK(fd_target(ok.pid, 14).rfind("socket:", 0) == 0);
    env.kill_vm(ok.pid);
    CHECK(env.helper({"cleanup", "agent1"}).status == 0);
    CHECK_FALSE(std::filesystem::exists(env.root() + "/run/vms/agent1"));
  }
}
