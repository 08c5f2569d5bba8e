// The chaos suite: real vmctl clients, daemon, broker and emulators in a private network
// namespace, driven by a seeded schedule (schedule.h) of concurrent operations and SIGKILLs.
// After every round the VMs' states are held against what the round allowed (model.h); after
// every N operations the kernel's view (kernel_view.h) against the daemon's (invariants.h).
// docs/reliability.md describes it for operators.
//
// Parameters come from the environment (defaults: the CI variant):
//   VMLAUNCH_CHAOS_SEED          the schedule's seed (default: drawn, and printed)
//   VMLAUNCH_CHAOS_OPS           client operations (300)
//   VMLAUNCH_CHAOS_VMS           VMs operated on (6)
//   VMLAUNCH_CHAOS_CLIENTS       concurrent clients (3)
//   VMLAUNCH_CHAOS_DAEMON_KILLS  SIGKILLs of the daemon, each followed by a restart (10)
//   VMLAUNCH_CHAOS_BROKER_KILLS  SIGKILLs of the broker, each followed by a restart (10)
//   VMLAUNCH_CHAOS_QEMU_KILLS    SIGKILLs of an emulator from outside (20)
//   VMLAUNCH_CHAOS_CHECK_EVERY   kernel invariants after every N operations (10)
//   VMLAUNCH_CHAOS_VNC           1: every VM has VNC with autoport (0)
//   VMLAUNCH_CHAOS_BURST         at the end, start this many more VMs in one call (0)
//   VMLAUNCH_CHAOS_KEEP_GOING    1: go on after a failed check, to collect more findings (0)
//   VMLAUNCH_CHAOS_WARM          0: start with a cold plan cache, as on a fresh host (1)
//   VMLAUNCH_CHAOS_LOG           where the operation log goes (chaos-SEED.log in the cwd)
//
// Expected failures, exactly (anything else fails the suite; model.h, expected_failure()):
//   - start: "is already running" if the VM ran when the round began, or another client of the
//     round operated on it, or an emulator kill or daemon restart struck the round; restart:
//     only for the last three reasons.
//   - kill: "is not running" if the VM did not run when the round began, or another client of
//     the round operated on it, or its emulator was killed in the round.
//   - any operation, in a round whose daemon was killed: "lost the connection to vmlaunchd",
//     "vmlaunchd is not running", or the raw "Connection terminated", "Connection reset by
//     peer", "Transport endpoint is not connected" (daemon_gone()); in a round whose broker was
//     killed: a message about "the vmlaunch broker".
// A successful answer is a commitment: the VM must be in the state it promises once the round
// settles, whatever was killed afterwards in that round (except its own emulator).
#include <doctest/doctest.h>
#include <signal.h>
#include <sys/syscall.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <future>
#include <random>
#include <thread>

#include "tests/chaos/invariants.h"
#include "tests/chaos/kernel_view.h"
#include "tests/chaos/model.h"
#include "tests/chaos/schedule.h"
#include "tests/chaos/vmctl_runner.h"
#include "tests/support/system_env.h"

using namespace std::chrono_literals;
using Json = nlohmann::json;

