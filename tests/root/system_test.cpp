// End to end: vmctl -> vmlaunchd (as nobody) -> broker (root) -> helper launch -> qemu (TCG),
// all real processes in a private network namespace.
#include <doctest/doctest.h>
#include <signal.h>
#include <systemd/sd-bus.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <filesystem>
#include <fstream>
#include <future>
#include <thread>
#include <set>
#include <sstream>
#include <net/if.h>

#include "common/control_protocol.h"
#include "common/vm_state.h"
#include "tests/support/eventually.h"
#include "tests/support/system_env.h"

using vl::test::DomainSpec;
using vl::test::SystemEnv;
using Json = nlohmann::json;

namespace {

std::string mac_of(int i) {
  char buf[18];
  std::snprintf(buf, sizeof buf, "52:54:00:00:10:%02x", i);
  return buf;
}

Json list_json(SystemEnv& env) {
  auto r = env.vmctl({"list", "--json"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.out);
  Json j = Json::parse(r.out, nullptr, false);
  REQUIRE(j.is_array());
  return j;
}

Json vm_row(SystemEnv& env, const std::string& name) {
  for (const Json& row : list_json(env))
    if (row["name"] == name) return row;
  FAIL("no row for " << name);
  return {};
}

// A live child of `parent` whose executable's name is `name`, or 0.
pid_t child_running(pid_t parent, const std::string& name) {
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    std::string pid = e.path().filename();
    if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
    std::error_code ec;
    auto exe = std::filesystem::read_symlink(e.path() / "exe", ec);
    if (ec || exe.filename() != name) continue;
    std::ifstream status(e.path() / "status");
    for (std::string line; std::getline(status, line);)
      if (line.rfind("PPid:", 0) == 0 && std::stoi(line.substr(5)) == parent) return std::stoi(pid);
  }
  return 0;
}

}  // namespace

