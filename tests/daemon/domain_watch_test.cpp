// Following the domains directory with inotify, in a temporary directory.
#include "daemon/domain_watch.h"

#include <doctest/doctest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <utility>
#include <vector>

#include "tests/support/temp_dir.h"

namespace asio = boost::asio;
using namespace std::chrono_literals;
using Seen = std::vector<std::pair<std::string, vl::DomainWatch::Change>>;

namespace {

// Runs the loop until `seen` holds `count` events, at most 5 s.
bool wait_for(asio::io_context& io, const Seen& seen, size_t count) {
  auto until = std::chrono::steady_clock::now() + 5s;
  while (seen.size() < count && std::chrono::steady_clock::now() < until) {
    io.restart();
    io.run_for(10ms);
  }
  return seen.size() >= count;
}

}  // namespace

TEST_SUITE("daemon/domain_watch") {
  TEST_CASE("a domain XML written, replaced by rename, re-moded and removed is reported by VM name") {
    vl::test::TempDir dir;
    asio::io_context io;
    Seen seen;
    vl::DomainWatch watch(io, dir.path(), [&](const std::string& name, vl::DomainWatch::Change c) { seen.emplace_back(name, c); });
    REQUIRE(watch.start().ok());
    using C = vl::DomainWatch::Change;

    std::ofstream(dir.path() + "/web1.xml") << "<domain/>";
    REQUIRE(wait_for(io, seen, 1));
    CHECK(seen.back() == std::pair<std::string, C>{"web1", C::kWritten});

    // Not VM files: ignored.
    std::ofstream(dir.path() + "/notes.txt") << "x";
    std::ofstream(dir.path() + "/Bad_Name.xml") << "x";
    // Replaced the way editors and install(1) do it: a new file renamed over the old one.
    std::ofstream(dir.path() + "/.web2.tmp") << "<domain/>";
    std::filesystem::rename(dir.path() + "/.web2.tmp", dir.path() + "/web2.xml");
    REQUIRE(wait_for(io, seen, 2));
    CHECK(seen.back() == std::pair<std::string, C>{"web2", C::kWritten});

    std::filesystem::permissions(dir.path() + "/web2.xml", std::filesystem::perms::owner_read);
    REQUIRE(wait_for(io, seen, 3));
    CHECK(seen.back() == std::pair<std::string, C>{"web2", C::kWritten});

    std::filesystem::remove(dir.path() + "/web1.xml");
    REQUIRE(wait_for(io, seen, 4));
    CHECK(seen.back() == std::pair<std::string, C>{"web1", C::kRemoved});
    std::filesystem::rename(dir.path() + "/web2.xml", dir.path() + "/web2.xml.disabled");
    REQUIRE(wait_for(io, seen, 5));
    CHECK(seen.back() == std::pair<std::string, C>{"web2", C::kRemoved});
    io.restart();
    io.run_for(100ms);
    CHECK(seen.size() == 5);  // nothing for the other files
  }

  TEST_CASE("a directory that does not exist is an error naming it") {
    asio::io_context io;
    vl::DomainWatch watch(io, "/nonexistent/domains", [](const std::string&, vl::DomainWatch::Change) {});
    auto r = watch.start();
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().message().find("/nonexistent/domains") != std::string::npos);
  }
}