namespace vl::chaos {
namespace {

constexpr auto kOpDeadline = 240s;      // a graceful stop is 5 s + 5 s; starts are sub-second
constexpr auto kSettleDeadline = 120s;  // no VM may stay starting/stopping longer

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : fallback;
}

Params params_from_env() {
  Params p;
  const char* seed = std::getenv("VMLAUNCH_CHAOS_SEED");
  p.seed = seed && *seed ? std::strtoull(seed, nullptr, 0) : std::random_device{}();
  p.ops = env_int("VMLAUNCH_CHAOS_OPS", p.ops);
  p.vms = std::max(1, env_int("VMLAUNCH_CHAOS_VMS", p.vms));
  p.clients = std::max(1, env_int("VMLAUNCH_CHAOS_CLIENTS", p.clients));
  p.daemon_kills = env_int("VMLAUNCH_CHAOS_DAEMON_KILLS", p.daemon_kills);
  p.broker_kills = env_int("VMLAUNCH_CHAOS_BROKER_KILLS", p.broker_kills);
  p.qemu_kills = env_int("VMLAUNCH_CHAOS_QEMU_KILLS", p.qemu_kills);
  p.check_every = std::max(1, env_int("VMLAUNCH_CHAOS_CHECK_EVERY", p.check_every));
  p.vnc = env_int("VMLAUNCH_CHAOS_VNC", 0) != 0;
  p.burst = env_int("VMLAUNCH_CHAOS_BURST", 0);
  p.keep_going = env_int("VMLAUNCH_CHAOS_KEEP_GOING", 0) != 0;
  p.warm = env_int("VMLAUNCH_CHAOS_WARM", 1) != 0;
  return p;
}

using Row = VmRow;

std::string mac_of(int i) {
  char buf[18];
  std::snprintf(buf, sizeof buf, "52:54:00:%02x:%02x:%02x", 0x30 + i / 65536, (i / 256) % 256, i % 256);
  return buf;
}

class Chaos {
 public:
  // A finding may leave processes behind (a launch stuck after its daemon died, an emulator
  // nobody supervises). Once the system is torn down, they go too: they are this run's own
  // (its config path, its uid range), and nothing else on the host is touched.
  ~Chaos() {
    std::string config = env_->config_path();
    env_.reset();
    for (const auto& p : read_procs()) {
      bool ours = p.cmdline.find(" " + config + " ") != std::string::npos ||
                  (p.uid >= uid_first_ && p.uid < uid_first_ + 1000);
      if (ours && p.state != 'Z') {
        std::fprintf(stderr, "chaos: killing leftover process %d (uid %u): %.100s\n", p.pid, p.uid, p.cmdline.c_str());
        ::kill(p.pid, SIGKILL);
      }
    }
  }
  Chaos(const Chaos&) = delete;
  Chaos& operator=(const Chaos&) = delete;

  explicit Chaos(Params p) : p_(p) {
    for (int i = 0; i < p_.vms; ++i) names_.push_back("vm" + std::to_string(i));
    for (const auto& n : names_) define(n, static_cast<int>(&n - names_.data()) + 1);
    define("probe", 0);
    uid_first_ = 100000 + static_cast<unsigned>(::getpid() % 20000) * 1000;  // test_uid_range()
    const char* log = std::getenv("VMLAUNCH_CHAOS_LOG");
    log_path_ = log && *log ? log : "chaos-" + std::to_string(p_.seed) + ".log";
  }

  void run() {
    auto rounds = make_schedule(p_);
    std::fprintf(stderr,
                 "chaos: seed %llu (reproduce with VMLAUNCH_CHAOS_SEED=%llu), %d ops in %zu rounds over %d VMs, "
                 "%d clients, %d daemon / %d broker / %d emulator kills, check every %d ops, vnc %d, burst %d\n",
                 static_cast<unsigned long long>(p_.seed), static_cast<unsigned long long>(p_.seed), p_.ops,
                 rounds.size(), p_.vms, p_.clients, p_.daemon_kills, p_.broker_kills, p_.qemu_kills, p_.check_every,
                 p_.vnc, p_.burst);
    if (p_.warm)
      for (const auto& name : names_) {
        auto r = vmctl({"plan", name});
        REQUIRE_MESSAGE(r.exit_code == 0, "plan " << name << ": " << r.err);
      }
    t0_ = std::chrono::steady_clock::now();
    auto settled = settle();
    REQUIRE_MESSAGE(settled, "the system never settled before the first round");
    rows_ = *settled;
    int ops_done = 0, next_check = p_.check_every;
    for (size_t i = 0; i < rounds.size() && (p_.keep_going || violations_.empty()); ++i) {
      run_round(static_cast<int>(i), rounds[i]);
      ops_done += static_cast<int>(rounds[i].ops.size());
      if (ops_done >= next_check || i + 1 == rounds.size()) {
        check_kernel("after round " + std::to_string(i) + " (" + std::to_string(ops_done) + " ops)", true);
        next_check = ops_done + p_.check_every;
        // The probe changed its own row: the next round begins from what is now.
        if (auto settled = settle()) rows_ = *settled;
      }
      if (i % 10 == 9)
        std::fprintf(stderr, "chaos: %d/%d ops, %.0f s, %d unexpected failures, %d violations\n", ops_done, p_.ops,
                     elapsed(), unexpected_, static_cast<int>(violations_.size()));
    }
    if (p_.burst > 0 && (p_.keep_going || violations_.empty())) burst();
    report();
  }

