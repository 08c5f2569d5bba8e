#include "common/vm_name.h"

#include <cstdio>

namespace vl {

namespace {
bool is_lower(char c) { return c >= 'a' && c <= 'z'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }
}  // namespace

Result<VmName> VmName::parse(std::string_view text) {
  auto reject = [&](const char* why) {
    return Error::invalid("invalid VM name " + quote_for_message(text) + ": " + why);
  };
  if (text.empty()) return reject("empty");
  if (text.size() > kMaxLength)
    return reject("longer than 13 characters (tap names NAME-N must fit in 15)");
  for (char c : text)
    if (!is_lower(c) && !is_digit(c) && c != '-')
      return reject("only lower-case letters, digits and '-' are allowed");
  if (!is_lower(text.front())) return reject("must start with a lower-case letter");
  if (text.back() == '-') return reject("must not end with '-'");
  return VmName(std::string(text));
}

std::string VmName::tap_name(unsigned nic) const {
  // kMaxNics keeps the suffix one digit; callers validate the NIC count against it.
  return name_ + "-" + static_cast<char>('0' + (nic % kMaxNics));
}

std::string quote_for_message(std::string_view text, size_t max) {
  std::string out = "'";
  for (size_t i = 0; i < text.size() && i < max; ++i) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\' && c != '\'') {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  if (text.size() > max) out += "...";
  return out + "'";
}

}  // namespace vl
