#include "daemon/bus_framer.h"

#include <algorithm>

namespace vl {

namespace {

uint32_t read_u32(const uint8_t* p, bool little) {
  return little ? uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24
                : uint32_t{p[3]} | uint32_t{p[2]} << 8 | uint32_t{p[1]} << 16 | uint32_t{p[0]} << 24;
}

}  // namespace

Result<void> BusFramer::consume(std::span<const uint8_t> bytes) {
  size_t i = 0;
  while (i < bytes.size()) {
    switch (state_) {
      case State::kNul:
        // The D-Bus handshake begins with one NUL byte (it once carried credentials).
        if (bytes[i++] != 0) return Error::invalid("the handshake does not begin with a NUL byte");
        state_ = State::kAuthLine;
        break;
      case State::kAuthLine: {
        uint8_t c = bytes[i++];
        if (line_.size() >= kMaxAuthLine)
          return Error::invalid("a handshake line is longer than " + std::to_string(kMaxAuthLine) + " bytes");
        line_.push_back(static_cast<char>(c));
        if (!line_.ends_with("\r\n")) break;
        if (++lines_ > kMaxAuthLines)
          return Error::invalid("more than " + std::to_string(kMaxAuthLines) + " handshake lines");
        if (line_ == "BEGIN\r\n") state_ = State::kHeader;
        line_.clear();
        break;
      }
      case State::kHeader: {
        size_t n = std::min(sizeof header_ - header_have_, bytes.size() - i);
        std::copy_n(bytes.begin() + static_cast<std::ptrdiff_t>(i), n, header_ + header_have_);
        header_have_ += n;
        i += n;
        if (header_have_ == sizeof header_) VL_CHECK(end_header());
        break;
      }
      case State::kBody: {
        uint64_t n = std::min<uint64_t>(body_left_, bytes.size() - i);
        body_left_ -= n;
        i += static_cast<size_t>(n);
        if (body_left_ == 0) {
          state_ = State::kHeader;
          ++completed_;
        }
        break;
      }
    }
  }
  return {};
}

// The fixed header: endianness ('l' or 'B'), type, flags, version, then the body length, the
// serial and the length of the header-field array, which is padded to 8 bytes before the body.
Result<void> BusFramer::end_header() {
  header_have_ = 0;
  if (header_[0] != 'l' && header_[0] != 'B') return Error::invalid("a message header with no valid byte order");
  bool little = header_[0] == 'l';
  uint64_t fields = read_u32(header_ + 12, little);
  uint64_t body = read_u32(header_ + 4, little);
  uint64_t total = sizeof header_ + ((fields + 7) & ~uint64_t{7}) + body;
  if (total > max_message_)
    return Error::invalid("a message of " + std::to_string(total) + " bytes exceeds the limit of " +
                          std::to_string(max_message_) + " bytes");
  body_left_ = total - sizeof header_;
  state_ = body_left_ ? State::kBody : State::kHeader;
  if (!body_left_) ++completed_;
  return {};
}

}  // namespace vl
