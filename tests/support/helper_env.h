// A complete, throwaway vmlaunch host for root tests: a private network namespace with zone
// bridges, a temporary directory holding the configuration, domains, storage root, runtime and
// state directories, and ways to run the real vmlaunch-helper binary against it.
#pragma once

#include <grp.h>
#include <net/if.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <doctest/doctest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <thread>

#include "common/config.h"
#include "common/domain.h"
#include "common/zone_network.h"
#include "common/plan.h"
#include "common/spawn.h"
#include "common/sys.h"
#include "daemon/planner.h"
#include "tests/support/netns.h"
#include "tests/support/qmp.h"
#include "tests/support/temp_dir.h"

namespace vl::test {

inline void run_ok(const std::string& command) {
  INFO(command);
  REQUIRE(std::system(command.c_str()) == 0);
}

/// Where tests find the built programs (set by meson).
inline std::string build_path(const char* env) {
  const char* p = std::getenv(env);
  REQUIRE_MESSAGE(p, env << " is not set; run the tests through meson");
  return p;
}

/// A uid range of this test process's own: a VM's uid may be killed wholesale by cleanup, so
/// two test runs on one host must never hand out the same uids.
inline std::string test_uid_range() {
  unsigned first = 100000 + static_cast<unsigned>(::getpid() % 20000) * 1000;
  return "vm_uid_first = " + std::to_string(first) + "\nvm_uid_count = 1000\n";
}

/// A plan cache shared by all tests of one process: the embed root's capabilities probe is
/// paid once.
inline const std::string& shared_cache_dir() {
  static TempDir dir;
  return dir.path();
}

struct DomainSpec {
  std::string name = "web1";
  std::string type = "qemu";        // <domain type=...>: 'kvm' only with the Debian /dev/kvm (KvmDevice)
  std::string mac = "52:54:00:00:00:01";
  std::string bridge = "br-dmz";
  std::string zone;                 // metadata zone, empty: none
  std::string disk;                 // default: images/NAME.img
  std::string disk_format = "raw";
  bool luks = false;                // the disk has <encryption format='luks'> (its image must be LUKS)
  std::string block_disk;           // optional second disk, a block device node
  std::string emulator = "/usr/bin/qemu-system-x86_64";
  std::vector<std::string> ips;     // <ip address=..>, family='ipv6' added for IPv6 addresses
  bool nic = true;
  // A Linux guest booted directly (tests/guest/build-linux-guest): <os> names its kernel and
  // initramfs, which must be files only root can change.
  int memory_mib = 32;
  std::string nic_model = "e1000";
  std::string kernel;   // <os><kernel>, empty: none
  std::string initrd;   // <os><initrd>
  std::string cmdline;  // <os><cmdline>
  bool guest_agent = false;  // the guest agent <channel> virt-install adds
  std::string devices;       // more <devices> XML, as written
};

struct HelperResult {
  int status = -1;  // wait status, if it exited
  pid_t pid = 0;    // if it became qemu
  std::string log;
  bool running() const { return pid > 0; }
};

class HelperEnv {
 public:
  HelperEnv() {
    root_ = tmp_.path();
    ::chmod(root_.c_str(), 0755);  // VM uids must be able to traverse to their disks
    // What packaging installs: the directories themselves persist, their contents do not.
    for (const char* d : {"domains", "images", "run", "run/vms", "run/vnc", "state", "state/disks", "udev"})
      std::filesystem::create_directory(root_ + "/" + d);
    ::chmod((root_ + "/state").c_str(), 0700);
    write_config("");
    make_bridges();
  }

  /// (Re)writes the configuration, with `extra` TOML appended.
  void write_config(const std::string& extra) {
    std::ofstream(root_ + "/vmlaunch.toml") << "[paths]\n"
        << "domains = \"" << root_ << "/domains\"\n"
        << "keys = \"" << root_ << "/keys\"\n"
        << "runtime = \"" << root_ << "/run\"\n"
        << "state = \"" << root_ << "/state\"\n"
        << "cache = \"" << cache_dir_ << "\"\n"
        << "log = \"" << root_ << "/log\"\n"
        << "udev_rules = \"" << root_ << "/udev\"\n"
        << "userdb = \"" << root_ << "/userdb\"\n"
        << users_
        << "[storage]\nroots = [\"" << root_ << "/images\"]\n"
        << "[zones.dmz]\nbridge = \"br-dmz\"\n[zones.lan]\nbridge = \"br-lan\"\n" << extra;
    auto config = load_config(root_ + "/vmlaunch.toml");
    REQUIRE_MESSAGE(config.ok(), config.error().message());
    config_ = *config;
  }

