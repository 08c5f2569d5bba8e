// The emulator's output reaches the launch log only through a root-side relay: the emulator
// never holds the log file, so it can neither truncate it nor write lines that pass for the
// helper's.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>

#include "common/emulator_tail.h"
#include "helper/uid_map.h"
#include "tests/support/helper_env.h"

using vl::test::HelperEnv;

namespace {

std::string proc_fd(pid_t pid, int fd) { return "/proc/" + std::to_string(pid) + "/fd/" + std::to_string(fd); }

struct stat stat_of(const std::string& path) {
  struct stat st {};
  REQUIRE_MESSAGE(::stat(path.c_str(), &st) == 0, path);
  return st;
}

bool same_file(const struct stat& a, const struct stat& b) { return a.st_dev == b.st_dev && a.st_ino == b.st_ino; }

// The fd numbers a process has open.
std::set<int> open_fds(pid_t pid) {
  std::set<int> fds;
  for (const auto& e : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd"))
    fds.insert(std::stoi(e.path().filename().string()));
  return fds;
}

// Every process but `except` that has the object `like` refers to open (a pipe, a socket).
std::set<pid_t> holders(const struct stat& like, pid_t except) {
  std::set<pid_t> pids;
  for (const auto& p : std::filesystem::directory_iterator("/proc")) {
    std::string name = p.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    pid_t pid = std::stoi(name);
    std::error_code ec;
    for (const auto& f : std::filesystem::directory_iterator(p.path() / "fd", ec)) {
      struct stat st {};
      if (pid != except && ::stat(f.path().c_str(), &st) == 0 && same_file(st, like)) pids.insert(pid);
    }
  }
  return pids;
}

bool gone_or_zombie(pid_t pid) {
  auto status = vl::test::proc_status(pid);
  return status.empty() || status["State"].rfind("Z", 0) == 0;
}

template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds limit = std::chrono::seconds(10)) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

std::string read_log(const HelperEnv& env) { return vl::sys::read_file(env.root() + "/helper.log", 8 << 20).value(); }

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// Writes into the emulator's own stderr, exactly as the emulator would.
vl::UniqueFd open_emulator_stderr(pid_t qemu) {
  vl::UniqueFd fd(::open(proc_fd(qemu, 2).c_str(), O_WRONLY | O_CLOEXEC));
  REQUIRE(fd.valid());
  return fd;
}

void write_text(int fd, const std::string& text) { REQUIRE(vl::sys::write_all(fd, text).ok()); }

// The relay: the one process besides the emulator that has the emulator's stderr pipe open.
pid_t find_relay(pid_t qemu) {
  auto others = holders(stat_of(proc_fd(qemu, 2)), qemu);
  REQUIRE_MESSAGE(others.size() == 1, "processes holding the emulator's stderr pipe: " << others.size());
  return *others.begin();
}

}  // namespace

