// Shell-word splitting (daemon/shell_words.h) of libvirt's native command line. Besides not
// crashing, what it returns must be what a shell passes to execve: quoting each word in '...'
// and splitting again gives the same words.
#include <cstddef>
#include <cstdint>
#include <string>

#include "daemon/shell_words.h"
#include "fuzz/fuzz_support.h"

namespace {

std::string single_quoted(const std::string& word) {
  std::string out = "'";
  for (char c : word) {
    if (c == '\'') out += "'\\''";
    else out += c;
  }
  return out + "'";
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto words = vl::split_shell_words(vl::fuzz::as_text(data, size));
  if (!words) return 0;
  std::string line;
  for (const auto& w : *words) {
    FUZZ_CHECK(w.find('\0') == std::string::npos);
    line += single_quoted(w) + " ";
  }
  auto again = vl::split_shell_words(line);
  FUZZ_CHECK(again.ok());
  FUZZ_CHECK(*again == *words);
  return 0;
}
