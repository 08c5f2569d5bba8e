// Encrypted guest disks (<encryption format='luks'>), end to end with the real daemon, broker,
// helper and qemu under TCG: the boot-sector guest on a LUKS image boots (its banner reaches
// the serial log only if QEMU decrypted the disk) with the passphrase from the VM's key file;
// a wrong, missing or unsafely kept passphrase refuses the start clearly and leaves nothing
// behind; and the passphrase is in no file of vmlaunch's directories, no process's command
// line or environment, and no log.
#include <doctest/doctest.h>

#include <dirent.h>
#include <poll.h>
#include <pty.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>

#include "helper/runtime_dir.h"
#include "tests/support/live_vmctl.h"

using vl::test::SystemEnv;
using vl::test::log_shows;
using namespace std::chrono_literals;

namespace {

constexpr char kBanner[] = "vmlaunch test guest: hello from COM1";

// A passphrase no file or process could hold by chance.
std::string fresh_passphrase() {
  std::random_device rd;
  return "vl-luks-" + std::to_string(rd()) + "-" + std::to_string(rd());
}

// Writes `text` to `path` as root:root 0600 (the key file's required shape).
void write_root_file(const std::string& path, const std::string& text, mode_t mode = 0600) {
  std::filesystem::remove(path);
  std::ofstream(path) << text;
  REQUIRE(::chown(path.c_str(), 0, 0) == 0);
  REQUIRE(::chmod(path.c_str(), mode) == 0);
}

// The test guest copied into a LUKS image (QEMU's own format, as `qemu-img create -f luks`
// writes it) encrypted with `passphrase`. The passphrase reaches qemu-img through a file, not
// its command line. A short PBKDF time keeps every unlock fast under a loaded CI.
void make_luks_guest(SystemEnv& env, const std::string& name, const std::string& passphrase) {
  std::string pass_file = env.root() + "/keys/mkimg.pass";
  write_root_file(pass_file, passphrase);
  std::string image = env.root() + "/images/" + name + ".img";
  std::filesystem::remove(image);
  // qemu-img times PBKDF2 on its thread's CPU clock, and gives up when a round reads 0 ms
  // ("Unable to get accurate CPU usage"), which a coarse clock does now and then: try again.
  vl::test::CommandResult r;
  for (int attempt = 0; attempt < 5; ++attempt) {
    std::filesystem::remove(image);
    r = vl::test::run_program("/usr/bin/qemu-img",
                              {"qemu-img", "convert", "--object", "secret,id=sec0,format=raw,file=" + pass_file, "-f", "raw",
                               "-O", "luks", "-o", "key-secret=sec0,iter-time=10", vl::test::build_path("VMLAUNCH_GUEST_IMG"),
                               image});
    if (r.out.find("Unable to get accurate CPU usage") == std::string::npos) break;
  }
  REQUIRE_MESSAGE(r.exit_code == 0, r.out);
  std::filesystem::remove(pass_file);
  // A LUKS image is no raw boot sector: the banner can only come through QEMU's decryption.
  std::string head(6, '\0');
  std::ifstream(image, std::ios::binary).read(head.data(), 6);
  REQUIRE(head == "LUKS\xba\xbe");
  REQUIRE(::chmod(image.c_str(), 0644) == 0);
}

// Defines VM `name` on a LUKS image of the test guest made with a fresh passphrase, which it
// returns; the key directory exists (root's, 0700) and holds no key file yet.
std::string define_encrypted(SystemEnv& env, const std::string& name, const std::string& mac) {
  std::string passphrase = fresh_passphrase();
  std::filesystem::create_directory(env.root() + "/keys");
  REQUIRE(::chmod((env.root() + "/keys").c_str(), 0700) == 0);
  make_luks_guest(env, name, passphrase);
  env.define({.name = name, .mac = mac, .disk = env.root() + "/images/" + name + ".img", .luks = true});
  return passphrase;
}

std::string key_file(SystemEnv& env, const std::string& name) { return env.root() + "/keys/" + name + ".key"; }

// Every file below `dir` (recursively, not following links) whose content holds `needle`.
std::vector<std::string> files_holding(const std::string& dir, const std::string& needle, const std::string& skip) {
  std::vector<std::string> found;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir, std::filesystem::directory_options::skip_permission_denied)) {
    std::string p = e.path().string();
    if (p.rfind(skip, 0) == 0 || !e.is_regular_file() || e.is_symlink()) continue;
    auto text = vl::sys::read_file(p, 64 << 20);
    if (text && text->find(needle) != std::string::npos) found.push_back(p);
  }
  return found;
}

