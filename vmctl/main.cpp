// vmctl: the operator's command line for vmlaunchd. This file parses arguments and prints.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/config.h"
#include "vmctl/client.h"
#include "vmctl/console.h"
#include "vmctl/passphrase.h"
#include "vmctl/remote.h"
#include "vmctl/tls_client.h"
#include "vmlaunch_build_config.h"

namespace {

constexpr char kUsage[] =
    "Usage: vmctl [OPTIONS] COMMAND [NAME...]\n"
    "\n"
    "Commands:\n"
    "  list                 List every defined VM with its state\n"
    "  status NAME...       Show one VM: state, pid, uid, zone, taps, VNC display\n"
    "  start NAME...        Start VMs and wait until they run (--all: every autostart VM not\n"
    "                       running, in ascending start order, each order group in parallel)\n"
    "  stop NAME...         Power VMs off and wait until they are stopped (--all: every\n"
    "                       running VM, in descending start order)\n"
    "  restart NAME...      Stop, then start\n"
    "  kill NAME...         Signal the emulator (--signal, default SIGTERM) and wait until it\n"
    "                       is gone and cleaned up (10 s at most)\n"
    "  vncdisplay NAME      Print the VM's VNC socket (\"unix:PATH\"; 'vnc' connects to it)\n"
    "  audit [NAME...|--all] Check VMs and the host against the hardening baseline\n"
    "                       (exit status 1 if any rule fails)\n"
    "  console NAME         Attach to the VM's serial console through vmlaunchd; Ctrl-] detaches\n"
    "                       (--read-only: watch only; --log: print the serial log instead)\n"
    "  vnc NAME             Forward a local port to the VM's VNC server through vmlaunchd\n"
    "                       (--listen ADDRESS:PORT, default 127.0.0.1:0: a free port, printed)\n"
    "  plan NAME            Print the VM's launch plan (root only)\n"
    "  dial-stdio           Connect stdin and stdout to the local control socket: the far\n"
    "                       side of -H ssh://\n"
    "\n"
    "Options:\n"
    "  -H, --host URL       The daemon of another host: ssh://[USER@]HOST[:PORT] (through ssh\n"
    "                       and 'vmctl dial-stdio' there) or tls://HOST[:PORT] (default\n"
    "                       $VMCTL_HOST; empty: this host)\n"
    "  --tls-ca PATH, --tls-cert PATH, --tls-key PATH\n"
    "                       tls://: the CA that signed the server's certificate, and this\n"
    "                       client's certificate and key (default /etc/pki/vmlaunch/ for\n"
    "                       root, ~/.pki/vmlaunch/ otherwise; see vmctl(1))\n"
    "  --config PATH        Host configuration (default " VMLAUNCH_DEFAULT_CONFIG ")\n"
    "  --socket PATH        Control socket (default: from the configuration)\n"
    "  --all                start: every autostart VM; stop, restart, kill: every active VM\n"
    "  --json               Machine-readable output\n"
    "  --timeout SECONDS    Graceful stop deadline before 'quit' (default 120)\n"
    "  --force              stop: quit at once instead of pressing the power button\n"
    "  --mode acpi|agent    stop: how to ask the guest: only the ACPI power button, or only\n"
    "                       QEMU's guest agent (default: the agent if it answers, else the button)\n"
    "  --signal NAME        kill: TERM, KILL or INT (default TERM)\n"
    "  --parallel N         At most N operations at once (default: start and restart 4,\n"
    "                       stop and kill all of them)\n"
    "  --read-only          console: watch without writing (another client may be the writer)\n"
    "  --log                console: print the VM's serial log, from its boot\n"
    "  --listen ADDR:PORT   vnc: where to listen (IPv4)\n"
    "  --ask-passphrase     start: ask on the terminal for the passphrase of each VM's\n"
    "                       encrypted disks (without echo) and pass it to this host's daemon\n"
    "                       as a sealed memfd (instead of the VM's key file)\n"
    "  --help, --version\n"
    "\n"
    "start and stop always wait for the operation to finish.\n"
    "Exit status: 0 all succeeded, 1 some failed, 2 usage error.\n";

struct Options {
  std::string config = VMLAUNCH_DEFAULT_CONFIG;
  std::string socket;
  std::string host;  // -H: "" for the local daemon
  vl::ctl::TlsFiles tls = vl::ctl::default_tls_files();
  std::string command;
  std::vector<std::string> names;
  bool all = false, json = false, force = false, read_only = false, log = false, ask_passphrase = false;
  std::string listen = "127.0.0.1:0";  // vnc --listen
  unsigned timeout = 120;
  unsigned parallel = 0;  // 0: the command's default (parallel_for)
  int signal = SIGTERM;
  std::string mode;  // stop --mode: "acpi" or "agent"; empty: the agent if it answers, else the button
};

int usage_error(const std::string& what) {
  std::fprintf(stderr, "vmctl: %s\nTry 'vmctl --help'.\n", what.c_str());
  return 2;
}

int fail(const vl::Error& e) {
  std::fprintf(stderr, "vmctl: %s\n", e.message().c_str());
  return 1;
}

bool parse_unsigned(const char* s, unsigned& out) {
  char* end = nullptr;
  unsigned long v = std::strtoul(s, &end, 10);
  if (!*s || *end || v > 1000000) return false;
  out = static_cast<unsigned>(v);
  return true;
}

nlohmann::json row_json(const vl::ctl::VmRow& r) {
  return {{"name", r.name}, {"state", r.state}, {"reason", r.reason}, {"pid", r.pid}, {"uid", r.uid},
          {"zone", r.zone}, {"vnc_display", r.vnc_display}, {"autostart", r.autostart}, {"start_order", r.start_order}};
}

int cmd_list(vl::ctl::Client& client, const Options& o) {
  auto rows = client.list();
  if (!rows) return fail(rows.error());
  if (o.json) {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& r : *rows) out.push_back(row_json(r));
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  std::printf("%-14s %-9s %8s %7s %-10s %-4s %s\n", "NAME", "STATE", "PID", "UID", "ZONE", "VNC", "REASON");
  for (const auto& r : *rows)
    std::printf("%-14s %-9s %8s %7s %-10s %-4s %s\n", r.name.c_str(), r.state.c_str(),
                r.pid ? std::to_string(r.pid).c_str() : "-", r.uid ? std::to_string(r.uid).c_str() : "-",
                r.zone.empty() ? "-" : r.zone.c_str(), r.vnc_display >= 0 ? (":" + std::to_string(r.vnc_display)).c_str() : "-",
                r.reason.c_str());
  return 0;
}

int cmd_status(vl::ctl::Client& client, const Options& o) {
  int status = 0;
  nlohmann::json out = nlohmann::json::array();
  for (const auto& name : o.names) {
    auto fields = client.status(name);
    if (!fields) {
      status = fail(fields.error());
      continue;
    }
    nlohmann::json j;
    for (const auto& [k, v] : *fields) j[k] = v;
    if (o.json) {
      out.push_back(j);
      continue;
    }
    for (const auto& [k, v] : *fields) std::printf("%-12s %s\n", (k + ":").c_str(), v.c_str());
    if (o.names.size() > 1) std::printf("\n");
  }
  if (o.json) std::printf("%s\n", out.dump(2).c_str());
  return status;
}

// How many operations of `o.command` run at once unless --parallel says. A start costs the host
// a launch; a stop or kill mostly waits for the guest, so all of them wait together and the
// batch ends with the slowest guest, not with the sum of the slowest of each round.
unsigned parallel_for(const Options& o) {
  if (o.parallel > 0) return o.parallel;
  return o.command == "stop" || o.command == "kill" ? std::numeric_limits<unsigned>::max() : 4;
}

// start/stop/restart/kill over a set of VMs, with live progress and a summary.
int cmd_batch(vl::ctl::Client& client, const Options& o) {
  std::vector<std::string> names = o.names;
  std::map<std::string, int> order;
  if (o.all) {
    auto rows = client.list();
    if (!rows) return fail(rows.error());
    names.clear();
    // --all means: start every autostart VM that is not running; stop, restart or kill every
    // VM that is.
    for (const auto& r : *rows) {
      bool active = r.state == "running" || r.state == "starting" || r.state == "stopping";
      if (o.command == "start" ? (!r.autostart || active) : !active) continue;
      names.push_back(r.name);
      order[r.name] = r.start_order;
    }
  }
  std::string method = o.command == "start" ? "Start" : o.command == "stop" ? (o.mode.empty() ? "Stop" : "Shutdown")
                       : o.command == "restart" ? "Restart" : "Kill";
  // Start in ascending declared order, group by group; stop in the reverse order.
  std::vector<int> groups;
  for (const auto& n : names) groups.push_back(order[n]);
  std::sort(groups.begin(), groups.end());
  groups.erase(std::unique(groups.begin(), groups.end()), groups.end());
  if (o.command == "stop") std::reverse(groups.begin(), groups.end());

  bool tty = ::isatty(1);
  auto progress = [&](const std::string& vm, const std::string& state, const std::string& reason) {
    if (o.json || std::find(names.begin(), names.end(), vm) == names.end()) return;
    std::printf(tty ? "  %-14s \033[1m%s\033[0m%s%s\n" : "%s %s%s%s\n", vm.c_str(), state.c_str(),
                reason.empty() ? "" : ": ", reason.c_str());
    std::fflush(stdout);
  };
  // Every passphrase is asked before the first start: no prompt among the progress lines.
  std::map<std::string, vl::UniqueFd> passphrases;
  for (const auto& n : o.ask_passphrase ? names : std::vector<std::string>{}) {
    if (passphrases.count(n)) continue;
    auto fd = vl::ctl::ask_passphrase(n);
    if (!fd) return fail(fd.error());
    passphrases[n] = std::move(fd).value();
  }
  size_t failed = 0;
  nlohmann::json out = nlohmann::json::array();
  for (int group : groups) {
    std::vector<vl::ctl::BatchCall> calls;
    for (const auto& n : names)
      if (order[n] == group)
        calls.push_back({n, method, o.timeout, o.force, o.signal, o.mode, passphrases.count(n) ? passphrases[n].get() : -1});
    auto results = client.run_batch(calls, parallel_for(o), progress);
    for (size_t i = 0; i < calls.size(); ++i) {
      const auto& r = results[i];
      if (!r) {
        ++failed;
        if (!o.json) std::fprintf(stderr, "vmctl: %s %s: %s\n", o.command.c_str(), vl::quote_for_message(calls[i].vm).c_str(), r.error().message().c_str());
      }
      out.push_back({{"name", calls[i].vm}, {"ok", r.ok()}, {"error", r ? "" : r.error().message()}});
    }
  }
  if (o.json) std::printf("%s\n", out.dump(2).c_str());
  else if (names.size() > 1 || failed) std::printf("%s: %zu succeeded, %zu failed\n", o.command.c_str(), names.size() - failed, failed);
  return failed ? 1 : 0;
}

// Prints the findings, failures first; 1 if any rule fails.
int cmd_audit(vl::ctl::Client& client, const Options& o) {
  auto report = client.audit(o.names);
  if (!report) return fail(report.error());
  nlohmann::json j = nlohmann::json::parse(*report, nullptr, false);
  auto field = [](const nlohmann::json& f, const char* key) {
    auto it = f.find(key);
    return it != f.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  if (j.is_discarded() || !j.is_object() || !j.contains("findings") || !j["findings"].is_array())
    return fail(vl::Error::invalid("the daemon's audit report is malformed"));
  std::map<std::string, unsigned> counts;
  for (const auto& f : j["findings"])
    if (f.is_object()) ++counts[field(f, "verdict")];
  int status = counts["fail"] > 0 ? 1 : 0;
  if (o.json) {
    std::printf("%s\n", j.dump(2).c_str());
    return status;
  }
  for (const char* verdict : {"fail", "skip", "pass"}) {
    for (const auto& f : j["findings"]) {
      if (!f.is_object() || field(f, "verdict") != verdict) continue;
      std::string vm = field(f, "vm");
      std::string label = verdict;
      for (char& c : label) c = static_cast<char>(c - 'a' + 'A');
      std::printf("%-4s %-18s %s: %s\n", label.c_str(), field(f, "rule").c_str(), vm.empty() ? "(host)" : vm.c_str(),
                  field(f, "evidence").c_str());
      if (!field(f, "fix").empty()) std::printf("     fix: %s\n", field(f, "fix").c_str());
    }
  }
  std::printf("audit: %u passed, %u failed, %u skipped\n", counts["pass"], counts["fail"], counts["skip"]);
  return status;
}

int cmd_vncdisplay(vl::ctl::Client& client, const Options& o) {
  auto fields = client.status(o.names[0]);
  if (!fields) return fail(fields.error());
  std::string display, listen;
  for (const auto& [k, v] : *fields) {
    if (k == "vnc_display") display = v;
    if (k == "vnc_listen") listen = v;
  }
  if (!display.empty()) {
    // A jailed emulator's VNC is a Unix socket (only root and the daemon's group may connect):
    // "unix:PATH", as QEMU names it.
    if (listen.rfind("unix:", 0) == 0) std::printf("%s\n", listen.c_str());
    else std::printf("%s:%s\n", listen.empty() ? "127.0.0.1" : listen.c_str(), display.c_str());
    return 0;
  }
  return fail(vl::Error::make(vl::ErrorCode::kNotFound, "VM " + vl::quote_for_message(o.names[0]) + " has no VNC display (is it running?)"));
}

// What an operator runs to start the daemon: the systemd unit on a host booted with systemd
// and the default configuration; otherwise the daemon itself, with the configuration vmctl read.
std::string start_hint(const std::string& config) {
  bool systemd = ::access("/run/systemd/system", F_OK) == 0;
  if (systemd && config == VMLAUNCH_DEFAULT_CONFIG) return "start it with 'systemctl start vmlaunchd'";
  std::string hint = "start it as the daemon user with 'vmlaunchd";
  if (config != VMLAUNCH_DEFAULT_CONFIG) hint += " --config " + config;
  return hint + " run'";
}

// The daemon this invocation talks to: a far one (-H, VMCTL_HOST) or the local one.
vl::Result<vl::ctl::Client> open_client(Options& o) {
  if (!o.host.empty()) {
    auto target = vl::ctl::parse_remote(o.host);
    if (!target) return target.error();
    if (target->kind == vl::ctl::RemoteTarget::Kind::kTls) {
      auto conn = vl::ctl::tls_connect(*target, o.tls);
      if (!conn) return conn.error();
      auto status = conn->status;
      return vl::ctl::Client::over_fd(conn->bus_end.release(), o.host, [status] { return status->reason(); });
    }
    // VMCTL_SSH names another ssh program (like GIT_SSH), e.g. a wrapper adding options.
    const char* ssh = std::getenv("VMCTL_SSH");
    return vl::ctl::Client::connect_ssh(vl::ctl::ssh_bus_address(*target, ssh && *ssh ? ssh : "ssh"), o.host);
  }
  if (o.socket.empty()) {
    auto config = vl::load_config(o.config);
    if (!config) return config.error();
    o.socket = config->control_socket();
  }
  return vl::ctl::Client::connect(o.socket, start_hint(o.config));
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  if (const char* host = std::getenv("VMCTL_HOST")) o.host = host;
  bool host_given = false, local_given = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](const char* opt) -> const char* {
      if (i + 1 >= argc) return nullptr;
      (void)opt;
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (a == "--version") {
      std::printf("vmctl %s\n", VMLAUNCH_VERSION);
      return 0;
    } else if (a == "--config" || a == "--socket") {
      const char* v = value(a.c_str());
      if (!v) return usage_error(a + " needs a path");
      (a == "--config" ? o.config : o.socket) = v;
      local_given = true;
    } else if (a == "--tls-ca" || a == "--tls-cert" || a == "--tls-key") {
      const char* v = value(a.c_str());
      if (!v) return usage_error(a + " needs a path");
      (a == "--tls-ca" ? o.tls.ca : a == "--tls-cert" ? o.tls.cert : o.tls.key) = v;
    } else if (a == "-H" || a == "--host") {
      const char* v = value(a.c_str());
      if (!v) return usage_error(a + " needs a URL (ssh://[USER@]HOST[:PORT] or tls://HOST[:PORT])");
      o.host = v;
      host_given = true;
    } else if (a == "--timeout" || a == "--parallel") {
      const char* v = value(a.c_str());
      unsigned n = 0;
      if (!v || !parse_unsigned(v, n) || (a == "--parallel" && n == 0)) return usage_error(a + " needs a positive number");
      (a == "--timeout" ? o.timeout : o.parallel) = n;
    } else if (a == "--signal") {
      const char* v = value("--signal");
      std::string s = v ? v : "";
      if (s.rfind("SIG", 0) == 0) s = s.substr(3);
      if (s == "TERM") o.signal = SIGTERM;
      else if (s == "KILL") o.signal = SIGKILL;
      else if (s == "INT") o.signal = SIGINT;
      else return usage_error("--signal takes TERM, KILL or INT");
    } else if (a == "--mode") {
      const char* v = value("--mode");
      std::string m = v ? v : "";
      if (m != "acpi" && m != "agent") return usage_error("--mode takes acpi or agent");
      o.mode = m;
    } else if (a == "--listen") {
      const char* v = value("--listen");
      if (!v) return usage_error("--listen needs ADDRESS:PORT");
      o.listen = v;
    } else if (a == "--ask-passphrase") {
      o.ask_passphrase = true;
    } else if (a == "--read-only") {
      o.read_only = true;
    } else if (a == "--log") {
      o.log = true;
    } else if (a == "--all") {
      o.all = true;
    } else if (a == "--json") {
      o.json = true;
    } else if (a == "--force") {
      o.force = true;
    } else if (a.size() > 1 && a[0] == '-') {
      return usage_error("unknown option " + vl::quote_for_message(a));
    } else if (o.command.empty()) {
      o.command = a;
    } else {
      o.names.push_back(a);
    }
  }
  static const std::vector<std::string> kBatch = {"start", "stop", "restart", "kill"};
  bool batch = std::find(kBatch.begin(), kBatch.end(), o.command) != kBatch.end();
  if (!o.mode.empty() && o.command != "stop") return usage_error("--mode is an option of stop");
  if (!o.mode.empty() && o.force) return usage_error("--mode and --force exclude each other");
  if (o.command.empty()) return usage_error("no command given");
  if ((o.read_only || o.log) && o.command != "console") return usage_error("--read-only and --log are options of console");
  if (o.read_only && o.log) return usage_error("--read-only and --log exclude each other");
  if (o.ask_passphrase && (o.command != "start" || o.all)) return usage_error("--ask-passphrase is an option of start with VM names");
  // --config or --socket name this host's daemon: they win over VMCTL_HOST, not over -H.
  if (host_given && local_given) return usage_error("-H names another host's daemon; --config and --socket this one's");
  if (local_given || o.command == "dial-stdio") o.host.clear();
  if (o.command == "dial-stdio") {
    if (host_given || !o.names.empty()) return usage_error("dial-stdio takes no names and no -H");
  } else if (o.command == "list") {
    if (!o.names.empty()) return usage_error("list takes no names");
  } else if (o.command == "status") {
    if (o.all) return usage_error("status takes VM names; use 'list' for all");
    if (o.names.empty()) return usage_error("status needs VM names");
  } else if (batch) {
    if (o.all && !o.names.empty()) return usage_error(o.command + " takes VM names or --all, not both");
    if (!o.all && o.names.empty()) return usage_error(o.command + " needs VM names or --all");
  } else if (o.command == "audit") {
    if (o.all && !o.names.empty()) return usage_error("audit takes VM names or --all, not both");
  } else if (o.command == "vncdisplay" || o.command == "plan" || o.command == "console" || o.command == "vnc") {
    if (o.names.size() != 1) return usage_error(o.command + " takes exactly one VM name");
  } else {
    return usage_error("unknown command '" + o.command + "'");
  }
  if (o.command == "dial-stdio") {
    if (o.socket.empty()) {
      auto config = vl::load_config(o.config);
      if (!config) return fail(config.error());
      o.socket = config->control_socket();
    }
    return vl::ctl::dial_stdio(o.socket);
  }
  // A descriptor cannot cross ssh or TLS: the passphrase goes to this host's daemon only.
  if (o.ask_passphrase && !o.host.empty()) return usage_error("--ask-passphrase works with this host's daemon only, not with -H");
  auto client = open_client(o);
  if (!client) return fail(client.error());
  if (o.command == "list") return cmd_list(*client, o);
  if (o.command == "status") return cmd_status(*client, o);
  if (o.command == "vncdisplay") return cmd_vncdisplay(*client, o);
  if (o.command == "audit") return cmd_audit(*client, o);
  if (o.command == "console" && o.log) {
    auto log = client->read_serial_log(o.names[0]);
    if (!log) return fail(log.error());
    std::fwrite(log->data(), 1, log->size(), stdout);
    return 0;
  }
  if (o.command == "console") return vl::ctl::run_console(*client, o.names[0], o.read_only);
  if (o.command == "vnc") return vl::ctl::run_vnc_forward(*client, o.names[0], o.listen);
  if (o.command == "plan") {
    auto plan = client->launch_plan(o.names[0]);
    if (!plan) return fail(plan.error());
    std::printf("%s\n", nlohmann::json::parse(*plan, nullptr, false).dump(2).c_str());
    return 0;
  }
  return cmd_batch(*client, o);
}
