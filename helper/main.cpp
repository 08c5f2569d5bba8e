// vmlaunch-helper: the root side of vmlaunch. This file parses the command line only.
#include <fcntl.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <sys/stat.h>

#include "common/config.h"
#include "common/spawn.h"
#include "common/sys.h"
#include "common/vm_state.h"
#include "common/broker_protocol.h"
#include "helper/broker.h"
#include "helper/cleanup.h"
#include "helper/plan_client.h"
#include "helper/fault.h"
#include "helper/launch.h"
#include "helper/log.h"
#include "helper/nvram.h"
#include "vmlaunch_build_config.h"

namespace {

constexpr char kUsage[] =
    "Usage: vmlaunch-helper [--config PATH] launch NAME [--plan FILE]\n"
    "       vmlaunch-helper [--config PATH] cleanup NAME\n"
    "       vmlaunch-helper [--config PATH] remove-nvram NAME\n"
    "       vmlaunch-helper [--config PATH] serve\n"
    "       vmlaunch-helper [--config PATH] supervise NAME\n"
    "\n"
    "The root side of vmlaunch. Must run as root.\n"
    "\n"
    "Commands:\n"
    "  launch NAME [--plan FILE]\n"
    "                           Prepare VM NAME (uid, taps on its zone bridge, anti-spoofing\n"
    "                           rules, disk ownership, runtime directory) and exec its emulator\n"
    "                           in place as the VM's uid. The plan comes from vmlaunchd, or from\n"
    "                           FILE as printed by 'vmlaunchd plan'; either way it is validated\n"
    "                           against the domain XML.\n"
    "  cleanup NAME             Undo everything launch did. Idempotent.\n"
    "  remove-nvram NAME        Delete the UEFI variable store of VM NAME (as 'virsh undefine\n"
    "                           --nvram' does); refused while NAME runs. Idempotent.\n"
    "  serve                    Run the broker vmlaunchd talks to (start, kill, cleanup).\n"
    "  supervise NAME           In a kvm-vm@NAME unit (ExecStartPost): hand the emulator the\n"
    "                           unit launched to vmlaunchd and wait until the guest runs.\n"
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

// Start from a known state: no inherited fds beyond stdio (and the launch report fd), no
// inherited environment, a umask that never creates anything group- or world-writable, and
// "/" as the working directory (the emulator would inherit any other, and with it a way into
// a directory its uid may not be able to reach by path).
void sanitize_process(int keep_fd) {
  vl::reset_signals();  // inherited blocked or ignored signals would reach the emulator
  if (keep_fd >= 3) {
    if (keep_fd > 3) ::close_range(3, static_cast<unsigned>(keep_fd) - 1, 0);
    ::close_range(static_cast<unsigned>(keep_fd) + 1, UINT_MAX, 0);
    ::fcntl(keep_fd, F_SETFD, FD_CLOEXEC);  // closed by the emulator's execve: EOF means success
  } else {
    ::close_range(3, UINT_MAX, 0);
  }
  vl::helper::fault_injection_init();
  ::clearenv();
  ::setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin", 1);
  ::umask(022);
  if (::chdir("/") != 0) {
    std::perror("vmlaunch-helper: chdir /");
    std::exit(1);
  }
}

// Paths given relative to the caller's working directory, made absolute before sanitize_process
// leaves it.
std::string absolute(const std::string& path) {
  if (path.empty() || path[0] == '/') return path;
  char cwd[PATH_MAX];
  if (!::getcwd(cwd, sizeof cwd)) return path;  // then it fails to open, naming the path
  return std::string(cwd) + "/" + path;
}

}  // namespace

