// `vmctl console` against a real Linux guest (tests/guest/init.sh, scenario console), through
// the real daemon and helper: attach, see the guest's output, type a line and see its answer, a
// second writer refused naming the holder, a read-only viewer that sees but cannot type, detach
// with Ctrl-] and with the end of input.
#include <doctest/doctest.h>

#include "tests/support/linux_guest.h"
#include "tests/support/live_vmctl.h"

using vl::test::LiveVmctl;
using vl::test::SystemEnv;
using vl::test::log_shows;
using namespace std::chrono_literals;

TEST_SUITE("root/guest_console") {
  TEST_CASE("console: attach, see the guest, type a line and see its answer; one writer; read-only viewers; Ctrl-] detaches") {
    vl::test::LinuxGuestFiles files;
    SystemEnv env;
    vl::test::DomainSpec spec = vl::test::linux_guest_domain(files, "tty1", "52:54:00:00:31:02", "console");
    env.define(spec);
    auto started = env.vmctl({"start", "tty1"});
    REQUIRE_MESSAGE(started.exit_code == 0, started.out << env.log());
    std::string log;
    // About 4 s under TCG; generous for a loaded host.
    REQUIRE_MESSAGE(log_shows(env, "tty1", "VLG READY", 180s, log), log);

    LiveVmctl console(env, {"console", "tty1"});
    REQUIRE_MESSAGE(console.wait_for("escape character is ^]", 60s), console.output());
    console.type("hello vmlaunch\r");
    CHECK_MESSAGE(console.wait_for("VLG ECHO hello vmlaunch", 120s), console.output());

    // A second writer is refused, naming the holder; a read-only viewer sees what follows.
    auto second = env.vmctl({"console", "tty1"});
    CHECK(second.exit_code == 1);
    CHECK_MESSAGE(second.out.find("in use by uid 0 (root)") != std::string::npos, second.out);
    CHECK_MESSAGE(second.out.find("--read-only") != std::string::npos, second.out);
    LiveVmctl viewer(env, {"console", "tty1", "--read-only"});
    REQUIRE_MESSAGE(viewer.wait_for("(read-only)", 60s), viewer.output());
    viewer.type("ignored\r");  // a viewer's input goes nowhere
    console.type("second line\r");
    CHECK_MESSAGE(viewer.wait_for("VLG ECHO second line", 120s), viewer.output());
    CHECK_MESSAGE(console.wait_for("VLG ECHO second line", 60s), console.output());
    CHECK(viewer.output().find("VLG ECHO ignored") == std::string::npos);

    // Ctrl-] detaches; the console is free for the next writer.
    console.type("\x1d");
    CHECK(console.wait_exit(60s) == 0);
    CHECK_MESSAGE(console.output().find("Detached from the console of VM 'tty1'") != std::string::npos, console.output());
    LiveVmctl next(env, {"console", "tty1"});
    REQUIRE_MESSAGE(next.wait_for("escape character is ^]", 60s), next.output());
    next.type("third\r");
    CHECK_MESSAGE(next.wait_for("VLG ECHO third", 120s), next.output());
    next.close_input();  // the end of input detaches too
    CHECK(next.wait_exit(60s) == 0);
    viewer.close_input();
    CHECK(viewer.wait_exit(60s) == 0);
    // Every line typed reached the log too.
    CHECK_MESSAGE(log_shows(env, "tty1", "VLG ECHO third", 30s, log), log);
  }

}
