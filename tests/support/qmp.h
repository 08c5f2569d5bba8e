// A minimal blocking QMP client for tests: one command at a time, events skipped.
#pragma once

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <nlohmann/json.hpp>
#include <string>

#include "common/error.h"
#include "common/sys.h"
#include "common/unique_fd.h"

namespace vl::test {

class QmpConnection final {
 public:
  /// Connects to a listening monitor socket and reads the greeting.
  static Result<QmpConnection> connect(const std::string& path) {
    UniqueFd fd = VL_TRY(sys::check_fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), "socket"));
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    path.copy(sa.sun_path, sizeof sa.sun_path - 1);
    VL_TRY(sys::check(::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa), "connect " + path));
    QmpConnection c(std::move(fd));
    auto greeting = VL_TRY(c.read_message());
    if (!greeting.contains("QMP")) return Error::invalid("no QMP greeting: " + greeting.dump());
    return c;
  }

  /// Sends {"execute": command} and returns the reply's "return" (or an Error for "error").
  Result<nlohmann::json> execute(const std::string& command, nlohmann::json args = nullptr) {
    nlohmann::json msg = {{"execute", command}};
    if (!args.is_null()) msg["arguments"] = std::move(args);
    VL_CHECK(sys::write_all(fd_.get(), msg.dump() + "\n"));
    for (;;) {
      auto reply = VL_TRY(read_message());
      if (reply.contains("event")) {
        events_.push_back(reply);
        continue;
      }
      if (reply.contains("error")) return Error::invalid(command + ": " + reply["error"].dump());
      return reply["return"];
    }
  }

  const std::vector<nlohmann::json>& events() const { return events_; }

 private:
  explicit QmpConnection(UniqueFd fd) : fd_(std::move(fd)) {}

  Result<nlohmann::json> read_message() {
    for (;;) {
      if (size_t nl = buffer_.find('\n'); nl != std::string::npos) {
        auto j = nlohmann::json::parse(buffer_.substr(0, nl), nullptr, false);
        buffer_.erase(0, nl + 1);
        if (j.is_discarded()) return Error::invalid("bad QMP message");
        return j;
      }
      pollfd p{fd_.get(), POLLIN, 0};
      if (::poll(&p, 1, 30000) != 1) return Error::make(ErrorCode::kSystem, "QMP timeout");
      char buf[4096];
      ssize_t n = ::read(fd_.get(), buf, sizeof buf);
      if (n <= 0) return Error::make(ErrorCode::kSystem, "QMP connection closed");
      buffer_.append(buf, static_cast<size_t>(n));
    }
  }

  UniqueFd fd_;
  std::string buffer_;
  std::vector<nlohmann::json> events_;
};

}  // namespace vl::test
