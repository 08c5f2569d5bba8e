#include "vmctl/remote.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <csignal>
#include <cctype>
#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <vector>

#include "common/config.h"
#include "common/control_protocol.h"
#include "common/unique_fd.h"
#include "common/vm_name.h"

namespace vl::ctl {

namespace {

bool valid_user(std::string_view user) {
  if (user.empty() || user.size() > 32 || user.front() == '-') return false;
  for (char c : user)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.')) return false;
  return true;
}

}  // namespace

Result<RemoteTarget> parse_remote(std::string_view url) {
  RemoteTarget t;
  t.url = std::string(url);
  auto bad = [&](const std::string& why) {
    return Error::invalid("host " + quote_for_message(url) + ": " + why +
                          " (expected ssh://[USER@]HOST[:PORT] or tls://HOST[:PORT])");
  };
  std::string_view rest;
  if (url.starts_with("ssh://")) {
    t.kind = RemoteTarget::Kind::kSsh;
    rest = url.substr(6);
  } else if (url.starts_with("tls://")) {
    t.kind = RemoteTarget::Kind::kTls;
    rest = url.substr(6);
  } else {
    return bad("unknown scheme");
  }
  if (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  if (size_t at = rest.find('@'); at != std::string_view::npos) {
    if (t.kind != RemoteTarget::Kind::kSsh) return bad("a user name is for ssh:// only");
    t.user = std::string(rest.substr(0, at));
    if (!valid_user(t.user)) return bad(quote_for_message(t.user) + " is not a user name");
    rest = rest.substr(at + 1);
  }
  auto hp = split_host_port(rest, t.kind == RemoteTarget::Kind::kSsh ? kSshPort : kTlsPort);
  if (rest.empty()) return bad("no host");
  if (!hp) return bad(quote_for_message(rest) + " is not HOST[:PORT]");
  t.host = hp->host;
  t.port = hp->port;
  return t;
}

std::string bus_address_escape(std::string_view value) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (char ch : value) {
    auto c = static_cast<unsigned char>(ch);
    if (std::isalnum(c) || c == '_' || c == '/' || c == '.' || c == '-') {
      out += ch;
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

// ssh -xT: no X11 forwarding, no terminal (the stream is binary). The host comes after "--" and
// was checked not to start with '-' anyway. On the far side the command runs through the login
// shell; an authorized_keys entry may force it (docs/remote.md).
std::string ssh_bus_address(const RemoteTarget& target, const std::string& ssh_program) {
  std::vector<std::string> argv = {"-xT", "-p", std::to_string(target.port)};
  if (!target.user.empty()) argv.insert(argv.end(), {"-l", target.user});
  argv.insert(argv.end(), {"--", target.host, "vmctl", "dial-stdio"});
  std::string address = "unixexec:path=" + bus_address_escape(ssh_program) + ",argv0=" + bus_address_escape(ssh_program);
  for (size_t i = 0; i < argv.size(); ++i)
    address += ",argv" + std::to_string(i + 1) + "=" + bus_address_escape(argv[i]);
  return address;
}

namespace {

// Under sshd, names the SSH client this relays in the name of its end of the connection
// (common/control_protocol.h), so that the daemon logs every call with it. Only a note: the
// daemon decides from the login's uid, as for any local caller. Without SSH_CONNECTION, or if
// the name cannot be bound, the connection is an ordinary local one.
void name_ssh_relay(int sock) {
  const char* connection = std::getenv("SSH_CONNECTION");  // "CLIENT PORT SERVER PORT"
  if (!connection) return;
  std::istringstream words(connection);
  std::string address, port;
  if (!(words >> address >> port)) return;
  std::string name = std::string(kSshRelayName) + std::to_string(::getpid()) + " " + address + " " + port;
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (name.size() + 1 > sizeof sa.sun_path) return;
  name.copy(sa.sun_path + 1, name.size());  // sun_path[0] stays NUL: an abstract name
  (void)::bind(sock, reinterpret_cast<sockaddr*>(&sa), static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size()));
}

}  // namespace

// Two directions, each ended on its own: EOF on stdin shuts down the socket's sending side
// (the daemon then ends the session), EOF from the socket ends the copy to stdout. A poll loop
// on three descriptors: small enough to read at once, and without threads.
int dial_stdio(const std::string& socket_path) {
  UniqueFd sock(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (!sock || socket_path.size() >= sizeof sa.sun_path) {
    std::fprintf(stderr, "vmctl: dial-stdio: cannot use the control socket %s\n", socket_path.c_str());
    return 1;
  }
  socket_path.copy(sa.sun_path, sizeof sa.sun_path - 1);
  // A vanished ssh on the other end of stdout is an ordinary end, not a signal to die of.
  ::signal(SIGPIPE, SIG_IGN);
  name_ssh_relay(sock.get());
  if (::connect(sock.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    std::fprintf(stderr, "vmctl: dial-stdio: connect to %s: %s\n", socket_path.c_str(), std::strerror(errno));
    return 1;
  }
  bool in_open = true, out_open = true;
  char buf[64 * 1024];
  auto copy_all = [](int to, const char* data, size_t n) {
    while (n > 0) {
      ssize_t k = ::send(to, data, n, MSG_NOSIGNAL);
      if (k < 0 && errno == ENOTSOCK) k = ::write(to, data, n);
      if (k < 0 && errno == EINTR) continue;
      if (k <= 0) return false;
      data += k;
      n -= static_cast<size_t>(k);
    }
    return true;
  };
  while (out_open) {
    pollfd fds[2] = {{in_open ? 0 : -1, POLLIN, 0}, {sock.get(), POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return 1;
    }
    if (fds[0].revents) {
      ssize_t n = ::read(0, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        in_open = false;
        ::shutdown(sock.get(), SHUT_WR);
      } else if (!copy_all(sock.get(), buf, static_cast<size_t>(n))) {
        return 1;
      }
    }
    if (fds[1].revents) {
      ssize_t n = ::recv(sock.get(), buf, sizeof buf, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) out_open = false;
      else if (!copy_all(1, buf, static_cast<size_t>(n))) return 1;
    }
  }
  return 0;
}

}  // namespace vl::ctl
