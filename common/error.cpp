#include "common/error.h"

#include <cstdio>
#include <cstring>

namespace vl {

namespace {
constexpr std::pair<ErrorCode, const char*> kCodeNames[] = {
    {ErrorCode::kSystem, "system"},         {ErrorCode::kInvalid, "invalid"},
    {ErrorCode::kUnsupported, "unsupported"}, {ErrorCode::kNotFound, "not-found"},
    {ErrorCode::kConflict, "conflict"},     {ErrorCode::kDenied, "denied"},
    {ErrorCode::kInternal, "internal"},
};
}  // namespace

const char* error_code_name(ErrorCode code) {
  for (const auto& [c, name] : kCodeNames)
    if (c == code) return name;
  return "internal";
}

ErrorCode error_code_from_name(std::string_view name) {
  for (const auto& [c, n] : kCodeNames)
    if (name == n) return c;
  return ErrorCode::kInternal;
}

// One printable line, whatever was put in: a control character that reached the context
// unquoted (a line break in a library's text) is shown as \xNN.
std::string Error::message() const {
  std::string line;
  line.reserve(context.size());
  for (unsigned char c : context) {
    if (c >= 0x20 && c != 0x7f) {
      line += static_cast<char>(c);
      continue;
    }
    char escaped[8];
    std::snprintf(escaped, sizeof escaped, "\\x%02x", c);
    line += escaped;
  }
  if (sys_errno == 0) return line;
  return line + ": " + std::strerror(sys_errno);
}

Error Error::wrap(std::string_view outer) const& {
  Error e = *this;
  return std::move(e).wrap(outer);
}

Error Error::wrap(std::string_view outer) && {
  context = std::string(outer) + ": " + context;
  return std::move(*this);
}

}  // namespace vl
