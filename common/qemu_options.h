// QEMU command lines as structure: options with their values, keyval lists, the ',,' escape.
//
// Both sides read a command line with this one parser: the daemon when it rewrites libvirt's
// output, the helper when it decides whether to execute it. Two parsers that disagree on which
// word is an option and which a value would let a value smuggle in an option.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"

namespace vl {

/// One option of a QEMU command line: "-name" with value "guest=x", or a flag such as "-S".
struct QemuOption {
  std::string name;
  std::string value;
  bool has_value = false;
  friend bool operator==(const QemuOption&, const QemuOption&) = default;
};

/// True for the options vmlaunch knows to take no value. Every other option is read as taking
/// exactly one; whether it is allowed at all is the policy's decision (common/argv_policy.h).
bool is_qemu_flag(std::string_view option);

/// Splits argv words (without the program) into options. A word that is not an option where
/// one is expected, or an option missing its value, is an error.
Result<std::vector<QemuOption>> parse_qemu_options(const std::vector<std::string>& words);

/// Splits a QEMU keyval option value ("socket,id=x,path=/a,,b") into its parts, undoing the
/// ',,' escape ("socket", "id=x", "path=/a,b").
std::vector<std::string> split_keyval(std::string_view value);
/// Joins parts into a keyval value, escaping ',' as ',,'.
std::string join_keyval(const std::vector<std::string>& parts);

/// The key of a keyval part ("id" of "id=x"; the whole part if it has no '=').
std::string_view keyval_key(std::string_view part);
/// The value of a keyval part ("x" of "id=x"; empty if it has no '=').
std::string_view keyval_value(std::string_view part);

}  // namespace vl
