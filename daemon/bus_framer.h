// Where D-Bus messages begin and end in a client's byte stream, so that the daemon can refuse
// an oversized message before sd-bus buffers it.
//
// sd-bus has no limit of its own below the protocol's 128 MiB per message, and it allocates and
// fills its buffer as the bytes arrive: four clients each sending most of a 119 MiB message
// grew the daemon from 8 MiB to 484 MiB. The connection therefore reads the socket itself and
// passes the bytes on to sd-bus only after this framer has seen them: the SASL handshake (a NUL
// byte, then CRLF-terminated lines up to "BEGIN"), then messages whose total length the fixed
// 16-byte header announces. A pure parser: no I/O, no allocation beyond one header.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "common/error.h"

namespace vl {

class BusFramer final {
 public:
  /// The longest handshake line accepted ("AUTH EXTERNAL <hex uid>" is about 30 bytes).
  static constexpr size_t kMaxAuthLine = 512;
  /// The most handshake lines before BEGIN (sd-bus clients send three).
  static constexpr unsigned kMaxAuthLines = 16;

  explicit BusFramer(size_t max_message) : max_message_(max_message) {}

  /// Accounts for `bytes`, the next bytes of the stream. An Error names the violation (an
  /// oversized message or handshake line, a malformed header); the connection must then be
  /// dropped and the bytes never passed on.
  Result<void> consume(std::span<const uint8_t> bytes);
  /// True while a handshake or a message has begun and not ended: the time a client may spend
  /// here is bounded by the connection's deadline. The handshake counts from the first byte
  /// on, even before it arrives.
  bool mid_message() const { return state_ != State::kHeader || header_have_ > 0; }
  /// Messages completed so far (the handshake is not one).
  uint64_t completed() const { return completed_; }

 private:
  enum class State { kNul, kAuthLine, kHeader, kBody };

  Result<void> end_header();

  size_t max_message_;
  State state_ = State::kNul;
  std::string line_;  ///< the current handshake line, at most kMaxAuthLine bytes
  unsigned lines_ = 0;
  uint8_t header_[16] = {};
  size_t header_have_ = 0;
  uint64_t body_left_ = 0;
  uint64_t completed_ = 0;
};

}  // namespace vl
