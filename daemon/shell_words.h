// Splitting libvirt's native command line into words.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"

namespace vl {

/// Splits text into words by POSIX shell quoting rules: blanks separate words, '...' is
/// literal, "..." honours \$ \` \" \\ and \newline, a backslash outside quotes escapes the next
/// character, backslash-newline continues the line. Anything a shell would expand or interpret
/// (unquoted $ ` | & ; < > ( ) or globs, $ or ` inside double quotes) is refused: the
/// result must be what a shell would pass to execve, or nothing.
Result<std::vector<std::string>> split_shell_words(std::string_view text);

}  // namespace vl