 private:
  double elapsed() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count(); }

  void define(const std::string& name, int index) {
    env_->define({.name = name, .mac = mac_of(index), .zone = "dmz"});
    if (!p_.vnc) return;
    std::string path = env_->root() + "/domains/" + name + ".xml";
    std::string xml = sys::read_file(path, 1 << 20).value();
    xml.insert(xml.find("  </devices>"), "    <graphics type='vnc' autoport='yes' listen='127.0.0.1'/>\n");
    std::ofstream(path) << xml;  // keeps the owner and mode define() gave it
  }

  VmctlResult vmctl(std::vector<std::string> args) {
    return run_vmctl(test::build_path("VMLAUNCH_VMCTL"), env_->config_path(), std::move(args), kOpDeadline);
  }

  std::optional<Rows> list() {
    auto r = vmctl({"list", "--json"});
    auto j = Json::parse(r.out, nullptr, false);
    if (r.exit_code != 0 || !j.is_array()) return std::nullopt;
    Rows rows;
    for (const auto& e : j) {
      Row row{e.value("state", ""), e.value("reason", ""), e.value("pid", 0), e.value("uid", 0),
              e.value("vnc_display", -1)};
      rows[e.value("name", "")] = row;
      if (row.uid != 0) uid_of_[e.value("name", "")] = row.uid;
    }
    return rows;
  }

  /// A VM the daemon has not finished with: in a transitional state, or said to run on an
  /// emulator that has exited (the daemon learns of an exit asynchronously).
  static bool unsettled(const Row& row) {
    // "not cleaned up yet (retrying)": a teardown the daemon retries every few seconds (the
    // broker was away); settled once it has converged.
    return row.state == "starting" || row.state == "stopping" || (row.state == "running" && !test::process_alive(row.pid)) ||
           (row.state == "failed" && row.reason.find("not cleaned up yet") != std::string::npos);
  }

  /// Waits until the daemon answers and every VM is settled. `leaving`: VMs whose emulator
  /// (VM -> pid) was signalled with an answer of success; `kill` answers once the signal is
  /// sent, so the VM is settled once that emulator no longer runs as it.
  std::optional<Rows> settle(const std::map<std::string, int>& leaving = {}) {
    auto until = std::chrono::steady_clock::now() + kSettleDeadline;
    std::optional<Rows> rows;
    auto busy_row = [&](const std::string& name, const Row& row) {
      return unsettled(row) || (leaving.count(name) && row.state == "running" && row.pid == leaving.at(name));
    };
    while (std::chrono::steady_clock::now() < until) {
      rows = list();
      bool busy = !rows;
      if (rows)
        for (const auto& [name, row] : *rows) busy |= busy_row(name, row);
      if (!busy) return rows;
      std::this_thread::sleep_for(100ms);
    }
    std::string why = "the system did not settle within " + std::to_string(kSettleDeadline.count()) + " s: ";
    if (!rows) why += "the daemon does not answer `list`";
    else
      for (const auto& [name, row] : *rows)
        if (busy_row(name, row))
          why += name + " stuck in " + row.state + " (pid " + std::to_string(row.pid) + ")" +
                 (leaving.count(name) ? " though its kill was answered ok" : "") + "; ";
    violation(why);
    return std::nullopt;
  }