// Every /proc/PID/{cmdline,environ} that holds `needle`.
std::vector<std::string> processes_holding(const std::string& needle) {
  std::vector<std::string> found;
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    std::string pid = e.path().filename().string();
    if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
    for (const char* what : {"cmdline", "environ"}) {
      auto text = vl::sys::read_file("/proc/" + pid + "/" + what, 1 << 20);
      if (text && text->find(needle) != std::string::npos) found.push_back("/proc/" + pid + "/" + what);
    }
  }
  return found;
}

std::string joined(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += s + "\n";
  return out;
}

// `vmctl start NAME --ask-passphrase` on a terminal (a pty on its stdin, as an operator's
// shell gives it): waits for the prompt, checks that echo is off, types `passphrase`, and
// returns vmctl's exit status and everything it printed.
std::pair<int, std::string> start_asking(SystemEnv& env, const std::string& name, const std::string& passphrase) {
  int master = -1, slave = -1;
  REQUIRE(::openpty(&master, &slave, nullptr, nullptr, nullptr) == 0);
  vl::UniqueFd term(master), tty(slave);
  ::fcntl(term.get(), F_SETFD, FD_CLOEXEC);
  ::fcntl(tty.get(), F_SETFD, FD_CLOEXEC);
  auto pid = vl::spawn({vl::test::build_path("VMLAUNCH_VMCTL"),
                        {"vmctl", "--config", env.config_path(), "start", name, "--ask-passphrase"},
                        {"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, {{tty.get(), 0}, {tty.get(), 1}, {tty.get(), 2}}});
  REQUIRE(pid.ok());
  std::string seen;
  auto read_some = [&] {
    pollfd p{term.get(), POLLIN, 0};
    if (::poll(&p, 1, 200) > 0) {
      char buf[4096];
      ssize_t n = ::read(term.get(), buf, sizeof buf);
      if (n > 0) seen.append(buf, static_cast<size_t>(n));
    }
  };
  auto deadline = std::chrono::steady_clock::now() + 60s;
  termios during{};
  while (std::chrono::steady_clock::now() < deadline) {
    read_some();
    REQUIRE(::tcgetattr(tty.get(), &during) == 0);
    if (seen.find("Passphrase for VM '" + name + "': ") != std::string::npos && !(during.c_lflag & ECHO)) break;
  }
  REQUIRE_MESSAGE(seen.find("Passphrase for VM '" + name + "': ") != std::string::npos, seen);
  CHECK((during.c_lflag & ECHO) == 0);  // nobody looking over the shoulder sees it
  REQUIRE(vl::sys::write_all(term.get(), passphrase + "\n").ok());
  int status = -1;
  while (std::chrono::steady_clock::now() < deadline + 60s) {
    read_some();
    if (::waitpid(*pid, &status, WNOHANG) == *pid) break;
  }
  read_some();
  termios after{};
  REQUIRE(::tcgetattr(tty.get(), &after) == 0);
  CHECK((after.c_lflag & ECHO) != 0);  // the terminal as it was
  CHECK_MESSAGE(seen.find(passphrase) == std::string::npos, seen);  // never echoed
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, seen};
}

// Nothing of a failed start is left: no runtime directory, no emulator, disks handed back.
void check_nothing_left(SystemEnv& env, const std::string& name, const std::map<std::string, std::string>& before) {
  // The daemon's and broker's log and the launch log grow; they are checked on their own.
  auto without_logs = [](std::map<std::string, std::string> s) {
    std::erase_if(s, [](const auto& e) { return e.first.ends_with("/system.log") || e.first.find("/state/logs") != std::string::npos; });
    return s;
  };
  std::string diff = vl::test::snapshot_diff(without_logs(before), without_logs(env.snapshot()));
  CHECK_MESSAGE(diff.empty(), diff);
  CHECK_FALSE(std::filesystem::exists(env.root() + "/run/vms/" + name));
}

}  // namespace

TEST_SUITE("root/disk_encryption") {
  TEST_CASE("a LUKS disk opens with the key file's passphrase, which appears in no file, argv, environment or log") {
    SystemEnv env;
    std::string passphrase = define_encrypted(env, "enc1", "52:54:00:00:0e:01");
    write_root_file(key_file(env, "enc1"), passphrase + "\n");  // as `echo PASSPHRASE > FILE` writes it

    auto started = env.vmctl({"start", "enc1"});
    REQUIRE_MESSAGE(started.exit_code == 0, started.out << env.log());
    std::string log;
    CHECK_MESSAGE(log_shows(env, "enc1", kBanner, 60s, log), log << env.log());

    // While it runs: the emulator holds the key; nothing else shows it.
    std::string keys = env.root() + "/keys";
    CHECK_MESSAGE(files_holding(env.root(), passphrase, keys).empty(), joined(files_holding(env.root(), passphrase, keys)));
    CHECK_MESSAGE(processes_holding(passphrase).empty(), joined(processes_holding(passphrase)));
    auto state = vl::helper::read_vm_state(env.config(), vl::VmName::parse("enc1").value());
    REQUIRE(state.ok());
    // Its disk-secret fd is a sealed memfd, not a file anyone could open by path.
    std::string fd17 = std::filesystem::read_symlink("/proc/" + std::to_string(state->pid) + "/fd/17").string();
    CHECK_MESSAGE(fd17.rfind("/memfd:vmlaunch-disk-secret", 0) == 0, fd17);

    auto stopped = env.vmctl({"stop", "enc1"});
    CHECK_MESSAGE(stopped.exit_code == 0, stopped.out << env.log());
    // Nothing stays open after the VM: the emulator, the only holder of the key, is gone.
    CHECK_FALSE(vl::test::process_alive(state->pid));
    CHECK_MESSAGE(files_holding(env.root(), passphrase, keys).empty(), joined(files_holding(env.root(), passphrase, keys)));
    CHECK(env.log().find(passphrase) == std::string::npos);
  }

  TEST_CASE("a wrong passphrase fails the start with qemu's reason, naming the disk, and leaves nothing behind") {
    SystemEnv env;
    std::string passphrase = define_encrypted(env, "enc2", "52:54:00:00:0e:02");
    write_root_file(key_file(env, "enc2"), "not-" + passphrase);
    auto before = env.snapshot();
    auto started = env.vmctl({"start", "enc2"});
    CHECK(started.exit_code != 0);
    CHECK_MESSAGE(started.out.find("wrong passphrase for disk 'hda'") != std::string::npos, started.out << env.log());
    check_nothing_left(env, "enc2", before);
    CHECK(env.log().find(passphrase) == std::string::npos);
  }

  TEST_CASE("without a passphrase, or with a key file others could read or swap, the start is refused before launch") {
    SystemEnv env;
    std::string passphrase = define_encrypted(env, "enc3", "52:54:00:00:0e:03");
    std::string key = key_file(env, "enc3");
    struct Case {
      const char* what;
      std::function<void()> make;
      std::string expected;
    };
    const Case cases[] = {
        {"no key file", [&] { std::filesystem::remove(key); },
         "disk 'hda' of VM 'enc3' is encrypted, and no passphrase was given: put it in '" + key + "'"},
        {"readable by others", [&] { write_root_file(key, passphrase, 0644); }, "mode 0644"},
        {"group-readable", [&] { write_root_file(key, passphrase, 0640); }, "mode 0640"},
        {"not root's", [&] {
           write_root_file(key, passphrase);
           REQUIRE(::chown(key.c_str(), 65534, 0) == 0);
         }, "owned by 65534:0"},
        {"a symlink", [&] {
           write_root_file(key + ".real", passphrase);
           std::filesystem::remove(key);
           std::filesystem::create_symlink(key + ".real", key);
         }, "is a symlink"},
        {"two links", [&] {
           std::filesystem::remove(key);
           write_root_file(key + ".real", passphrase);
           std::filesystem::create_hard_link(key + ".real", key);
         }, "2 link(s)"},
        {"empty", [&] {
           std::filesystem::remove(key + ".real");
           write_root_file(key, "");
         }, "is empty"},
    };
    for (const Case& c : cases) {
      INFO(std::string(c.what));
      c.make();
      auto before = env.snapshot();
      auto started = env.vmctl({"start", "enc3"});
      CHECK(started.exit_code != 0);
      CHECK_MESSAGE(started.out.find(c.expected) != std::string::npos, started.out);
      check_nothing_left(env, "enc3", before);
    }
  }

  TEST_CASE("--ask-passphrase: typed on the terminal without echo, it reaches qemu as a descriptor only, and wins over the key file") {
    SystemEnv env;
    std::string passphrase = define_encrypted(env, "enc4", "52:54:00:00:0e:04");
    // A stale key file with another passphrase: the operator's word counts.
    write_root_file(key_file(env, "enc4"), "stale-" + passphrase);

    auto [status, out] = start_asking(env, "enc4", passphrase);
    REQUIRE_MESSAGE(status == 0, out << env.log());
    std::string log;
    CHECK_MESSAGE(log_shows(env, "enc4", kBanner, 60s, log), log << env.log());
    std::string keys = env.root() + "/keys";
    CHECK_MESSAGE(files_holding(env.root(), passphrase, keys).empty(), joined(files_holding(env.root(), passphrase, keys)));
    CHECK_MESSAGE(processes_holding(passphrase).empty(), joined(processes_holding(passphrase)));
    CHECK(env.log().find(passphrase) == std::string::npos);
    // The daemon let go of it once the start was over: a launch of its own finds none.
    auto stopped = env.vmctl({"stop", "enc4"});
    CHECK_MESSAGE(stopped.exit_code == 0, stopped.out);
    auto again = env.vmctl({"start", "enc4"});
    CHECK(again.exit_code != 0);
    CHECK_MESSAGE(again.out.find("wrong passphrase for disk 'hda'") != std::string::npos, again.out);

    // Typed wrong: the same clear refusal, and nothing left behind.
    auto before = env.snapshot();
    auto [wrong_status, wrong_out] = start_asking(env, "enc4", "not-" + passphrase);
    CHECK(wrong_status != 0);
    CHECK_MESSAGE(wrong_out.find("wrong passphrase for disk 'hda'") != std::string::npos, wrong_out);
    check_nothing_left(env, "enc4", before);
  }

  TEST_CASE("--ask-passphrase is refused for a VM without encrypted disks, and outside start") {
    SystemEnv env;
    env.define({.name = "plain1", .mac = "52:54:00:00:0e:05"});
    auto [status, out] = start_asking(env, "plain1", "whatever");
    CHECK(status != 0);
    CHECK_MESSAGE(out.find("VM 'plain1' has no encrypted disk") != std::string::npos, out);
    auto stop = env.vmctl({"stop", "plain1", "--ask-passphrase"});
    CHECK(stop.exit_code == 2);
    CHECK_MESSAGE(stop.out.find("--ask-passphrase is an option of start") != std::string::npos, stop.out);
  }
}