  HelperEnv(const HelperEnv&) = delete;
  HelperEnv& operator=(const HelperEnv&) = delete;

  void make_bridges() {
    for (const char* br : {"br-dmz", "br-lan"}) {
      run_ok(std::string("ip link add ") + br + " type bridge");
      run_ok(std::string("ip link set ") + br + " up");
    }
    run_ok("ip link add notbr0 type veth peer name notbr1");  // interfaces that are no bridge
  }
  ~HelperEnv() {
    for (pid_t pid : running_) {
      ::kill(pid, SIGKILL);
      (void)wait_for(pid);
    }
  }

  const std::string& root() const { return root_; }
  const HostConfig& config() const { return config_; }
  std::string config_path() const { return root_ + "/vmlaunch.toml"; }

  /// Writes domains/NAME.xml and a disk image for it; returns the XML.
  std::string define(const DomainSpec& spec) {
    std::string disk = spec.disk.empty() ? root_ + "/images/" + spec.name + ".img" : spec.disk;
    if (spec.disk.empty()) {
      std::filesystem::copy_file(build_path("VMLAUNCH_GUEST_IMG"), disk,
                                 std::filesystem::copy_options::overwrite_existing);
      ::chmod(disk.c_str(), 0644);
    }
    std::string os = "<type arch='x86_64' machine='pc'>hvm</type>";
    if (!spec.kernel.empty())
      os += "<kernel>" + spec.kernel + "</kernel><initrd>" + spec.initrd + "</initrd><cmdline>" + spec.cmdline + "</cmdline>";
    std::string xml = "<domain type='" + spec.type + "'>\n  <name>" + spec.name + "</name>\n  <memory unit='MiB'>" +
        std::to_string(spec.memory_mib) + "</memory>\n  <os>" + os + "</os>\n  <features><acpi/></features>\n";
    if (!spec.zone.empty())
      xml += "  <metadata><vl:vm xmlns:vl='urn:vmlaunch:domain:1'><vl:zone>" + spec.zone + "</vl:zone></vl:vm></metadata>\n";
    xml += "  <devices>\n    <emulator>" + spec.emulator + "</emulator>\n"
           "    <disk type='file' device='disk'><driver name='qemu' type='" + spec.disk_format + "'/><source file='" + disk +
           "'/><target dev='hda' bus='ide'/>" +
           (spec.luks ? "<encryption format='luks'><secret type='passphrase' usage='" + spec.name + "'/></encryption>" : "") +
           "</disk>\n";
    if (!spec.block_disk.empty())
      xml += "    <disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='" + spec.block_disk +
             "'/><target dev='hdb' bus='ide'/></disk>\n";
    if (spec.nic) {
      xml += "    <interface type='bridge'><mac address='" + spec.mac + "'/><source bridge='" + spec.bridge +
             "'/><model type='" + spec.nic_model + "'/>";
      for (const auto& ip : spec.ips)
        xml += "<ip address='" + ip + "'" + (ip.find(':') != std::string::npos ? " family='ipv6'" : "") + "/>";
      xml += "</interface>\n";
    }
    if (spec.guest_agent)
      xml += "    <channel type='unix'><source mode='bind'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>\n";
    xml += spec.devices;
    xml += "    <serial type='pty'/>\n  </devices>\n</domain>\n";
    install_domain(spec.name, xml);
    return xml;
  }

  /// Writes domains/NAME.xml as an operator installs it (common/domain_file.h): root alone
  /// writes it, and only root and the daemon's group read it.
  void install_domain(const std::string& name, const std::string& xml) {
    std::string path = root_ + "/domains/" + name + ".xml";
    std::ofstream(path) << xml;
    const group* daemon_group = ::getgrnam(config_.daemon_group.c_str());
    REQUIRE_MESSAGE(daemon_group, config_.daemon_group);
    REQUIRE(::chown(path.c_str(), 0, daemon_group->gr_gid) == 0);
    REQUIRE(::chmod(path.c_str(), 0640) == 0);
  }

