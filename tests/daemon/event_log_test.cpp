// The daemon's lifecycle log: one line per event, naming the VM; the journal only when stderr
// is the journal's stream.
#include "daemon/event_log.h"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>

#include "common/sys.h"
#include "common/unique_fd.h"
#include "tests/support/temp_dir.h"

namespace {

// Points fd 2 at `path` for the lifetime of the object.
class StderrTo final {
 public:
  explicit StderrTo(const std::string& path)
      : saved_(::fcntl(2, F_DUPFD_CLOEXEC, 10)), file_(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) {
    REQUIRE(saved_);
    REQUIRE(file_);
    REQUIRE(::dup2(file_.get(), 2) == 2);
  }
  ~StderrTo() { ::dup2(saved_.get(), 2); }
  StderrTo(const StderrTo&) = delete;
  StderrTo& operator=(const StderrTo&) = delete;

 private:
  vl::UniqueFd saved_, file_;
};

std::string dev_ino_of_stderr() {
  struct stat st {};
  REQUIRE(::fstat(2, &st) == 0);
  return std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino);
}

}  // namespace

TEST_SUITE("daemon/event_log") {
  TEST_CASE("stderr is the journal only if JOURNAL_STREAM names its device and inode") {
    vl::test::TempDir dir;
    StderrTo redirect(dir.path() + "/err");
    std::string mine = dev_ino_of_stderr();
    CHECK(vl::stderr_is_journal(mine.c_str()));
    CHECK_FALSE(vl::stderr_is_journal(nullptr));
    CHECK_FALSE(vl::stderr_is_journal(""));
    CHECK_FALSE(vl::stderr_is_journal("garbage"));
    CHECK_FALSE(vl::stderr_is_journal((mine + "1").c_str()));  // another inode
  }

  TEST_CASE("an event is one line on stderr naming the VM (stderr not the journal)") {
    vl::test::TempDir dir;
    {
      StderrTo redirect(dir.path() + "/err");
      REQUIRE(std::getenv("JOURNAL_STREAM") == nullptr);
      vl::log_vm_event("web1", vl::LogLevel::kInfo, "started (pid 42)");
      vl::log_vm_event("web2", vl::LogLevel::kError, "crashed: emulator exited unexpectedly");
    }
    CHECK(vl::sys::read_file(dir.path() + "/err", 4096).value() ==
          "vmlaunchd: VM 'web1': started (pid 42)\nvmlaunchd: VM 'web2': crashed: emulator exited unexpectedly\n");
  }

  TEST_CASE("a control call is one line naming the caller, how it came, its role, the call, its VM and the outcome") {
    vl::test::TempDir dir;
    {
      StderrTo redirect(dir.path() + "/err");
      vl::log_control_call("certificate 'CN=alice,O=Example'", "tls from 192.0.2.7:40112, admin", "Start", "web1", true);
      vl::log_control_call("uid 1000 (bob)", "local, read-only", "Kill", "web1", false);
      vl::log_control_call("uid 1000 (bob)", "local, read-only", "List", "", true);
      // The caller chose the name: it cannot forge a second line.
      vl::log_control_call("uid 1000 (bob)", "local, admin", "Stop", "x\nvmlaunchd: forged", false);
    }
    CHECK(vl::sys::read_file(dir.path() + "/err", 4096).value() ==
          "vmlaunchd: certificate 'CN=alice,O=Example' [tls from 192.0.2.7:40112, admin]: Start 'web1': allowed\n"
          "vmlaunchd: uid 1000 (bob) [local, read-only]: Kill 'web1': refused\n"
          "vmlaunchd: uid 1000 (bob) [local, read-only]: List: allowed\n"
          "vmlaunchd: uid 1000 (bob) [local, admin]: Stop 'x\\x0avmlaunchd: forged': refused\n");
  }
}
