// The chaos suite's rules: which failures are expected, which states a round allows.
#include <doctest/doctest.h>

#include "tests/chaos/model.h"

using namespace vl::chaos;

namespace {

const std::vector<std::string> kNames = {"web1", "web2"};

Rows pre(const std::string& web1, const std::string& web2 = "stopped") {
  return {{"web1", {web1, "", web1 == "running" ? 100 : 0, 70001, -1}},
          {"web2", {web2, "", web2 == "running" ? 200 : 0, 70002, -1}}};
}

Done op(OpKind kind, int vm, bool ok = true, const std::string& error = "") {
  Done d{{kind, vm}, {}, {}};
  d.result.exit_code = ok ? 0 : 1;
  if (vm >= 0) d.outcomes[kNames[static_cast<size_t>(vm)]] = {ok, error};
  return d;
}

Struck fault(FaultKind kind, const std::string& vm = "") { return {{kind}, vm, true}; }

std::string why(const Done& d, const Rows& p, const std::vector<Struck>& faults = {}, std::vector<Done> others = {}) {
  others.push_back(d);
  auto f = round_facts(others, faults, kNames);
  const auto& [vm, outcome] = *d.outcomes.begin();
  return expected_failure(d.op, vm, outcome.error, p, f);
}

}  // namespace

TEST_SUITE("chaos/model") {
  TEST_CASE("expected failures are exactly the documented ones") {
    const auto running = pre("running"), stopped = pre("stopped");
    const std::string already = "VM 'web1' is already running", not_running = "VM 'web1' is not running";
    // Conflicts, when the state explains them.
    CHECK(why(op(OpKind::kStart, 0, false, already), running) == "conflict: already running");
    CHECK(why(op(OpKind::kStart, 0, false, already), stopped) == "");
    CHECK(why(op(OpKind::kStart, 0, false, already), stopped, {}, {op(OpKind::kStart, 0)}) == "conflict: already running");
    CHECK(why(op(OpKind::kStart, 0, false, already), stopped, {fault(FaultKind::kQemuKill, "web1")}) ==
          "conflict: already running");
    CHECK(why(op(OpKind::kRestart, 0, false, already), running) == "");
    CHECK(why(op(OpKind::kKillTerm, 0, false, not_running), stopped) == "conflict: not running");
    CHECK(why(op(OpKind::kKillKill, 0, false, not_running), running) == "");
    CHECK(why(op(OpKind::kKillKill, 0, false, not_running), running, {fault(FaultKind::kQemuKill, "web1")}) ==
          "conflict: not running");
    CHECK(why(op(OpKind::kStop, 0, false, not_running), stopped) == "");
    // The daemon's and broker's deaths, only in rounds that had them.
    for (const char* m : {"lost the connection to vmlaunchd: x", "vmctl: vmlaunchd is not running (no daemon at /r)",
                          "Connection terminated", "vmctl: Connection reset by peer",
                          "vmctl: Transport endpoint is not connected"}) {
      INFO(m);
      CHECK(why(op(OpKind::kStop, 0, false, m), running, {fault(FaultKind::kDaemonKill)}) == "daemon killed");
      CHECK(why(op(OpKind::kStop, 0, false, m), running) == "");
      CHECK(why(op(OpKind::kStop, 0, false, m), running, {fault(FaultKind::kBrokerKill)}) == "");
    }
    const std::string broker = "the vmlaunch broker closed the connection before answering 'start'";
    CHECK(why(op(OpKind::kStart, 0, false, broker), stopped, {fault(FaultKind::kBrokerKill)}) == "broker killed");
    CHECK(why(op(OpKind::kStart, 0, false, broker), stopped, {fault(FaultKind::kDaemonKill)}) == "");
    // Anything else never.
    CHECK(why(op(OpKind::kStart, 0, false, "VM 'web1': read from monitor: Connection reset by peer"), stopped) == "");
    CHECK(why(op(OpKind::kStart, 0, false, "libvirt cannot convert this domain"), stopped, {fault(FaultKind::kDaemonKill)}) ==
          "");
  }

  TEST_CASE("what a round allows each VM") {
    auto expect = [](const Rows& p, std::vector<Done> done, std::vector<Struck> faults = {}, bool doubt = false,
                     const std::string& vm = "web1") {
      return expect_after(vm, p.at(vm), done, round_facts(done, faults, kNames), doubt);
    };
    using States = std::set<std::string>;
    SUBCASE("untouched: unchanged, same emulator, through daemon and broker kills") {
      auto e = expect(pre("running"), {op(OpKind::kStart, 1)}, {fault(FaultKind::kDaemonKill), fault(FaultKind::kBrokerKill)});
      CHECK(e.states == States{"running"});
      CHECK(e.same_pid);
    }
    SUBCASE("a successful answer is a commitment") {
      CHECK(expect(pre("stopped"), {op(OpKind::kStart, 0)}, {fault(FaultKind::kDaemonKill)}).states == States{"running"});
      CHECK(expect(pre("running"), {op(OpKind::kStop, 0)}).states == States{"stopped"});
      CHECK(expect(pre("running"), {op(OpKind::kKillTerm, 0)}).states == States{"stopped"});
      CHECK(expect(pre("failed"), {op(OpKind::kStopForce, 0)}).states == States{"stopped", "failed"});
      auto restart = expect(pre("running"), {op(OpKind::kRestart, 0)});
      CHECK(restart.states == States{"running"});
      CHECK(restart.new_pid);
    }
    SUBCASE("an emulator killed from outside leaves its VM failed") {
      CHECK(expect(pre("running"), {}, {fault(FaultKind::kQemuKill, "web1")}).states == States{"failed"});
    }
    SUBCASE("a refused operation changes nothing") {
      auto e = expect(pre("running"), {op(OpKind::kStart, 0, false, "VM 'web1' is already running")});
      CHECK(e.states == States{"running"});
      CHECK(e.same_pid);
    }
    SUBCASE("contention or a cut-off answer allows either outcome") {
      CHECK(expect(pre("stopped"), {op(OpKind::kStart, 0), op(OpKind::kStop, 0)}).states == States{"running", "stopped"});
      CHECK(expect(pre("stopped"), {op(OpKind::kStart, 0, false, "Connection terminated")}, {fault(FaultKind::kDaemonKill)})
                .states == States{"running", "stopped", "failed"});
    }
    SUBCASE("a stop --all cut off by a daemon kill may have reached every active VM") {
      Done all{{OpKind::kStopAll, -1}, {}, {}};
      all.result.exit_code = 1;
      all.outcomes["web2"] = {false, "Connection terminated"};
      auto e = expect(pre("running", "running"), {all}, {fault(FaultKind::kDaemonKill)});
      CHECK(e.states.count("stopped"));
      CHECK_FALSE(e.same_pid);
      CHECK(doubt_of(pre("running", "running"), {all}, round_facts({all}, {fault(FaultKind::kDaemonKill)}, kNames)) ==
            std::set<std::string>{"web1", "web2"});
    }
    SUBCASE("in doubt from the last round: the late effect is allowed, nothing else") {
      auto e = expect(pre("running"), {}, {}, true);
      CHECK(e.states == States{"running", "stopped", "failed"});
      CHECK_FALSE(e.same_pid);
    }
  }
}
