// Where vmctl talks to: the local control socket, or a far host through SSH or TLS
// (`-H URL`, or VMCTL_HOST).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/error.h"

namespace vl::ctl {

/// A parsed `-H` URL: "ssh://[USER@]HOST[:PORT]" or "tls://HOST[:PORT]".
struct RemoteTarget {
  enum class Kind { kSsh, kTls } kind = Kind::kSsh;
  std::string user;  ///< ssh only; "" lets ssh choose (its configuration, or the local user)
  std::string host;  ///< a name, an IPv4 address or an IPv6 address (given in brackets)
  uint16_t port = 0;
  /// The URL as the user gave it, for messages.
  std::string url;
};

inline constexpr uint16_t kSshPort = 22;
inline constexpr uint16_t kTlsPort = 16514;

/// Parses a `-H` URL; the error names what is wrong with it. Nothing that could read as an
/// option to ssh (a leading '-') is accepted as a user or host.
Result<RemoteTarget> parse_remote(std::string_view url);

/// The sd-bus address that runs `ssh_program` to reach `target` and, on the far side, the
/// bridge `vmctl dial-stdio` to its control socket (like `systemctl -H`'s unixexec: address).
std::string ssh_bus_address(const RemoteTarget& target, const std::string& ssh_program);

/// Escapes a value for a D-Bus address: everything but [A-Za-z0-9_/.-] as %XX.
std::string bus_address_escape(std::string_view value);

/// `vmctl dial-stdio`: connects to the control socket at `socket_path` and copies stdin to it
/// and what it sends to stdout until both directions end. Returns the exit status; errors go
/// to stderr.
int dial_stdio(const std::string& socket_path);

}  // namespace vl::ctl