TEST_SUITE("root/log_relay") {
  TEST_CASE("the emulator's stdout and stderr are a pipe to a locked-down root relay, never the log file") {
    HelperEnv env;
    // A second serial port stays a pty, whose notice is QEMU's own output (the first is the
    // console socket, which QEMU announces nowhere).
    env.define({.name = "web1", .devices = "    <serial type='pty'/>\n"});
    auto vm = env.launch("web1");
    REQUIRE_MESSAGE(vm.running(), vm.log);
    struct stat log = stat_of(env.root() + "/helper.log");

    // Nothing the emulator holds is the log: what it has as 1 and 2 cannot be truncated.
    struct stat out = stat_of(proc_fd(vm.pid, 1)), err = stat_of(proc_fd(vm.pid, 2));
    CHECK(S_ISFIFO(out.st_mode));
    CHECK(same_file(out, err));
    for (int fd : open_fds(vm.pid)) {
      struct stat st {};
      if (::stat(proc_fd(vm.pid, fd).c_str(), &st) != 0) continue;  // closed since the listing (qemu is starting)
      CHECK_MESSAGE(!same_file(st, log), "emulator fd " << fd);
    }
    {
      vl::UniqueFd stderr_copy = open_emulator_stderr(vm.pid);
      CHECK(::ftruncate(stderr_copy.get(), 0) < 0);
    }

    // The relay: root without capabilities, locked down, not the emulator's child, holding
    // nothing but the pipe (0), the log (1, 2) and the daemon's copy of the emulator's output
    // (3): no tap, monitor socket, lock or report pipe.
    pid_t relay = find_relay(vm.pid);
    auto status = vl::test::proc_status(relay);
    CHECK(status["Uid"] == "0\t0\t0\t0");
    for (const char* cap : {"CapInh", "CapPrm", "CapEff", "CapAmb"}) CHECK(status[cap] == "0000000000000000");
    CHECK(status["NoNewPrivs"] == "1");
    CHECK(status["Seccomp"] == "2");
    CHECK(std::stoi(status["PPid"]) != vm.pid);
    CHECK(::getsid(relay) != ::getsid(vm.pid));
    CHECK(open_fds(relay) == std::set<int>{0, 1, 2, 3});
    CHECK(same_file(stat_of(proc_fd(relay, 0)), err));
    CHECK(same_file(stat_of(proc_fd(relay, 1)), log));
    CHECK(same_file(stat_of(proc_fd(relay, 2)), log));
    struct stat tail = stat_of(env.config().vm_runtime_dir(vl::VmName::parse("web1").value()) + "/emulator.log");
    CHECK(same_file(stat_of(proc_fd(relay, 3)), tail));
    CHECK(tail.st_uid == 0);
    CHECK((tail.st_mode & 07777) == 0640);  // root's, readable by the daemon's group only
    // The VM's uid can neither signal nor trace it.
    uid_t uid = vl::helper::read_uid_map(env.config()).value().at("web1");
    pid_t child = ::fork();
    if (child == 0) {
      if (::setgroups(0, nullptr) != 0 || ::setresgid(uid, uid, uid) != 0 || ::setresuid(uid, uid, uid) != 0) ::_exit(2);
      if (::kill(relay, SIGKILL) == 0 || errno != EPERM) ::_exit(1);
      ::_exit(::ptrace(PTRACE_ATTACH, relay, nullptr, nullptr) < 0 && errno == EPERM ? 0 : 1);
    }
    int child_status = 0;
    REQUIRE(::waitpid(child, &child_status, 0) == child);
    CHECK(WEXITSTATUS(child_status) == 0);

    // What the emulator writes arrives prefixed, line by line, with control characters
    // defused: it cannot pass for the helper's lines or rewrite them on a terminal.
    // QEMU's own output (the second serial port's pty) arrives the same way.
    vl::UniqueFd emulator_stderr = open_emulator_stderr(vm.pid);
    write_text(emulator_stderr.get(), "hello from the emulator\n");
    write_text(emulator_stderr.get(), "vmlaunch-helper: web1: cleaned up\n\x1b[1Aup\rback\n");
    CHECK(eventually([&] {
      std::string text = read_log(env);
      return text.find("qemu: hello from the emulator\n") != std::string::npos &&
             text.find("\nqemu: char device redirected to /dev/pts/") != std::string::npos;
    }));
    write_text(emulator_stderr.get(), "no newline yet");
    emulator_stderr.reset();
    env.kill_vm(vm.pid);
    // Every writer is gone: the relay flushes the partial line and exits.
    CHECK(eventually([&] { return gone_or_zombie(relay); }));
    std::string text = read_log(env);
    CAPTURE(text);
    CHECK(text.find("qemu: vmlaunch-helper: web1: cleaned up\n") != std::string::npos);
    CHECK(text.find("\nvmlaunch-helper: web1: cleaned up") == std::string::npos);
    CHECK(text.find('\x1b') == std::string::npos);
    CHECK(text.find('\r') == std::string::npos);
    CHECK(text.find("qemu: no newline yet\n") != std::string::npos);
    // The daemon's copy ends with the relay's end line, after the emulator's last: the daemon
    // quotes it only once that is there. The log has no such line.
    std::string copy = vl::sys::read_file(env.config().vm_runtime_dir(vl::VmName::parse("web1").value()) + "/emulator.log",
                                          1 << 20).value();
    std::string last = "qemu: no newline yet\n" + std::string(vl::kEmulatorTailEnd);
    CHECK_MESSAGE(copy.size() >= last.size(), copy);
    CHECK_MESSAGE(copy.compare(copy.size() - std::min(copy.size(), last.size()), std::string::npos, last) == 0, copy);
    CHECK(text.find(vl::kEmulatorTailEnd) == std::string::npos);
    for (size_t at = 0, end; at < text.size(); at = end + 1) {
      end = text.find('\n', at);
      REQUIRE(end != std::string::npos);  // only whole lines
      std::string line = text.substr(at, end - at);
      CHECK_MESSAGE((line.rfind("qemu: ", 0) == 0 || line.rfind("vmlaunch-helper: ", 0) == 0), line);
    }
    CHECK(WEXITSTATUS(env.helper({"cleanup", "web1"}).status) == 0);
  }

  TEST_CASE("a flood is rate-limited, then cut at the size cap with one marker, and never blocks the emulator") {
    HelperEnv env;
    env.define({.name = "web1"});
    auto vm = env.launch("web1");
    REQUIRE_MESSAGE(vm.running(), vm.log);
    pid_t relay = find_relay(vm.pid);
    vl::UniqueFd emulator_stderr = open_emulator_stderr(vm.pid);
    const std::string line(99, 'x');
    std::string burst;
    for (int i = 0; i < 2000; ++i) burst += line + "\n";  // 200,000 bytes: over the burst allowance

    // Over the rate: lines are dropped, and the next line that gets through says how many.
    write_text(emulator_stderr.get(), burst);
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    write_text(emulator_stderr.get(), "after the pause\n");
    CHECK(eventually([&] { return read_log(env).find("qemu: after the pause\n") != std::string::npos; }));
    std::string text = read_log(env);
    size_t passed = count(text, "qemu: " + line + "\n");
    CHECK(passed < 1000);
    // A loaded machine may read the burst in pieces, letting a line through between two runs
    // of drops: each run gets its own marker, and together they account for every line.
    size_t dropped = 0, markers = 0;
    const std::string marker = "vmlaunch-helper: web1: dropped ";
    for (size_t at = text.find(marker); at != std::string::npos; at = text.find(marker, at + 1)) {
      dropped += std::stoul(text.substr(at + marker.size()));
      ++markers;
    }
    CHECK(markers >= 1);
    CHECK(passed + dropped == 2000);

    // Past the size cap (1 MiB per launch) the rest is read and discarded: the writes
    // complete at once, one marker says so, and nothing after it reaches the log.
    auto started = std::chrono::steady_clock::now();
    for (int i = 0; i < 10; ++i) write_text(emulator_stderr.get(), burst);
    CHECK(std::chrono::steady_clock::now() - started < std::chrono::seconds(10));
    write_text(emulator_stderr.get(), "after the cap\n");
    CHECK(eventually([&] { return read_log(env).find("emulator output reached") != std::string::npos; }));
    emulator_stderr.reset();
    env.kill_vm(vm.pid);
    CHECK(eventually([&] { return gone_or_zombie(relay); }));
    text = read_log(env);
    CHECK(count(text, "emulator output reached") == 1);
    CHECK(text.find("qemu: after the cap") == std::string::npos);
    CHECK(text.size() < 256 * 1024);
    CHECK(WEXITSTATUS(env.helper({"cleanup", "web1"}).status) == 0);
  }

  TEST_CASE("the serial log: a pipe to a locked-down root relay that caps the file at two parts of 1 MiB") {
    HelperEnv env;
    env.define({.name = "web1"});
    auto vm = env.launch("web1");  // paused before the guest's first instruction: no output yet
    REQUIRE_MESSAGE(vm.running(), vm.log);
    std::string path = env.root() + "/log/web1.serial.log";
    struct stat current = stat_of(path), previous = stat_of(path + ".1");
    CHECK(current.st_uid == 0);
    CHECK((current.st_mode & 07777) == 0640);
    CHECK(current.st_size == 0);

    // The emulator holds a pipe as the plan's serial-log fd (16), never the files.
    struct stat pipe = stat_of(proc_fd(vm.pid, 16));
    CHECK(S_ISFIFO(pipe.st_mode));
    for (int fd : open_fds(vm.pid)) {
      struct stat st {};
      if (::stat(proc_fd(vm.pid, fd).c_str(), &st) != 0) continue;
      CHECK_MESSAGE((!same_file(st, current) && !same_file(st, previous)), "emulator fd " << fd);
    }
    // Its reader: root without capabilities, locked down, not the emulator's child, holding
    // the pipe (0), the current part (1, 2) and the previous part (3) only.
    auto readers = holders(pipe, vm.pid);
    REQUIRE(readers.size() == 1);
    pid_t relay = *readers.begin();
    auto status = vl::test::proc_status(relay);
    CHECK(status["Name"] == "vmlaunch-serial");
    CHECK(status["Uid"] == "0\t0\t0\t0");
    for (const char* cap : {"CapInh", "CapPrm", "CapEff", "CapAmb"}) CHECK(status[cap] == "0000000000000000");
    CHECK(status["NoNewPrivs"] == "1");
    CHECK(status["Seccomp"] == "2");
    CHECK(std::stoi(status["PPid"]) != vm.pid);
    CHECK(open_fds(relay) == std::set<int>{0, 1, 2, 3});
    CHECK(same_file(stat_of(proc_fd(relay, 1)), current));
    CHECK(same_file(stat_of(proc_fd(relay, 3)), previous));

    // 2.5 MiB, as a guest would print it: the file never passes 1 MiB, the previous part holds
    // the MiB before the current one, and the writes never block.
    std::string mib[3];
    for (int i = 0; i < 3; ++i) mib[i] = std::string(1 << 20, static_cast<char>('a' + i));
    vl::UniqueFd writer(::open(proc_fd(vm.pid, 16).c_str(), O_WRONLY | O_CLOEXEC));
    REQUIRE(writer.valid());
    write_text(writer.get(), mib[0] + mib[1] + mib[2].substr(0, 512 * 1024));
    CHECK(eventually([&] {
      return vl::sys::read_file(path + ".1", 2 << 20).value() == mib[1] &&
             vl::sys::read_file(path, 2 << 20).value() == mib[2].substr(0, 512 * 1024);
    }, std::chrono::seconds(60)));
    CHECK(stat_of(path).st_size <= 1 << 20);
    writer.reset();
    env.kill_vm(vm.pid);
    CHECK(eventually([&] { return gone_or_zombie(relay); }));
    CHECK(WEXITSTATUS(env.helper({"cleanup", "web1"}).status) == 0);
    // The log is a record: cleanup keeps it.
    CHECK(std::filesystem::exists(path));
  }

  // [paths] log set by mistake to a directory others use (/var/log): making it the daemon
  // group's 0750 would close it to every other reader on the host.
  TEST_CASE("a log directory that holds other files and is not vmlaunch's is refused and left as it was; an empty one or one of serial logs only is adopted") {
    HelperEnv env;
    env.define({.name = "web1"});
    const std::string log = env.root() + "/log";
    REQUIRE(std::filesystem::create_directory(log));
    REQUIRE(::chmod(log.c_str(), 0755) == 0);
    std::ofstream(log + "/syslog") << "another program's log\n";
    auto refused = env.launch("web1");
    CHECK_FALSE(refused.running());
    CHECK_MESSAGE(refused.log.find("log directory '" + log + "' holds other files and is not root:") != std::string::npos,
                  refused.log);
    struct stat st = stat_of(log);
    CHECK((st.st_mode & 07777) == 0755);
    CHECK(st.st_gid == 0);
    CHECK(vl::sys::read_file(log + "/syslog", 4096).value() == "another program's log\n");
    CHECK_FALSE(std::filesystem::exists(log + "/web1.serial.log"));

    // Holding only serial logs, as an earlier installation with another daemon group left it:
    // it becomes the log directory.
    std::filesystem::remove(log + "/syslog");
    std::ofstream(log + "/old.serial.log") << "an earlier run\n";
    std::ofstream(log + "/old.serial.log.1") << "an earlier run\n";
    REQUIRE(::chown(log.c_str(), 0, 65534) == 0);
    REQUIRE(::chmod(log.c_str(), 0750) == 0);
    auto vm = env.launch("web1");
    REQUIRE_MESSAGE(vm.running(), vm.log);
    st = stat_of(log);
    CHECK((st.st_mode & 07777) == 0750);
    CHECK(st.st_gid != 65534);
    CHECK(std::filesystem::exists(log + "/web1.serial.log"));
    env.kill_vm(vm.pid);
    CHECK(WEXITSTATUS(env.helper({"cleanup", "web1"}).status) == 0);

    // Empty, as `install -d` leaves it: it becomes the log directory.
    std::filesystem::remove_all(log);
    REQUIRE(std::filesystem::create_directory(log));
    REQUIRE(::chmod(log.c_str(), 0755) == 0);
    vm = env.launch("web1");
    REQUIRE_MESSAGE(vm.running(), vm.log);
    st = stat_of(log);
    CHECK((st.st_mode & 07777) == 0750);
    CHECK(std::filesystem::exists(log + "/web1.serial.log"));
    env.kill_vm(vm.pid);
    CHECK(WEXITSTATUS(env.helper({"cleanup", "web1"}).status) == 0);
  }

#ifdef VMLAUNCH_FAULT_INJECTION
  TEST_CASE("a launch that fails before its emulator runs leaves the previous run's serial log current") {
    HelperEnv env;
    env.define({.name = "web1"});
    auto vm = env.launch("web1");
    REQUIRE_MESSAGE(vm.running(), vm.log);
    std::string path = env.root() + "/log/web1.serial.log";
    {
      vl::UniqueFd writer(::open(proc_fd(vm.pid, 16).c_str(), O_WRONLY | O_CLOEXEC));
      REQUIRE(writer.valid());
      write_text(writer.get(), "the first run\n");
    }
    CHECK(eventually([&] { return vl::sys::read_file(path, 4096).value() == "the first run\n"; }));
    env.kill_vm(vm.pid);
    CHECK(WEXITSTATUS(env.helper({"cleanup", "web1"}).status) == 0);
    for (const char* step : {"serial-log", "state-file", "exec"}) {
      INFO(step);
      auto failed = env.launch("web1", {std::string("VMLAUNCH_FAIL_AT=") + step});
      CHECK_FALSE(failed.running());
      CHECK(vl::sys::read_file(path, 4096).value() == "the first run\n");
    }
  }
#endif

  TEST_CASE("with a socket or pipe as stderr (journald) the emulator's output passes through, no relay") {
    HelperEnv env;
    env.define({.name = "web1"});
    std::string plan = env.write_plan("web1", env.plan_json("web1"));
    int pair[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) == 0);
    vl::UniqueFd ours(pair[0]), theirs(pair[1]);
    struct stat stream = stat_of(proc_fd(::getpid(), theirs.get()));
    auto pid = vl::spawn({vl::test::build_path("VMLAUNCH_HELPER"),
                          {"vmlaunch-helper", "--config", env.config_path(), "launch", "web1", "--plan", plan},
                          {}, {{theirs.get(), 1}, {theirs.get(), 2}}});
    REQUIRE(pid.ok());
    theirs.reset();
    bool became_qemu = eventually([&] {
      std::error_code ec;
      return std::filesystem::read_symlink("/proc/" + std::to_string(*pid) + "/exe", ec) == "/usr/bin/qemu-system-x86_64";
    }, std::chrono::seconds(60));
    REQUIRE(became_qemu);
    CHECK(same_file(stat_of(proc_fd(*pid, 1)), stream));
    CHECK(same_file(stat_of(proc_fd(*pid, 2)), stream));
    CHECK(holders(stream, *pid).empty());
    ::kill(*pid, SIGKILL);
    (void)vl::wait_for(*pid);
    // The helper's own lines came through the same stream.
    ::shutdown(ours.get(), SHUT_WR);
    std::string said = vl::sys::read_all(ours.get(), 1 << 20).value();
    CHECK_MESSAGE(said.find("vmlaunch-helper: web1: executing '/usr/bin/qemu-system-x86_64'") != std::string::npos, said);
    CHECK(WEXITSTATUS(env.helper({"cleanup", "web1"}).status) == 0);
  }

  TEST_CASE("the helper's own lines after the privilege drop still reach the log as its own") {
    HelperEnv env;
    // execve fails after the drop, when fds 1 and 2 are already the relay's pipe.
    vl::test::define_with_unreachable_emulator(env, "web1");
    auto r = env.launch("web1");
    CHECK_FALSE(r.running());
    CHECK(WEXITSTATUS(r.status) == 1);
    CHECK_MESSAGE(r.log.find("\nvmlaunch-helper: web1: after the privilege drop; run 'vmlaunch-helper cleanup web1': execute '" +
                                 env.root() + "/hidden/qemu'") != std::string::npos, r.log);
    CHECK_MESSAGE(r.log.find("\nqemu: ") == std::string::npos, r.log);
    CHECK(WEXITSTATUS(env.helper({"cleanup", "web1"}).status) == 0);
  }
}