  std::vector<std::string> op_args(const ClientOp& op) const {
    std::string vm = op.vm >= 0 ? names_[static_cast<size_t>(op.vm)] : "";
    switch (op.kind) {
      case OpKind::kStart: return {"--json", "start", vm};
      case OpKind::kStop: return {"--json", "stop", "--timeout", "5", vm};
      case OpKind::kStopForce: return {"--json", "stop", "--force", vm};
      case OpKind::kKillTerm: return {"--json", "kill", "--signal", "TERM", vm};
      case OpKind::kKillKill: return {"--json", "kill", "--signal", "KILL", vm};
      case OpKind::kRestart: return {"--json", "restart", "--timeout", "5", vm};
      case OpKind::kStatus: return {"--json", "status", vm};
      case OpKind::kList: return {"--json", "list"};
      case OpKind::kStopAll: return {"--json", "stop", "--all", "--timeout", "5"};
    }
    return {};
  }

  void run_round(int index, const Round& round) {
    const Rows pre = rows_;
    double started = elapsed();
    // Emulator kills aim at a VM that runs as the round begins; the pidfd is taken now so a
    // later holder of the pid is never hit.
    std::vector<Struck> struck;
    std::vector<UniqueFd> pidfds;
    std::vector<std::string> running;
    for (const auto& [name, row] : pre)
      if (row.state == "running" && name != "probe") running.push_back(name);
    for (const auto& f : round.faults) {
      Struck s{f};
      UniqueFd fd;
      if (f.kind == FaultKind::kQemuKill && !running.empty()) {
        s.vm = running[f.pick % running.size()];
        fd.reset(static_cast<int>(::syscall(SYS_pidfd_open, pre.at(s.vm).pid, 0)));
      }
      struck.push_back(s);
      pidfds.push_back(std::move(fd));
    }

    auto round_start = std::chrono::steady_clock::now();
    std::vector<std::future<Done>> clients;
    for (const auto& op : round.ops)
      clients.push_back(std::async(std::launch::async, [this, op] {
        Done d{op, vmctl(op_args(op)), {}};
        return d;
      }));
    for (size_t i = 0; i < struck.size(); ++i) {
      std::this_thread::sleep_until(round_start + std::chrono::milliseconds(struck[i].fault.delay_ms));
      switch (struck[i].fault.kind) {
        case FaultKind::kDaemonKill:
          env_->kill_daemon();
          env_->start_daemon();
          ++daemon_kills_;
          break;
        case FaultKind::kBrokerKill:
          env_->kill_broker();
          env_->start_broker();
          ++broker_kills_;
          break;
        case FaultKind::kQemuKill:
          struck[i].hit = pidfds[i] && ::syscall(SYS_pidfd_send_signal, pidfds[i].get(), SIGKILL, nullptr, 0) == 0;
          // The signal is delivered asynchronously: only a dead emulator makes the round's outcome
          // something to check.
          if (struck[i].hit && !wait_pidfd_exited(pidfds[i].get(), 30000))
            violation("round " + std::to_string(index) + ": " + struck[i].vm + "'s emulator survived SIGKILL for 30 s");
          ++(struck[i].hit ? qemu_hits_ : qemu_misses_);
          break;
      }
    }
    std::vector<Done> done;
    for (auto& c : clients) done.push_back(c.get());

    RoundFacts facts = round_facts(done, struck, names_);
    std::string line = "round " + std::to_string(index) + " [t=" + fmt(started) + "s]";
    for (const auto& s : struck)
      line += "\n  fault +" + std::to_string(s.fault.delay_ms) + "ms " + fault_name(s.fault.kind) +
              (s.vm.empty() ? "" : " " + s.vm + (s.hit ? "" : " (missed: not running)"));
    for (auto& d : done) line += "\n  " + classify(d, pre, facts);
    log_line(line);

    std::map<std::string, int> leaving;
    for (const auto& d : done)
      if (d.op.kind == OpKind::kKillTerm || d.op.kind == OpKind::kKillKill)
        for (const auto& [name, o] : d.outcomes)
          if (o.ok && pre.count(name) && pre.at(name).state == "running") leaving[name] = pre.at(name).pid;
    auto settled = settle(leaving);
    if (!settled) return;
    rows_ = *settled;
    std::string changes;
    for (const auto& [name, row] : rows_)
      if (!pre.count(name) || pre.at(name).state != row.state || pre.at(name).pid != row.pid)
        changes += " " + name + "=" + row.state + (row.pid ? "/" + std::to_string(row.pid) : "") +
                   (row.reason.empty() ? "" : "(" + row.reason + ")");
    if (!changes.empty()) log_line("  settled:" + changes);
    check_model(index, pre, done, facts);
    doubt_ = doubt_of(pre, done, facts);
  }

