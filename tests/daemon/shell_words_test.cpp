#include "daemon/shell_words.h"

#include <doctest/doctest.h>

using vl::split_shell_words;
using Words = std::vector<std::string>;

TEST_SUITE("daemon/shell_words") {
  TEST_CASE("libvirt's quoting is undone exactly") {
    struct Case {
      const char* text;
      Words words;
    };
    const Case cases[] = {
        {"a b  c", {"a", "b", "c"}},
        {"'/srv/my disk.img'", {"/srv/my disk.img"}},
        {"'it'\\''s'", {"it's"}},
        {"'a,,b' c", {"a,,b", "c"}},
        {"'{\"file\":\"/x y\"}'", {"{\"file\":\"/x y\"}"}},
        {"'$HOME' '`id`'", {"$HOME", "`id`"}},
        {"\"dq \\$x \\\" \\\\ \\n\"", {"dq $x \" \\ \\n"}},
        {"a\\ b", {"a b"}},
        {"a \\\n b", {"a", "b"}},
        {"''", {""}},
        {"x'y'\"z\"", {"xyz"}},
        {"LC_ALL=C /usr/bin/qemu -S", {"LC_ALL=C", "/usr/bin/qemu", "-S"}},
        {"", {}},
    };
    for (const auto& c : cases) {
      CAPTURE(c.text);
      auto r = split_shell_words(c.text);
      REQUIRE_MESSAGE(r.ok(), (r.ok() ? std::string() : r.error().context));
      CHECK(*r == c.words);
    }
  }

  TEST_CASE("anything a shell would interpret is refused") {
    for (const char* text : {"a $HOME", "`id`", "a | b", "a; b", "a && b", "a > f", "(a)",
                             "*.img", "a?", "\"$x\"", "\"`id`\"", "'unterminated", "\"open",
                             "trailing\\", "~/x", "# comment", "{a,b}"}) {
      CAPTURE(text);
      auto r = split_shell_words(text);
      CHECK_FALSE(r.ok());
    }
    CHECK_FALSE(split_shell_words(std::string_view("a\0b", 3)).ok());
  }

  TEST_CASE("a NUL byte is refused inside quotes too") {
    // Found by fuzz/shell_words_fuzzer: quoted text was copied without the NUL check, so a
    // word could hold a byte no execve argument can.
    using namespace std::string_view_literals;
    for (std::string_view text : {"'a\0b'"sv, "\"a\0b\""sv, "x \"\\\0\""sv, "\\\0"sv}) {
      CAPTURE(std::string(text));
      auto r = split_shell_words(text);
      REQUIRE_FALSE(r.ok());
      CHECK(r.error().context.find("NUL byte") != std::string::npos);
    }
  }
}
