// Following the allowed emulators with inotify, in a temporary directory.
#include "daemon/emulator_watch.h"

#include <doctest/doctest.h>

#include <chrono>
#include <filesystem>
#include <fstream>

#include "tests/support/temp_dir.h"

namespace asio = boost::asio;
using namespace std::chrono_literals;

namespace {

// Runs the loop until `count` changes were reported, at most 5 s.
bool wait_for(asio::io_context& io, const int& changes, int count) {
  auto until = std::chrono::steady_clock::now() + 5s;
  while (changes < count && std::chrono::steady_clock::now() < until) {
    io.restart();
    io.run_for(10ms);
  }
  return changes >= count;
}

}  // namespace

TEST_SUITE("daemon/emulator_watch") {
  TEST_CASE("an emulator replaced by rename, written or re-moded is reported; its neighbours are not") {
    vl::test::TempDir dir;
    std::string emulator = dir.path() + "/qemu-system-x86_64";
    std::ofstream(emulator) << "v1";
    std::filesystem::create_directory(dir.path() + "/real");
    std::ofstream(dir.path() + "/real/qemu") << "v1";
    std::filesystem::create_symlink(dir.path() + "/real/qemu", dir.path() + "/kvm");
    asio::io_context io;
    int changes = 0;
    vl::EmulatorWatch watch(io, {emulator, dir.path() + "/kvm"}, [&] { ++changes; });
    REQUIRE(watch.start().ok());

    std::ofstream(dir.path() + "/qemu-img") << "other";  // a neighbour
    io.run_for(100ms);
    CHECK(changes == 0);

    // An upgrade the way dpkg makes it: the new file renamed over the old one.
    std::ofstream(emulator + ".dpkg-new") << "v2";
    std::filesystem::rename(emulator + ".dpkg-new", emulator);
    REQUIRE(wait_for(io, changes, 1));

    std::filesystem::permissions(emulator, std::filesystem::perms::owner_all);
    REQUIRE(wait_for(io, changes, 2));

    // The target of an allowed symlink, in another directory.
    std::ofstream(dir.path() + "/real/qemu") << "v2";
    REQUIRE(wait_for(io, changes, 3));
  }
}