  static std::string fmt(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f", v);
    return buf;
  }

  std::string classify(Done& d, const Rows& pre, const RoundFacts& f) {
    ++ops_total_;
    std::string vm = d.op.vm >= 0 ? names_[static_cast<size_t>(d.op.vm)] : "";
    std::string line = std::string(op_name(d.op.kind)) + (vm.empty() ? "" : " " + vm) + " -> ";
    if (d.result.hung) {
      ++unexpected_;
      unexpected_lines_.push_back(line + "no answer");
      return line + "NO ANSWER within " + std::to_string(kOpDeadline.count()) + " s  [UNEXPECTED]";
    }
    if (d.op.kind == OpKind::kStatus || d.op.kind == OpKind::kList) {
      if (d.result.exit_code == 0) return line + "ok";
      std::string err = d.result.err.empty() ? d.result.out : d.result.err;
      while (!err.empty() && err.back() == '\n') err.pop_back();
      std::string why = expected_failure(d.op, vm, err, pre, f);
      if (!why.empty()) {
        ++expected_[why];
        return line + "failed: " + err + "  [expected: " + why + "]";
      }
      ++unexpected_;
      unexpected_lines_.push_back(line + err);
      return line + "failed (" + std::to_string(d.result.exit_code) + "): " + err + "  [UNEXPECTED]";
    }
    std::vector<std::string> asked;
    if (d.op.kind == OpKind::kStopAll)
      for (const auto& [name, row] : pre) asked.push_back(name);
    else asked.push_back(vm);
    d.outcomes = batch_outcomes(d.result, asked);
    bool all_ok = true;
    std::string details;
    for (const auto& [name, o] : d.outcomes) {
      if (o.ok) continue;
      all_ok = false;
      std::string why = expected_failure(d.op, name, o.error, pre, f);
      details += "\n    " + name + " failed: " + o.error;
      if (why.empty()) {
        ++unexpected_;
        unexpected_lines_.push_back(line + name + ": " + o.error);
        details += "  [UNEXPECTED]";
      } else {
        ++expected_[why];
        details += "  [expected: " + why + "]";
      }
    }
    // `stop --all` addresses the VMs that are active when vmctl lists them: possibly none.
    bool none_active = d.op.kind == OpKind::kStopAll && d.result.exit_code == 0 && Json::parse(d.result.out, nullptr, false).is_array();
    if (d.outcomes.empty() && !none_active) {
      ++unexpected_;
      unexpected_lines_.push_back(line + "no per-VM answer: " + d.result.out + d.result.err);
      return line + "no per-VM answer (exit " + std::to_string(d.result.exit_code) + "): " + d.result.out +
             d.result.err + "  [UNEXPECTED]";
    }
    if (all_ok != (d.result.exit_code == 0)) {
      ++unexpected_;
      unexpected_lines_.push_back(line + "exit status " + std::to_string(d.result.exit_code) + " disagrees with answers");
      details += "\n    exit status " + std::to_string(d.result.exit_code) + " disagrees  [UNEXPECTED]";
    }
    return line + (all_ok ? "ok" : "failed") + details;
  }

