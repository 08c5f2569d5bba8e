// vmlaunch-helper: the root side of vmlaunch. This file parses the command line only.
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <sys/stat.h>

#include "common/config.h"
#include "common/sys.h"
#include "helper/cleanup.h"
#include "helper/fault.h"
#include "helper/launch.h"
#include "helper/log.h"
#include "vmlaunch_build_config.h"

namespace {

constexpr char kUsage[] =
    "Usage: vmlaunch-helper [--config PATH] launch NAME --plan FILE\n"
    "       vmlaunch-helper [--config PATH] cleanup NAME\n"
    "\n"
    "The root side of vmlaunch. Must run as root.\n"
    "\n"
    "Commands:\n"
    "  launch NAME --plan FILE  Prepare VM NAME (uid, taps on its zone bridge, anti-spoofing\n"
    "                           rules, disk ownership, runtime directory) and exec its emulator\n"
    "                           in place as the VM's uid. FILE is a launch plan as printed by\n"
    "                           'vmlaunchd plan'; it is validated against the domain XML.\n"
    "  cleanup NAME             Undo everything launch did. Idempotent.\n"
    "\n"
    "Options:\n"
    "  --config PATH            Host configuration (default " VMLAUNCH_DEFAULT_CONFIG ")\n"
    "  --help, --version\n"
    "\n"
    "Exit status: 0 success, 1 failure, 2 usage error.\n";

int usage_error(const std::string& what) {
  std::fprintf(stderr, "vmlaunch-helper: %s\nTry 'vmlaunch-helper --help'.\n", what.c_str());
  return 2;
}

// Start from a known state: no inherited fds beyond stdio, no inherited environment, a
// umask that never creates anything group- or world-writable.
void sanitize_process() {
  ::close_range(3, UINT_MAX, 0);
  vl::helper::fault_injection_init();
  ::clearenv();
  ::setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin", 1);
  ::umask(022);
}

}  // namespace

int main(int argc, char** argv) {
  std::string config_path = VMLAUNCH_DEFAULT_CONFIG;
  std::string plan_path;
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (arg == "--version") {
      std::printf("vmlaunch-helper %s\n", VMLAUNCH_VERSION);
      return 0;
    }
    if (arg == "--config" || arg == "--plan") {
      if (++i >= argc) return usage_error(arg + " needs a path");
      (arg == "--config" ? config_path : plan_path) = argv[i];
    } else if (arg.size() > 1 && arg[0] == '-') {
      return usage_error("unknown option " + arg);
    } else {
      args.push_back(arg);
    }
  }
  if (args.size() != 2) return usage_error("expected a command and a VM name");
  const std::string& command = args[0];
  if (command != "launch" && command != "cleanup") return usage_error("unknown command '" + command + "'");
  if (::geteuid() != 0) {
    std::fprintf(stderr, "vmlaunch-helper: must run as root\n");
    return 1;
  }
  sanitize_process();

  auto vm = vl::VmName::parse(args[1]);
  if (!vm) return (vl::helper::log_error(vm.error()), 1);
  auto config = vl::load_config(config_path);
  if (!config) return (vl::helper::log_error(config.error()), 1);

  if (command == "cleanup") return vl::helper::cleanup_vm(*config, *vm) ? 0 : 1;

  if (plan_path.empty()) return usage_error("launch needs --plan FILE");
  auto plan = vl::sys::read_file(plan_path, 256 * 1024);
  if (!plan) return (vl::helper::log_error(plan.error()), 1);
  vl::helper::launch_vm(*config, *vm, *plan);  // returns only on failure, already logged
  return 1;
}
