#include "common/spawn.h"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/wait.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <thread>

#include "common/sys.h"

namespace {

// Runs a shell snippet with the given extra fds and stdout captured; returns its output.
std::string run_sh(const std::string& script, std::vector<vl::FdMapping> fds = {}) {
  int out[2];
  REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
  vl::UniqueFd out_read(out[0]), out_write(out[1]);
  fds.push_back({out_write.get(), 1});
  auto pid = vl::spawn({"/bin/sh", {"sh", "-c", script}, {"PATH=/usr/bin:/bin"}, fds});
  REQUIRE_MESSAGE(pid.ok(), pid.error().message());
  out_write.reset();
  auto text = vl::sys::read_all(out_read.get(), 1 << 16);
  REQUIRE(text.ok());
  auto status = vl::wait_for(*pid);
  REQUIRE(status.ok());
  CHECK(WIFEXITED(*status));
  return *text;
}

}  // namespace

TEST_SUITE("common/spawn") {
  TEST_CASE("the child gets exactly 0-2 and the mapped fds; nothing leaks") {
    // fds without CLOEXEC that a careless spawner would leak into the child.
    vl::UniqueFd leaky1(::open("/dev/null", O_RDONLY)), leaky2(::open("/dev/null", O_RDONLY));
    vl::UniqueFd passed(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    auto pid = vl::spawn({"/bin/sleep", {"sleep", "10"}, {}, {{passed.get(), 7}}});
    REQUIRE(pid.ok());
    // spawn() returns once exec has succeeded, but the child's dynamic loader still opens
    // libraries for a moment afterwards: list until the set settles. A leaked fd never closes,
    // so it is still caught.
    const std::vector<std::string> expected{"0", "1", "2", "7"};
    std::vector<std::string> fds;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    do {
      fds.clear();
      for (const auto& e : std::filesystem::directory_iterator("/proc/" + std::to_string(*pid) + "/fd"))
        fds.push_back(e.path().filename());
      std::sort(fds.begin(), fds.end());
      if (fds == expected) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    } while (std::chrono::steady_clock::now() < deadline);
    ::kill(*pid, SIGKILL);
    REQUIRE(vl::wait_for(*pid).ok());
    std::string listing;
    for (const auto& fd : fds) listing += fd + " ";
    CHECK_MESSAGE(fds == expected, "child fds: " << listing);
  }

  TEST_CASE("fds are moved to their targets even when sources sit on other targets") {
    vl::UniqueFd a(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    vl::UniqueFd b(::open("/dev/zero", O_RDONLY | O_CLOEXEC));
    // Swap: a -> b's number, b -> a's number.
    std::string out = run_sh("readlink /proc/self/fd/" + std::to_string(a.get()) + " /proc/self/fd/" +
                                 std::to_string(b.get()),
                             {{a.get(), b.get()}, {b.get(), a.get()}});
    CHECK(out == "/dev/zero\n/dev/null\n");
  }

  TEST_CASE("exec failure is reported with errno, not as a child exit") {
    auto pid = vl::spawn({"/nonexistent/qemu", {"qemu"}, {}, {}});
    REQUIRE_FALSE(pid.ok());
    CHECK(pid.error().sys_errno == ENOENT);
    CHECK(pid.error().message().find("/nonexistent/qemu") != std::string::npos);
  }

  TEST_CASE("the environment is exactly the one given") {
    CHECK(
          run_sh("env | grep -v '^PWD=' | sort") == "PATH=/usr/bin:/bin\n");
  }

  TEST_CASE("invalid mappings are refused before forking") {
    CHECK_FALSE(vl::spawn({"/bin/true", {"true"}, {}, {{-1, 3}}}).ok());
    vl::UniqueFd a(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    CHECK_FALSE(vl::spawn({"/bin/true", {"true"}, {}, {{a.get(), 3}, {a.get(), 3}}}).ok());
  }
}