  /// Each VM's settled state against what the round allowed (model.h).
  void check_model(int index, const Rows& pre, const std::vector<Done>& done, const RoundFacts& f) {
    for (const auto& [name, row] : rows_) {
      if (!pre.count(name)) continue;
      const Row& before = pre.at(name);
      Expectation e = expect_after(name, before, done, f, doubt_.count(name) > 0);
      const auto& allowed = e.states;
      bool same_pid = e.same_pid, new_pid = e.new_pid;
      std::string where = "round " + std::to_string(index) + ": VM " + name + " was " + before.state +
                          (before.pid ? " (pid " + std::to_string(before.pid) + ")" : "");
      if (!allowed.count(row.state)) {
        std::string list;
        for (const auto& s : allowed) list += (list.empty() ? "" : "|") + s;
        if (allowed == std::set<std::string>{"running"} || same_pid) ++lost_;
        violation(where + ", is " + row.state + (row.pid ? " (pid " + std::to_string(row.pid) + ")" : "") +
                  (row.reason.empty() ? "" : ": " + row.reason) + "; expected " + list +
                  (before.pid ? "; pid " + std::to_string(before.pid) + " is " + (test::process_alive(before.pid) ? "alive" : "gone") : ""));
      } else if (same_pid && row.pid != before.pid) {
        ++lost_;
        violation(where + ", now runs as pid " + std::to_string(row.pid) + " though nobody restarted it");
      } else if (new_pid && row.pid == before.pid) {
        violation(where + ", restart answered ok but the emulator is the same pid " + std::to_string(row.pid));
      }
    }
  }

  /// Every invariant of the issue (invariants.h), read from the kernel, against `vmctl list`;
  /// then whether the broker and the daemon serve.
  void check_kernel(const std::string& when, bool probe_broker) {
    ++checks_;
    size_t before = violations_.size();
    auto rows = list();
    if (!rows) {
      violation(when + ": the daemon does not answer `list`");
      return;
    }
    HostView view = read_host_view(*rows, env_->root());
    HostSetup setup{.root = env_->root(),
                    .config_path = env_->config_path(),
                    .helper_exe = test::build_path("VMLAUNCH_HELPER"),
                    .uid_first = uid_first_,
                    .broker = env_->broker_pid(),
                    .vnc = p_.vnc,
                    .uid_of = uid_of_};
    for (const auto& v : check_invariants(view, setup, test::process_alive)) violation(when + ": " + v);
    if (!test::process_alive(env_->broker_pid())) violation(when + ": the broker is not running");
    if (!test::process_alive(env_->daemon_pid())) violation(when + ": the daemon is not running");
    // A probe VM starts (through the broker) and stops: both serve.
    if (probe_broker) {
      auto started = vmctl({"--json", "start", "probe"});
      if (started.exit_code != 0) violation(when + ": probe start failed: " + started.out + started.err);
      auto stopped = vmctl({"--json", "stop", "--force", "probe"});
      if (stopped.exit_code != 0) violation(when + ": probe stop failed: " + stopped.out + stopped.err);
    }
    if (violations_.size() > before) dump_state(when, view);
  }

  /// Finally: `burst` more VMs started by one vmctl call, checked, stopped by `stop --all`.
  void burst() {
    std::vector<std::string> args = {"--json", "start", "--parallel", std::to_string(p_.burst)};
    for (int i = 0; i < p_.burst; ++i) {
      std::string name = "burst" + std::to_string(i);
      define(name, 1000 + i);
      args.push_back(name);
    }
    double t = elapsed();
    auto r = vmctl(args);
    log_line("burst: start of " + std::to_string(p_.burst) + " VMs in one call -> exit " +
             std::to_string(r.exit_code) + " in " + fmt(elapsed() - t) + " s");
    for (const auto& [name, o] : batch_outcomes(r, {}))
      if (!o.ok) {
        ++unexpected_;
        unexpected_lines_.push_back("burst start " + name + ": " + o.error);
      }
    if (auto rows = settle()) rows_ = *rows;
    check_kernel("after the burst start", false);
    auto stopped = vmctl({"--json", "stop", "--all", "--force"});
    if (stopped.exit_code != 0) {
      ++unexpected_;
      unexpected_lines_.push_back("burst stop --all: " + stopped.out + stopped.err);
    }
    if (auto rows = settle()) rows_ = *rows;
    check_kernel("after the burst stop --all", false);
  }