int main(int argc, char** argv) {
  std::string config_path = VMLAUNCH_DEFAULT_CONFIG;
  std::string plan_path;
  int report_fd = -1;
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
    if (arg == "--report-fd") {
      if (++i >= argc) return usage_error("--report-fd needs a number");
      char* end = nullptr;
      long fd = std::strtol(argv[i], &end, 10);
      if (*argv[i] == '\0' || *end != '\0' || fd < 3 || fd > 1023) return usage_error("--report-fd takes an fd number from 3 to 1023");
      report_fd = static_cast<int>(fd);
    } else if (arg == "--config" || arg == "--plan") {
      if (++i >= argc) return usage_error(arg + " needs a path");
      (arg == "--config" ? config_path : plan_path) = argv[i];
    } else if (arg.size() > 1 && arg[0] == '-') {
      return usage_error("unknown option " + arg);
    } else {
      args.push_back(arg);
    }
  }
  if (args.empty()) return usage_error("no command given");
  const std::string& command = args[0];
  if (command != "launch" && command != "cleanup" && command != "serve" && command != "supervise" && command != "remove-nvram")
    return usage_error("unknown command " + vl::quote_for_message(command));
  if (args.size() != (command == "serve" ? 1u : 2u))
    return usage_error(command == "serve" ? "serve takes no arguments" : command + " takes exactly one VM name");
  if (::geteuid() != 0) {
    std::fprintf(stderr, "vmlaunch-helper: must run as root\n");
    return 1;
  }
  config_path = absolute(config_path);
  plan_path = absolute(plan_path);
  // systemd's notification socket, kept across the sanitized environment: the broker and a
  // unit's launch tell systemd when they are ready (sd_notify reads it from the environment;
  // the emulator's environment is built from scratch and never has it).
  const char* notify = std::getenv("NOTIFY_SOCKET");
  std::string notify_socket = notify ? notify : "";
  // The unit run's invocation ID too, which the launch records for the daemon: it tells this
  // run's output in the journal from earlier runs'.
  const char* invocation = std::getenv("INVOCATION_ID");
  std::string invocation_id = invocation && vl::is_invocation_id(invocation) ? invocation : "";
  sanitize_process(report_fd);
  if (!notify_socket.empty()) ::setenv("NOTIFY_SOCKET", notify_socket.c_str(), 1);
  if (!invocation_id.empty()) ::setenv("INVOCATION_ID", invocation_id.c_str(), 1);
  // Launched by a kvm-vm@ unit (type notify) rather than by the broker or by hand.
  const bool in_unit = !notify_socket.empty() && report_fd < 0 && command == "launch";
  // Tell whoever started `launch` why it failed (the broker relays it to the daemon).
  auto fail = [&](const vl::Error& e) {
    if (report_fd >= 3) (void)vl::sys::write_all(report_fd, vl::encode_broker_reply({false, 0, e, {}}));
    return 1;
  };

  auto config = vl::load_config(config_path);
  if (!config) return fail(vl::helper::log_error(config.error()));
  if (command == "serve") {
    auto served = vl::helper::serve_broker(*config, config_path);
    return served ? 0 : (vl::helper::log_error(served.error()), 1);
  }
  auto vm = vl::VmName::parse(args[1]);
  if (!vm) return fail(vl::helper::log_error(vm.error()));
  if (command == "cleanup") return vl::helper::cleanup_vm(*config, *vm) ? 0 : 1;
  if (command == "supervise") {
    vl::helper::log_set_vm(vm->str());
    auto running = vl::helper::report_launched(*config, *vm);
    return running ? 0 : (vl::helper::log_error(running.error()), 1);
  }
  if (command == "remove-nvram") {
    // The runtime directory exists from launch to cleanup: the emulator may have the store open.
    struct stat st {};
    if (::lstat(config->vm_runtime_dir(*vm).c_str(), &st) == 0) {
      std::fprintf(stderr, "vmlaunch-helper: VM '%s' is running (%s exists): stop it first\n", vm->str().c_str(),
                   config->vm_runtime_dir(*vm).c_str());
      return 1;
    }
    auto removed = vl::helper::remove_nvram(*config, *vm);
    return removed ? 0 : (vl::helper::log_error(removed.error()), 1);
  }

  // A unit's launch tells the daemon why it failed: the start waiting for the unit (vmctl
  // start) answers with the launch's own error, not a timeout.
  auto fail_launch = [&](const vl::Error& e) {
    if (in_unit) vl::helper::report_launch_failed(*config, *vm, e);
    return fail(e);
  };
  auto plan = plan_path.empty() ? vl::helper::fetch_plan_from_daemon(*config, *vm)
                                : vl::sys::read_file(plan_path, 256 * 1024);
  if (!plan) return fail_launch(vl::helper::log_error(plan.error()));
  vl::Error failed = vl::helper::launch_vm(*config, *vm, *plan, &report_fd, in_unit,
                                           /*passphrase_from_daemon=*/plan_path.empty());  // returns only on failure
  return fail_launch(failed);
}
