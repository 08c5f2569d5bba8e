// VM names and the interface names derived from them.
//
// Grammar: 1 to 13 characters from [a-z0-9-], starting with a letter, not ending with '-'.
// The tap of NIC i (0 <= i <= 9) is "NAME-i": at most 15 characters, the kernel's IFNAMSIZ-1.
// The mapping is injective: the last two characters of a tap name are always "-" and the NIC
// digit, so stripping them gives back the VM name, and two different (VM, NIC) pairs can never
// produce the same tap name. The limit is checked before anything is built from a name.
#pragma once

#include <string>
#include <string_view>

#include "common/error.h"

namespace vl {

/// A validated VM name. Constructible only through parse().
class VmName {
 public:
  static constexpr size_t kMaxLength = 13;
  static constexpr unsigned kMaxNics = 10;

  /// Accepts exactly the grammar above; the error says which rule was broken.
  static Result<VmName> parse(std::string_view text);

  const std::string& str() const { return name_; }
  /// The tap name of NIC `nic` ("web1-0"); nic must be < kMaxNics.
  std::string tap_name(unsigned nic) const;

  friend bool operator==(const VmName&, const VmName&) = default;
  friend auto operator<=>(const VmName&, const VmName&) = default;

 private:
  explicit VmName(std::string name) : name_(std::move(name)) {}
  std::string name_;
};

/// How many characters of a value quote_for_message() shows: names, types, addresses...
inline constexpr size_t kQuoteMax = 64;
/// ... and of a file path, which an operator needs whole to find the file.
inline constexpr size_t kQuotePathMax = 256;

/// Quotes arbitrary bytes for an error message: printable ASCII as is, the rest as \xNN, and
/// at most `max` characters (then "..."), so hostile input cannot forge log lines or flood them.
std::string quote_for_message(std::string_view text, size_t max = kQuoteMax);

}  // namespace vl