  void dump_state(const std::string& when, const HostView& v) {
    std::string s = "kernel state " + when + ":\n  vmctl list:";
    for (const auto& [name, row] : v.rows)
      s += "\n    " + name + " " + row.state + " pid " + std::to_string(row.pid) + " uid " + std::to_string(row.uid) +
           (row.reason.empty() ? "" : " (" + row.reason + ")");
    s += "\n  links:";
    for (const auto& [name, l] : v.links)
      s += " " + name + "[" + l.kind + (l.up ? ",up" : "") + (l.master ? ",master " + std::to_string(l.master) : "") + "]";
    s += "\n  nft chains:";
    for (const auto& c : v.nft.chains) s += " " + c;
    s += "\n  processes of VM uids / helper:";
    for (const auto& p : v.procs)
      if ((p.uid >= uid_first_ && p.uid < uid_first_ + 1000) || p.exe == test::build_path("VMLAUNCH_HELPER"))
        s += "\n    " + std::to_string(p.pid) + " uid " + std::to_string(p.uid) + " " + p.state + " " + p.cmdline.substr(0, 80);
    s += "\n  runtime dirs:";
    for (const auto& e : std::filesystem::directory_iterator(env_->root() + "/run/vms")) s += " " + e.path().filename().string();
    s += "\n  disk journals:";
    for (const auto& e : std::filesystem::directory_iterator(env_->root() + "/state/disks")) s += " " + e.path().filename().string();
    log_line(s);
  }

  /// Records a violation. One that a later check finds again (the same text after "WHEN: ")
  /// is logged as persisting but counted once.
  void violation(const std::string& what) {
    auto colon = what.find(": ");
    std::string key = colon == std::string::npos || what.rfind("round ", 0) == 0 ? what : what.substr(colon + 2);
    if (!seen_.insert(key).second) {
      ++persisting_;
      log_ += "still: " + what + "\n";
      return;
    }
    violations_.push_back(what);
    log_line("VIOLATION " + what);
  }

  void log_line(const std::string& line) {
    log_ += line + "\n";
    if (line.rfind("VIOLATION", 0) == 0) std::fprintf(stderr, "chaos: %s\n", line.c_str());
  }

  void report() {
    {
      std::ofstream out(log_path_);
      out << log_ << "\n---- daemon and broker log ----\n" << env_->log();
      // The emulators' own logs say why one died (a VNC port taken, a monitor closed...).
      for (const auto& e : std::filesystem::directory_iterator(env_->root() + "/state/logs")) {
        auto text = sys::read_file(e.path().string(), 1 << 20);
        if (text) out << "\n---- " << e.path().filename().string() << " ----\n" << *text;
      }
    }
    std::string expected;
    for (const auto& [why, n] : expected_) expected += "\n  expected failures (" + why + "): " + std::to_string(n);
    std::fprintf(stderr,
                 "chaos: seed %llu: %d operations, %.0f s, %d daemon kills, %d broker kills, %d emulator kills "
                 "(%d missed: not running), %d kernel checks%s\n"
                 "chaos: %d unexpected failures, %zu invariant violations (%d more findings of them in later checks), %d VMs lost\n"
                 "chaos: operation log: %s\n",
                 static_cast<unsigned long long>(p_.seed), ops_total_, elapsed(), daemon_kills_, broker_kills_, qemu_hits_,
                 qemu_misses_, checks_, expected.c_str(), unexpected_, violations_.size(), persisting_, lost_,
                 log_path_.c_str());
    if (unexpected_ == 0 && violations_.empty()) return;
    // The tail of the operation log: what led there.
    size_t from = log_.size() > 12000 ? log_.find('\n', log_.size() - 12000) : 0;
    std::fprintf(stderr, "chaos: ---- last operations ----\n%s\n", log_.substr(from).c_str());
    for (const auto& u : unexpected_lines_) FAIL_CHECK((std::string("unexpected failure: ") + u));
    for (const auto& v : violations_) FAIL_CHECK((std::string("invariant violation: ") + v));
    FAIL(("seed " + std::to_string(p_.seed) + ": " + std::to_string(unexpected_) + " unexpected failures, " +
          std::to_string(violations_.size()) + " invariant violations; reproduce with VMLAUNCH_CHAOS_SEED=" +
          std::to_string(p_.seed)));
  }