  /// The plan of a defined domain, computed by the real planner (emulator check skipped when
  /// the test wants a plan for a disallowed emulator).
  std::string plan_json(const std::string& name) {
    std::string xml = sys::read_file(root_ + "/domains/" + name + ".xml", 1 << 20).value();
    auto domain = parse_domain(xml, name + ".xml");
    REQUIRE_MESSAGE(domain.ok(), domain.error().message());
    resolve_nvram(*domain, config_);
    resolve_vnc(*domain, config_);
    HostConfig planning = config_;
    planning.emulators = {domain->emulator};
    Planner planner(planning);
    auto plan = planner.plan(*domain, xml);
    REQUIRE_MESSAGE(plan.ok(), plan.error().message());
    return plan_to_json(*plan, false);
  }

  std::string write_plan(const std::string& name, const std::string& json) {
    std::string path = root_ + "/" + name + ".plan.json";
    std::ofstream(path) << json;
    return path;
  }

  /// Runs `vmlaunch-helper ARGS`; waits until it exits or has become a qemu that answers QMP.
  HelperResult helper(std::vector<std::string> args, std::vector<std::string> env = {}) {
    std::string log_path = root_ + "/helper.log";
    UniqueFd log(::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    std::vector<std::string> argv = {"vmlaunch-helper", "--config", config_path()};
    argv.insert(argv.end(), args.begin(), args.end());
    auto pid = spawn({build_path("VMLAUNCH_HELPER"), argv, env, {{log.get(), 1}, {log.get(), 2}}});
    REQUIRE_MESSAGE(pid.ok(), pid.error().message());
    HelperResult result;
    bool launch = !args.empty() && args[0] == "launch";
    std::string qmp_path = launch ? root_ + "/run/vms/" + args[1] + "/qmp.sock" : "";
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      if (::waitpid(*pid, &status, WNOHANG) == *pid) {
        result.status = status;
        break;
      }
      if (launch && std::filesystem::exists(root_ + "/run/vms/" + args[1] + "/state.json") &&
          std::filesystem::exists("/proc/" + std::to_string(*pid) + "/exe") &&
          std::filesystem::read_symlink("/proc/" + std::to_string(*pid) + "/exe") == "/usr/bin/qemu-system-x86_64") {
        result.pid = *pid;
        running_.push_back(*pid);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    REQUIRE_MESSAGE((result.status >= 0 || result.pid > 0), "helper neither exited nor became qemu");
    result.log = sys::read_file(log_path, 1 << 20).value();
    return result;
  }

  HelperResult launch(const std::string& name, std::vector<std::string> env = {}) {
    std::string plan = write_plan(name, plan_json(name));
    return helper({"launch", name, "--plan", plan}, std::move(env));
  }

  /// Stops a launched VM with SIGKILL and reaps it.
  void kill_vm(pid_t pid) {
    ::kill(pid, SIGKILL);
    (void)wait_for(pid);
    running_.erase(std::remove(running_.begin(), running_.end(), pid), running_.end());
  }

  /// Everything a launch may change, to compare before and after: interfaces, nftables
  /// tables, and owner/mode of every file below the test root (the permanent uid map aside).
  std::map<std::string, std::string> snapshot() const {
    std::map<std::string, std::string> s;
    // /sys/class/net shows the namespace sysfs was mounted in, not ours: ask the kernel.
    if (struct if_nameindex* names = ::if_nameindex()) {
      for (struct if_nameindex* i = names; i->if_index != 0; ++i) s[std::string("if ") + i->if_name] = "";
      ::if_freenameindex(names);
    }
    FILE* nft = ::popen("nft list tables 2>&1", "r");
    char buf[4096];
    std::string tables;
    while (nft && std::fgets(buf, sizeof buf, nft)) tables += buf;
    if (nft) ::pclose(nft);
    s["nft"] = tables;
    for (const auto& e : std::filesystem::recursive_directory_iterator(root_)) {
      std::string p = e.path().string();
      // uid assignments, their userdb names, the helpers' lock files and the serial logs (a
      // record of each run, kept after the VM) are permanent by design; the daemon's plan cache
      // is its own, filled in the background whenever it plans ahead.
      if (p.find("/state/uids") != std::string::npos || p.find("/userdb") != std::string::npos ||
          p.rfind(root_ + "/log", 0) == 0 || p.rfind(root_ + "/cache/", 0) == 0 ||
          p.ends_with("/state/helper.lock") || p.find("/state/locks") != std::string::npos ||
          p.ends_with("helper.log") || p.ends_with(".plan.json"))
        continue;
      struct stat st {};
      ::lstat(p.c_str(), &st);
      s[p] = std::to_string(st.st_uid) + ":" + std::to_string(st.st_gid) + " " + std::to_string(st.st_mode);
    }
    return s;
  }

 private:
  ScopedNetns ns_;
  TempDir tmp_;
  std::string root_;
  HostConfig config_;
  std::vector<pid_t> running_;

 protected:
  std::string cache_dir_ = shared_cache_dir();
  std::string users_ = "[users]\ndaemon_group = \"root\"\n" + test_uid_range();
};

/// The entries that differ between two snapshots, one per line; empty if they are equal.
inline std::string snapshot_diff(const std::map<std::string, std::string>& a,
                                 const std::map<std::string, std::string>& b) {
  std::string out;
  for (const auto& [k, v] : a) {
    auto it = b.find(k);
    if (it == b.end()) out += "gone: " + k + " " + v + "\n";
    else if (it->second != v) out += "changed: " + k + " " + v + " -> " + it->second + "\n";
  }
  for (const auto& [k, v] : b)
    if (!a.count(k)) out += "new: " + k + " " + v + "\n";
  return out;
}

/// What a shell command prints on stdout (for inspection with `ip`, `bridge`, `nft`).
inline std::string command_output(const std::string& command) {
  std::string out;
  FILE* p = ::popen(command.c_str(), "r");
  char buf[4096];
  while (p && std::fgets(buf, sizeof buf, p)) out += buf;
  if (p) ::pclose(p);
  return out;
}

/// `ip -details link show NAME` in the current namespace ("" if there is no such link).
inline std::string link_details(const std::string& name) {
  return command_output("ip -details link show " + name + " 2>/dev/null");
}

/// The bridge's forwarding database as `bridge fdb show` prints it, one entry a line.
inline std::string bridge_fdb(const std::string& bridge) {
  return command_output("bridge fdb show br " + bridge + " 2>/dev/null");
}

/// "UID:GID MODE" of a file, the mode in octal ("0:0 0644").
inline std::string owner_and_mode(const std::string& path) {
  struct stat st {};
  REQUIRE_MESSAGE(::stat(path.c_str(), &st) == 0, path);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%u:%u %04o", st.st_uid, st.st_gid, st.st_mode & 07777);
  return buf;
}

/// Launches `name` and checks that the helper refuses it (exit status 1, not a signal) with a
/// log that says `expected`, and that nothing changed. A launch that does start fails the test
/// and is stopped and cleaned up, so that the next case starts from a clean state.
inline void check_launch_refused(HelperEnv& env, const std::string& name, const std::string& expected) {
  auto before = env.snapshot();
  auto r = env.launch(name);
  CHECK_FALSE(r.running());
  if (r.running()) {
    env.kill_vm(r.pid);
    (void)env.helper({"cleanup", name});
    return;
  }
  CHECK(WIFEXITED(r.status));
  CHECK(WEXITSTATUS(r.status) == 1);
  CHECK_MESSAGE(r.log.find(expected) != std::string::npos, r.log);
  CHECK_MESSAGE(snapshot_diff(before, env.snapshot()).empty(), snapshot_diff(before, env.snapshot()));
}

/// Defines VM `name` with an emulator that root can stat but the VM's uid cannot reach (a link
/// in a root-only directory), so that its launch fails at execve, after the privilege drop.
inline void define_with_unreachable_emulator(HelperEnv& env, const std::string& name) {
  std::string hidden = env.root() + "/hidden";
  std::filesystem::create_directory(hidden);
  ::chmod(hidden.c_str(), 0700);
  std::filesystem::create_symlink("/usr/bin/qemu-system-x86_64", hidden + "/qemu");
  env.write_config("[emulators]\nallowed = [\"" + hidden + "/qemu\"]\n");
  env.define({.name = name, .emulator = hidden + "/qemu"});
}

/// Fields of /proc/PID/status.
inline std::map<std::string, std::string> proc_status(pid_t pid) {
  std::map<std::string, std::string> fields;
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string value = line.substr(colon + 1);
    value.erase(0, value.find_first_not_of(" \t"));
    while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.pop_back();
    fields[line.substr(0, colon)] = value;
  }
  return fields;
}

}  // namespace vl::test