TEST_SUITE("root/system") {
  TEST_CASE("five VMs start in parallel, are listed with their own uids, and stop") {
    SystemEnv env;
    std::vector<std::string> names;
    for (int i = 1; i <= 5; ++i) {
      names.push_back("vm" + std::to_string(i));
      env.define({.name = names.back(), .mac = mac_of(i), .zone = "dmz"});
    }
    auto before = env.snapshot();
    std::vector<std::string> args = {"start", "--parallel", "3"};
    args.insert(args.end(), names.begin(), names.end());
    auto started = env.vmctl(args);
    REQUIRE_MESSAGE(started.exit_code == 0, started.out << env.log());
    CHECK(started.out.find("start: 5 succeeded, 0 failed") != std::string::npos);

    std::set<int> uids, pids;
    for (const Json& row : list_json(env)) {
      CHECK(row["state"] == "running");
      CHECK(row["zone"] == "dmz");
      uids.insert(row["uid"].get<int>());
      pids.insert(row["pid"].get<int>());
      auto status = vl::test::proc_status(row["pid"].get<int>());
      CHECK(status["Uid"].rfind(std::to_string(row["uid"].get<int>()) + "\t", 0) == 0);
    }
    CHECK(uids.size() == 5);
    CHECK(pids.size() == 5);

    auto status = env.vmctl({"status", "vm3"});
    CHECK(status.exit_code == 0);
    CHECK(status.out.find("taps:        vm3-0") != std::string::npos);
    auto vnc = env.vmctl({"vncdisplay", "vm1"});
    CHECK(vnc.exit_code == 1);  // defined without graphics
    CHECK(vnc.out.find("has no VNC display") != std::string::npos);

    auto stopped = env.vmctl({"stop", "--all", "--timeout", "30"});
    REQUIRE_MESSAGE(stopped.exit_code == 0, stopped.out << env.log());
    for (const Json& row : list_json(env)) CHECK(row["state"] == "stopped");
    for (int pid : pids) CHECK_FALSE(vl::test::process_alive(pid));
    // --all means the active VMs (vmctl(1)): with none, there is nothing to do, and no error.
    for (const char* command : {"stop", "kill"}) {
      auto none = env.vmctl({command, "--all", "--json"});
      CHECK_MESSAGE(none.exit_code == 0, command << ": " << none.out);
      CHECK_MESSAGE(Json::parse(none.out) == Json::array(), command << ": " << none.out);
    }
    auto after = env.snapshot();
    for (auto* s : {&before, &after})
      for (auto it = s->begin(); it != s->end();)
        it = (it->first.find("/state/logs") != std::string::npos || it->first.find("/cache") != std::string::npos ||
              it->first.ends_with("system.log") || it->first.find("/run/") != std::string::npos)
                 ? s->erase(it)
                 : std::next(it);
    CHECK_MESSAGE(vl::test::snapshot_diff(before, after).empty(), vl::test::snapshot_diff(before, after));
  }

  TEST_CASE("the daemon keeps answering while a cold conversion runs") {
    SystemEnv env;  // a fresh cache: the first plan pays libvirt's capabilities probe
    env.define({.name = "web1", .mac = mac_of(1)});
    auto start = std::async(std::launch::async, [&] { return env.vmctl({"start", "web1"}); });
    std::string first_seen;
    for (int i = 0; i < 2000 && first_seen.empty(); ++i) {
      std::string state = vm_row(env, "web1")["state"];
      if (state != "stopped") first_seen = state;
    }
    // A blocked event loop would only answer once the VM runs.
    CHECK(first_seen == "starting");
    CHECK_MESSAGE(start.get().exit_code == 0, env.log());
  }

  TEST_CASE("a conversion does not outlive a daemon killed during it; the next daemon plans") {
    SystemEnv env;  // a fresh cache: the plan takes a while, time enough to catch it
    env.define({.name = "web1", .mac = mac_of(1)});
    auto start = std::async(std::launch::async, [&] { return env.vmctl({"start", "web1"}); });
    pid_t converter = 0;
    for (int i = 0; i < 2000 && converter == 0; ++i) {
      converter = child_running(env.daemon_pid(), "vmlaunch-convert");
      if (converter == 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    REQUIRE_MESSAGE(converter != 0, "no conversion seen\n" << env.log());
    // Stopped, the converter stands for one still busy in libvirt's capabilities probe.
    ::kill(converter, SIGSTOP);
    auto started = vl::process_start_time(converter);
    REQUIRE_MESSAGE(started.ok(), "the conversion ended before it could be caught");
    env.kill_daemon();
    (void)start.get();
    bool gone = false;
    for (int i = 0; i < 1000 && !gone; ++i) {
      gone = !vl::process_matches(converter, *started);
      if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    CHECK_MESSAGE(gone, "vmlaunch-convert " << converter << " outlived the daemon");
    if (!gone) ::kill(converter, SIGKILL);
    env.start_daemon();
    auto again = env.vmctl({"start", "web1"});
    CHECK_MESSAGE(again.exit_code == 0, again.out << env.log());
    CHECK(env.vmctl({"stop", "--force", "web1"}).exit_code == 0);
  }

  TEST_CASE("concurrent starts of one VM: one starts it, the other is told it runs") {
    SystemEnv env;
    env.define({.name = "web1", .mac = mac_of(1)});
    std::vector<pid_t> clients;
    std::vector<std::string> outputs(2);
    auto a = std::async(std::launch::async, [&] { return env.vmctl({"start", "web1"}); });
    auto b = std::async(std::launch::async, [&] { return env.vmctl({"start", "web1"}); });
    auto ra = a.get(), rb = b.get();
    std::multiset<int> codes = {ra.exit_code, rb.exit_code};
    CHECK(codes == std::multiset<int>{0, 1});
    CHECK((ra.out + rb.out).find("already running") != std::string::npos);
    CHECK(vm_row(env, "web1")["state"] == "running");
  }

  TEST_CASE("graceful stop of a guest that powers off, forced stop of one that ignores the button") {
    SystemEnv env;
    env.define({.name = "polite", .mac = mac_of(1)});
    env.define({.name = "stubborn", .mac = mac_of(2)});
    std::filesystem::copy_file(vl::test::build_path("VMLAUNCH_GUEST_STUBBORN_IMG"), env.root() + "/images/stubborn.img",
                               std::filesystem::copy_options::overwrite_existing);
    REQUIRE(env.vmctl({"start", "polite", "stubborn"}).exit_code == 0);

    auto t0 = std::chrono::steady_clock::now();
    auto polite = env.vmctl({"stop", "polite", "--timeout", "60"});
    auto polite_secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    CHECK_MESSAGE(polite.exit_code == 0, polite.out);
    CHECK(polite_secs < 30);  // it powered off by itself, long before the deadline
    CHECK(vm_row(env, "polite")["state"] == "stopped");
    CHECK(vm_row(env, "polite")["reason"] == "");

    t0 = std::chrono::steady_clock::now();
    auto stubborn = env.vmctl({"stop", "stubborn", "--timeout", "2"});
    auto stubborn_secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    CHECK_MESSAGE(stubborn.exit_code == 0, stubborn.out);
    CHECK(stubborn_secs >= 2);
    CHECK(stubborn_secs < 10);
    // While it waited, vmctl showed how long was left; the end says it was forced, and when.
    CHECK_MESSAGE(stubborn.out.find("stubborn stopping: waiting for the guest, 2 s left\n") != std::string::npos, stubborn.out);
    Json row = vm_row(env, "stubborn");
    CHECK(row["state"] == "stopped");
    CHECK(row["reason"] == "forced after 2 s: the guest did not power off");
    CHECK_MESSAGE(env.log().find("vmlaunchd: VM 'stubborn': stopped: forced after 2 s: the guest did not power off") !=
                      std::string::npos,
                  env.log());

    // --force asks the guest nothing; its reason and the log say so.
    REQUIRE(env.vmctl({"start", "stubborn"}).exit_code == 0);
    auto forced = env.vmctl({"stop", "stubborn", "--force"});
    CHECK_MESSAGE(forced.exit_code == 0, forced.out);
    row = vm_row(env, "stubborn");
    CHECK(row["state"] == "stopped");
    CHECK(row["reason"] == "forced at once: the guest was not asked to power off");
    CHECK_MESSAGE(env.log().find("vmlaunchd: VM 'stubborn': stopped: forced at once: the guest was not asked to power off") !=
                      std::string::npos,
                  env.log());
  }

  TEST_CASE("a guest that powers itself off reads stopped, 'guest powered off', and the log says so") {
    SystemEnv env;
    env.define({.name = "selfoff", .mac = mac_of(3)});
    // The variant of the test guest that powers off by itself about 2 s after its banner.
    std::filesystem::copy_file(vl::test::build_path("VMLAUNCH_GUEST_POWEROFF_IMG"), env.root() + "/images/selfoff.img",
                               std::filesystem::copy_options::overwrite_existing);
    auto started = env.vmctl({"start", "selfoff"});
    REQUIRE_MESSAGE(started.exit_code == 0, started.out << env.log());
    int pid = vm_row(env, "selfoff")["pid"].get<int>();
    // Real QEMU: the guest's SHUTDOWN (guest: true), the daemon's `quit`, the second SHUTDOWN
    // (guest: false), the exit. None of it may read as a crash.
    Json row;
    bool ended = vl::test::eventually([&] {
      row = vm_row(env, "selfoff");
      return row["state"] == "stopped" || row["state"] == "failed";
    });
    REQUIRE_MESSAGE(ended, row.dump() << env.log());
    CHECK(row["state"] == "stopped");
    CHECK(row["reason"] == "guest powered off");
    CHECK(row["pid"] == 0);
    CHECK_FALSE(vl::test::process_alive(pid));
    CHECK(::if_nametoindex("selfoff-0") == 0);
    CHECK_MESSAGE(env.log().find("vmlaunchd: VM 'selfoff': stopped: guest powered off") != std::string::npos, env.log());
    // A stop now finds nothing to do, and a start runs it again.
    CHECK(env.vmctl({"stop", "selfoff"}).exit_code == 0);
  }

  TEST_CASE("VMs survive a daemon killed with SIGKILL and are re-adopted") {
    SystemEnv env;
    env.define({.name = "web1", .mac = mac_of(1)});
    env.define({.name = "web2", .mac = mac_of(2)});
    REQUIRE(env.vmctl({"start", "web1", "web2"}).exit_code == 0);
    int pid1 = vm_row(env, "web1")["pid"].get<int>(), pid2 = vm_row(env, "web2")["pid"].get<int>();

    env.kill_daemon();
    CHECK(vl::test::process_alive(pid1));
    CHECK(vl::test::process_alive(pid2));
    auto down = env.vmctl({"list"});
    CHECK(down.exit_code == 1);
    CHECK(down.out.find("vmlaunchd is not running") != std::string::npos);

    env.start_daemon();
    // `starting` until the monitor has said the guest runs; never `stopped`.
    Json row1 = vm_row(env, "web1");
    for (int i = 0; i < 1000 && row1["state"] == "starting"; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      row1 = vm_row(env, "web1");
    }
    CHECK(row1["state"] == "running");
    CHECK(row1["pid"] == pid1);
    CHECK(vm_row(env, "web2")["pid"] == pid2);
    // The monitor connection is back: a graceful stop goes through QMP.
    auto stopped = env.vmctl({"stop", "web1", "web2", "--timeout", "30"});
    CHECK_MESSAGE(stopped.exit_code == 0, stopped.out << env.log());
    CHECK_FALSE(vl::test::process_alive(pid1));
    CHECK(::if_nametoindex("web1-0") == 0);
  }

  TEST_CASE("a VM that died while the daemon was down is cleaned up at its restart") {
    SystemEnv env;
    env.define({.name = "web1", .mac = mac_of(1)});
    REQUIRE(env.vmctl({"start", "web1"}).exit_code == 0);
    int pid = vm_row(env, "web1")["pid"].get<int>();
    env.kill_daemon();
    ::kill(pid, SIGKILL);
    for (int i = 0; i < 400 && vl::test::process_alive(pid); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    while (::waitpid(-1, nullptr, WNOHANG) > 0) {
    }
    env.start_daemon();
    // Adoption runs on the daemon's loop; the cleanup it triggers ends in 'stopped'.
    Json row;
    for (int i = 0; i < 400; ++i) {
      row = vm_row(env, "web1");
      if (row["state"] == "stopped") break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    CHECK(row["state"] == "stopped");
    CHECK_FALSE(std::filesystem::exists(env.root() + "/run/vms/web1"));
    CHECK(::if_nametoindex("web1-0") == 0);
  }

  TEST_CASE("clients outside the admin group are refused; errors say what to do") {
    SystemEnv env;
    env.define({.name = "web1", .mac = mac_of(1)});
    auto stranger = vl::test::run_program("/usr/bin/setpriv", {"setpriv", "--reuid=4242", "--regid=4242", "--clear-groups",
                                                               vl::test::build_path("VMLAUNCH_VMCTL"), "--config",
                                                               env.config_path(), "start", "web1"});
    CHECK(stranger.exit_code == 1);
    CHECK(stranger.out.find("permission denied") != std::string::npos);
    CHECK(stranger.out.find("vmlaunch-admin") != std::string::npos);
    CHECK(vm_row(env, "web1")["state"] == "stopped");

    auto unknown = env.vmctl({"start", "nosuchvm"});
    CHECK(unknown.exit_code == 1);
    CHECK(unknown.out.find("not defined") != std::string::npos);
    auto usage = env.vmctl({"frobnicate"});
    CHECK(usage.exit_code == 2);
    auto bad = env.vmctl({"start", "../etc"});
    CHECK(bad.exit_code == 1);
    CHECK(bad.out.find("invalid VM name") != std::string::npos);
    // GetLaunchPlan is for root only, and even root gets a validated plan.
    auto plan = env.vmctl({"plan", "web1"});
    CHECK_MESSAGE(plan.exit_code == 0, plan.out);
    CHECK(plan.out.find("\"kind\": \"monitor\"") != std::string::npos);
  }

  TEST_CASE("the control socket speaks D-Bus: introspection works") {
    SystemEnv env;
    sd_bus* bus = nullptr;
    REQUIRE(sd_bus_new(&bus) >= 0);
    REQUIRE(sd_bus_set_address(bus, ("unix:path=" + env.config().control_socket()).c_str()) >= 0);
    REQUIRE(sd_bus_start(bus) >= 0);
    sd_bus_message* reply = nullptr;
    sd_bus_error error = SD_BUS_ERROR_NULL;
    REQUIRE(sd_bus_call_method(bus, nullptr, vl::kControlPath, "org.freedesktop.DBus.Introspectable", "Introspect",
                               &error, &reply, "") >= 0);
    const char* xml = nullptr;
    REQUIRE(sd_bus_message_read(reply, "s", &xml) >= 0);
    std::string text = xml;
    CHECK(text.find("org.vmlaunch.Manager1") != std::string::npos);
    CHECK(text.find("<method name=\"Start\">") != std::string::npos);
    CHECK(text.find("<signal name=\"StateChanged\">") != std::string::npos);
    sd_bus_message_unref(reply);
    sd_bus_flush_close_unref(bus);
  }

  TEST_CASE("kill answers once the emulator is gone: the next list shows it stopped") {
    SystemEnv env;
    env.define({.name = "web1", .mac = mac_of(1)});
    REQUIRE(env.vmctl({"start", "web1"}).exit_code == 0);
    int pid = vm_row(env, "web1")["pid"].get<int>();
    REQUIRE(pid > 0);
    auto killed = env.vmctl({"kill", "web1"});
    REQUIRE_MESSAGE(killed.exit_code == 0, killed.out << env.log());
    // No waiting here: the kill has answered, so the emulator is gone and cleaned up.
    Json row = vm_row(env, "web1");
    CHECK(row["state"] == "stopped");
    CHECK(row["reason"] == "killed with SIGTERM");
    CHECK(row["pid"] == 0);
    CHECK_FALSE(vl::test::process_alive(pid));
    CHECK(::if_nametoindex("web1-0") == 0);
    // The daemon's log tells the VM's story, naming it.
    std::string log = env.log();
    CHECK_MESSAGE(log.find("vmlaunchd: VM 'web1': started (pid " + std::to_string(pid) + ")") != std::string::npos, log);
    CHECK_MESSAGE(log.find("vmlaunchd: VM 'web1': stopped: killed with SIGTERM") != std::string::npos, log);
  }

  TEST_CASE("a removed domain XML: a running VM keeps running and says so; a stopped or failed one disappears") {
    SystemEnv env;
    env.define({.name = "web1", .mac = mac_of(1)});
    env.define({.name = "web2", .mac = mac_of(2)});
    REQUIRE(env.vmctl({"start", "web1", "web2"}).exit_code == 0);
    // web2 crashes: failed.
    int pid2 = vm_row(env, "web2")["pid"].get<int>();
    ::kill(pid2, SIGKILL);
    Json row;
    for (int i = 0; i < 1000; ++i) {
      row = vm_row(env, "web2");
      if (row["state"] == "failed") break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    REQUIRE(row["state"] == "failed");
    CHECK(row["reason"] == "emulator exited unexpectedly");
    CHECK_MESSAGE(env.log().find("vmlaunchd: VM 'web2': crashed: emulator exited unexpectedly") != std::string::npos, env.log());

    std::filesystem::remove(env.root() + "/domains/web1.xml");
    std::filesystem::remove(env.root() + "/domains/web2.xml");
    // No restart: the next list reads the directory as it is now.
    Json list = list_json(env);
    REQUIRE(list.size() == 1);
    CHECK(list[0]["name"] == "web1");
    CHECK(list[0]["state"] == "running");
    CHECK(list[0]["reason"] == "its definition web1.xml was removed; it keeps running until stopped");
    auto status2 = env.vmctl({"status", "web2"});
    CHECK(status2.exit_code == 1);
    CHECK_MESSAGE(status2.out.find("not defined") != std::string::npos, status2.out);

    auto stopped = env.vmctl({"stop", "--force", "web1"});
    CHECK_MESSAGE(stopped.exit_code == 0, stopped.out);
    CHECK(list_json(env).empty());
    CHECK(::if_nametoindex("web1-0") == 0);

    // Defined again, it is a VM like any other: stopped, no stale reason.
    env.define({.name = "web2", .mac = mac_of(2)});
    row = vm_row(env, "web2");
    CHECK(row["state"] == "stopped");
    CHECK(row["reason"] == "");
  }

  TEST_CASE("without a daemon, vmctl says how to start it with the configuration it was given, on one line, and that command starts it") {
    SystemEnv env;
    env.stop_daemon();
    auto r = env.vmctl({"list"});
    CHECK(r.exit_code == 1);
    CHECK_MESSAGE(r.out == "vmctl: vmlaunchd is not running (no daemon at " + env.config().control_socket() +
                               "); start it as the daemon user with 'vmlaunchd --config " + env.config_path() + " run'\n",
                  r.out);
    // The hint is a command that works: run as the daemon's user, word for word, it serves vmctl.
    size_t open = r.out.find("with '"), close = r.out.rfind('\'');
    REQUIRE(open != std::string::npos);
    std::vector<std::string> argv = {"setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"};
    std::istringstream words(r.out.substr(open + 6, close - open - 6));
    for (std::string w; words >> w;) argv.push_back(w == "vmlaunchd" ? vl::test::build_path("VMLAUNCH_DAEMON") : w);
    ::unlink(env.config().control_socket().c_str());
    auto daemon = vl::spawn({"/usr/bin/setpriv", argv, {"PATH=/usr/bin:/bin"}, {}});
    REQUIRE(daemon.ok());
    bool served = vl::test::eventually([&] { return env.vmctl({"list"}).exit_code == 0; }, std::chrono::seconds(30));
    ::kill(*daemon, SIGTERM);
    int status = vl::wait_for(*daemon).value();
    CHECK_MESSAGE(served, "the hinted command did not start a daemon; it exited " << status);
  }

  TEST_CASE("a start that qemu refuses says what qemu said, in the error and in status") {
    SystemEnv env;
    vl::test::TempDir boot("/run");
    ::chmod(boot.path().c_str(), 0755);
    std::string kernel = boot.path() + "/vmlinuz", initrd = boot.path() + "/initramfs";
    std::ofstream(kernel) << "not a kernel\n";
    std::ofstream(initrd) << "initramfs\n";
    REQUIRE(::chmod(kernel.c_str(), 0644) == 0);
    REQUIRE(::chmod(initrd.c_str(), 0644) == 0);
    env.define({.name = "kern1", .mac = mac_of(41), .kernel = kernel, .initrd = initrd, .cmdline = "console=ttyS0"});
    auto started = env.vmctl({"start", "kern1"});
    CHECK(started.exit_code == 1);
    // QEMU's own words, whatever they are for this file ("qemu: linux kernel too old to load a
    // ram disk" from QEMU 7.2), not only the monitor's closed connection.
    const std::string said = "qemu said: qemu: ";
    CHECK_MESSAGE(started.out.find(said) != std::string::npos, started.out);
    CHECK(started.out.find("kernel") != std::string::npos);
    // What happened, in the operator's words: the monitor's lost connection is only its echo.
    CHECK_MESSAGE(started.out.find("VM 'kern1': the emulator exited during its start; " + said) != std::string::npos,
                  started.out);
    CHECK_MESSAGE(started.out.find("monitor") == std::string::npos, started.out);
    Json row = vm_row(env, "kern1");
    CHECK(row["state"] == "failed");
    CHECK_MESSAGE(row["reason"].get<std::string>().find(said) != std::string::npos, row.dump());
    CHECK_FALSE(std::filesystem::exists(env.root() + "/run/vms/kern1"));
  }

  TEST_CASE("a start the daemon cannot plan says why in the operator's words: no method names, no stray errno") {
    SystemEnv env;
    std::string xml = env.define({.name = "web1", .mac = mac_of(1)});
    // libvirt refuses VNC passwords over 8 characters; vmlaunch's parser leaves that to it.
    xml.insert(xml.find("  </devices>"), "    <graphics type='vnc' autoport='yes' listen='127.0.0.1' passwd='much-too-long-password'/>\n");
    std::ofstream(env.root() + "/domains/web1.xml", std::ios::trunc) << xml;  // keeps its owner and mode
    auto started = env.vmctl({"start", "web1"});
    CHECK(started.exit_code == 1);
    CHECK_MESSAGE(started.out.find("vmlaunchd cannot plan VM 'web1': ") != std::string::npos, started.out);
    CHECK_MESSAGE(started.out.find("VNC password") != std::string::npos, started.out);
    CHECK(started.out.find("GetLaunchPlan") == std::string::npos);
    CHECK(started.out.find("Input/output error") == std::string::npos);
  }
}