  Params p_;
  std::optional<test::SystemEnv> env_{std::in_place};
  std::vector<std::string> names_;
  unsigned uid_first_ = 0;
  std::string log_path_, log_;
  std::chrono::steady_clock::time_point t0_;
  Rows rows_;
  std::map<std::string, int> uid_of_;
  std::vector<std::string> violations_, unexpected_lines_;
  std::set<std::string> seen_;
  std::set<std::string> doubt_;  ///< VMs whose last operation's answer a kill cut off
  int persisting_ = 0;
  std::map<std::string, int> expected_;
  int ops_total_ = 0, unexpected_ = 0, lost_ = 0, checks_ = 0;
  int daemon_kills_ = 0, broker_kills_ = 0, qemu_hits_ = 0, qemu_misses_ = 0;
};

}  // namespace
}  // namespace vl::chaos

TEST_SUITE("chaos") {
  TEST_CASE("a seed draws one schedule: the operations asked for, every fault, in delay order") {
    vl::chaos::Params p;
    p.seed = 42;
    auto a = vl::chaos::make_schedule(p), b = vl::chaos::make_schedule(p);
    int ops = 0, daemon = 0, broker = 0, qemu = 0;
    REQUIRE(a.size() == b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      REQUIRE(a[i].ops.size() == b[i].ops.size());
      CHECK(a[i].ops.size() >= 1);
      CHECK(static_cast<int>(a[i].ops.size()) <= p.clients);
      for (size_t j = 0; j < a[i].ops.size(); ++j) {
        CHECK(a[i].ops[j].kind == b[i].ops[j].kind);
        CHECK(a[i].ops[j].vm == b[i].ops[j].vm);
        CHECK(a[i].ops[j].vm < p.vms);
        CHECK((a[i].ops[j].vm < 0) == vl::chaos::is_global(a[i].ops[j].kind));
      }
      REQUIRE(a[i].faults.size() == b[i].faults.size());
      for (size_t j = 0; j < a[i].faults.size(); ++j) {
        CHECK(a[i].faults[j].delay_ms == b[i].faults[j].delay_ms);
        if (j > 0) CHECK(a[i].faults[j - 1].delay_ms <= a[i].faults[j].delay_ms);
        daemon += a[i].faults[j].kind == vl::chaos::FaultKind::kDaemonKill;
        broker += a[i].faults[j].kind == vl::chaos::FaultKind::kBrokerKill;
        qemu += a[i].faults[j].kind == vl::chaos::FaultKind::kQemuKill;
      }
      ops += static_cast<int>(a[i].ops.size());
    }
    CHECK(ops == p.ops);
    CHECK(daemon == p.daemon_kills);
    CHECK(broker == p.broker_kills);
    CHECK(qemu == p.qemu_kills);
    p.seed = 43;
    auto c = vl::chaos::make_schedule(p);
    bool differs = c.size() != a.size();
    for (size_t i = 0; !differs && i < a.size(); ++i)
      differs = c[i].ops.size() != a[i].ops.size() || c[i].ops[0].kind != a[i].ops[0].kind || c[i].ops[0].vm != a[i].ops[0].vm;
    CHECK(differs);
  }

  TEST_CASE("concurrent clients, daemon/broker/emulator SIGKILLs: no VM lost, every invariant holds") {
    vl::chaos::Chaos chaos(vl::chaos::params_from_env());
    chaos.run();
  }
}
