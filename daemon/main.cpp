// vmlaunchd: the unprivileged vmlaunch daemon. This file only parses the command line.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "common/config.h"
#include "common/domain.h"
#include "common/sys.h"
#include "common/zone_network.h"
#include "daemon/asio.h"

#include "daemon/control_server.h"
#include "daemon/manager.h"
#include "daemon/planner.h"
#include "daemon/service_notify.h"
#include "daemon/tls_listener.h"
#include "vmlaunch_build_config.h"

namespace {

constexpr char kUsage[] =
    "Usage: vmlaunchd [--config PATH] COMMAND [ARGS]\n"
    "\n"
    "Commands:\n"
    "  run             Run the daemon: serve the control socket, supervise every VM, re-adopt\n"
    "                  VMs that are already running. Refuses to run as root.\n"
    "  plan FILE.xml   Print the launch plan of a libvirt domain XML file as JSON: the\n"
    "                  exec-ready qemu argv and the fds it expects. Needs no running daemon.\n"
    "\n"
    "Options:\n"
    "  --config PATH   Host configuration (default " VMLAUNCH_DEFAULT_CONFIG ")\n"
    "  --help          Show this help\n"
    "  --version       Show the version\n"
    "\n"
    "Exit status: 0 on success, 1 on failure, 2 on a usage error.\n";

int usage_error(const char* what) {
  std::fprintf(stderr, "vmlaunchd: %s\nTry 'vmlaunchd --help'.\n", what);
  return 2;
}

int fail(const vl::Error& e) {
  std::fprintf(stderr, "vmlaunchd: %s\n", e.message().c_str());
  return 1;
}

int run_plan(const std::string& config_path, const std::string& xml_path) {
  auto config = vl::load_config(config_path);
  if (!config) return fail(config.error());
  auto xml = vl::sys::read_file(xml_path, 1 << 20);
  if (!xml) return fail(xml.error());
  auto domain = vl::parse_domain(*xml, xml_path);
  if (!domain) return fail(domain.error());
  if (auto resolved = vl::resolve_networks(*domain, *config); !resolved) return fail(resolved.error().wrap(xml_path));
  vl::resolve_nvram(*domain, *config);
  vl::resolve_vnc(*domain, *config);
  vl::Planner planner(*config);
  auto plan = planner.plan(*domain, *xml);
  if (!plan) return fail(plan.error().wrap(xml_path));
  std::printf("%s\n", vl::plan_to_json(*plan, true).c_str());
  return 0;
}

int run_daemon(const std::string& config_path) {
  if (::geteuid() == 0) {
    std::fprintf(stderr, "vmlaunchd: refusing to run as root; run it as the configured daemon user\n");
    return 1;
  }
  auto config = vl::load_config(config_path);
  if (!config) return fail(config.error());
  // A write to a pipe or socket whose reader is gone must fail with EPIPE, not end the daemon:
  // stderr may be a pipe whose reader died, and any local user can make the daemon log (a
  // dropped control connection). systemd ignores SIGPIPE for services by default; standalone
  // and test runs do not. Children get default dispositions back (spawn.cpp).
  ::signal(SIGPIPE, SIG_IGN);
  boost::asio::io_context io;
  vl::Manager manager(io, *config);
  vl::ControlServer server(io, *config, manager);
  vl::ServiceNotifier notifier(io);
  auto signal_state = std::move(manager.on_state_changed);  // the control server's StateChanged
  manager.on_state_changed = [&notifier, signal_state](const vl::VmInfo& info) {
    if (signal_state) signal_state(info);
    notifier.state_changed(info);
  };
  if (auto listening = server.listen(); !listening) return fail(listening.error());
  // Remote clients over TLS, only when configured: a listener that cannot start is an error,
  // not a silent fallback to local-only.
  vl::TlsListener tls(io, *config, server);
  if (!config->tls.listen.empty()) {
    if (auto listening = tls.listen(); !listening) return fail(listening.error());
    std::fprintf(stderr, "vmlaunchd: listening for TLS clients on %s\n", config->tls.listen.c_str());
  }
  manager.adopt_running();
  // Ready once it serves and every VM with runtime state has a supervisor (adopted VMs read
  // `starting` until their monitor answers, and operations on them wait for that): a client
  // that connects after `systemctl start vmlaunchd` returns sees every VM.
  notifier.ready();
  if (auto watching = manager.watch_links(); !watching)
    std::fprintf(stderr, "vmlaunchd: %s; zone bridges are not watched\n", watching.error().message().c_str());
  if (auto following = manager.watch_domains(); !following)
    std::fprintf(stderr, "vmlaunchd: %s; domain changes are seen at the next request only\n",
                 following.error().message().c_str());
  if (auto following = manager.watch_emulators(); !following)
    std::fprintf(stderr, "vmlaunchd: %s; an emulator upgrade is planned for at the next start\n",
                 following.error().message().c_str());
  // After READY=1 and the watches: conversions run in the background, and a definition written
  // meanwhile is queued again rather than missed.
  manager.preplan_all();
  // VMs are not our children and keep running: stopping the daemon only stops serving.
  boost::asio::signal_set signals(io, SIGTERM, SIGINT);
  signals.async_wait([&](boost::system::error_code, int) {
    server.close();
    tls.close();
    io.stop();
  });
  std::fprintf(stderr, "vmlaunchd: listening on %s\n", config->control_socket().c_str());
  io.run();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string config_path = VMLAUNCH_DEFAULT_CONFIG;
  int i = 1;
  for (; i < argc && argv[i][0] == '-'; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (arg == "--version") {
      std::printf("vmlaunchd %s\n", VMLAUNCH_VERSION);
      return 0;
    }
    if (arg == "--config") {
      if (++i >= argc) return usage_error("--config needs a path");
      config_path = argv[i];
    } else if (arg.rfind("--config=", 0) == 0) {
      config_path = arg.substr(9);
    } else {
      return usage_error(("unknown option " + arg).c_str());
    }
  }
  if (i >= argc) return usage_error("no command given");
  std::string command = argv[i++];
  if (command == "run") {
    if (argc != i) return usage_error("run takes no arguments");
    return run_daemon(config_path);
  }
  if (command == "plan") {
    if (argc - i != 1) return usage_error("plan takes exactly one FILE.xml");
    return run_plan(config_path, argv[i]);
  }
  return usage_error(("unknown command '" + command + "'").c_str());
}
