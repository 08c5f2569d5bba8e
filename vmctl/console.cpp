#include "vmctl/console.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <deque>
#include <initializer_list>
#include <map>
#include <optional>

#include "common/unique_fd.h"

namespace vl::ctl {

namespace {

// Replies to ChannelWrite a client may wait for at once, per channel, before it stops reading
// its input: the daemon refuses more than 256 KiB waiting (control_protocol.h).
constexpr unsigned kMaxWritesInFlight = 8;
constexpr size_t kReadChunk = 4096;
constexpr size_t kForwardChunk = 16384;
// Bytes from the daemon a local VNC connection may have waiting before vmctl stops reading
// the control connection (and so the daemon, its source: daemon/channel.h).
constexpr size_t kMaxLocalBacklog = 4 << 20;

// The terminal in raw mode while it lives, as it was afterwards: every way out of run_console
// goes through the destructor (signals arrive on a signalfd, never interrupt).
class RawTerminal final {
 public:
  RawTerminal() {
    if (!::isatty(STDIN_FILENO) || ::tcgetattr(STDIN_FILENO, &saved_) < 0) return;
    termios raw = saved_;
    ::cfmakeraw(&raw);
    if (::tcsetattr(STDIN_FILENO, TCSAFLUSH, &raw) == 0) active_ = true;
  }
  ~RawTerminal() {
    if (active_) ::tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved_);
  }
  /// Stops the process (SIGTSTP's default) with the terminal as it was, raw again once continued.
  void stop_process() {
    if (active_) ::tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved_);
    ::raise(SIGSTOP);
    termios raw = saved_;
    ::cfmakeraw(&raw);
    if (active_) ::tcsetattr(STDIN_FILENO, TCSAFLUSH, &raw);
  }
  RawTerminal(const RawTerminal&) = delete;
  RawTerminal& operator=(const RawTerminal&) = delete;
  /// "\r\n" in raw mode (no output processing), "\n" otherwise.
  const char* newline() const { return active_ ? "\r\n" : "\n"; }

 private:
  termios saved_{};
  bool active_ = false;
};

// Signals as readable events for the poll loop, blocked while it lives.
class SignalEvents final {
 public:
  explicit SignalEvents(std::initializer_list<int> signals) {
    sigemptyset(&set_);
    for (int s : signals) sigaddset(&set_, s);
    ::sigprocmask(SIG_BLOCK, &set_, &old_);
    fd_.reset(::signalfd(-1, &set_, SFD_CLOEXEC | SFD_NONBLOCK));
    ::signal(SIGPIPE, SIG_IGN);  // a closed stdout or viewer is an error to handle, not a death
  }
  // A signal that ended the loop is consumed here: unblocked while pending, it would kill the
  // process on its way out, past the cleanup it asked for.
  ~SignalEvents() {
    signalfd_siginfo info{};
    while (::read(fd_.get(), &info, sizeof info) == sizeof info) {
    }
    fd_.reset();
    ::sigprocmask(SIG_SETMASK, &old_, nullptr);
  }
  SignalEvents(const SignalEvents&) = delete;
  SignalEvents& operator=(const SignalEvents&) = delete;
  int fd() const { return fd_.get(); }
  /// The signal that made fd() readable, 0 if none is pending.
  int next() {
    signalfd_siginfo info{};
    return ::read(fd_.get(), &info, sizeof info) == sizeof info ? static_cast<int>(info.ssi_signo) : 0;
  }

 private:
  sigset_t set_{}, old_{};
  UniqueFd fd_;
};

bool write_all(int fd, const uint8_t* p, size_t n) {
  while (n > 0) {
    ssize_t k = ::write(fd, p, n);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    p += k;
    n -= static_cast<size_t>(k);
  }
  return true;
}

}  // namespace

int run_console(Client& client, const std::string& vm, bool read_only) {
  bool done = false;
  std::string reason;
  // Signals are dispatched from process(), after OpenConsole's reply set this.
  std::optional<uint32_t> channel;
  auto ok = client.watch_channels(
      [&](uint32_t id, std::span<const uint8_t> bytes) {
        if (channel && id == *channel && !write_all(STDOUT_FILENO, bytes.data(), bytes.size())) {
          done = true;
          reason = std::string("cannot write the output: ") + std::strerror(errno);
        }
      },
      [&](uint32_t id, const std::string& why) {
        if (channel && id == *channel) done = true, reason = why;
      });
  if (!ok) {
    std::fprintf(stderr, "vmctl: %s\n", ok.error().message().c_str());
    return 1;
  }
  auto opened = client.open_console(vm, !read_only);
  if (!opened) {
    std::fprintf(stderr, "vmctl: %s\n", opened.error().message().c_str());
    return 1;
  }
  channel = *opened;
  std::fprintf(stderr, "Connected to the serial console of VM '%s'%s; escape character is ^]\n", vm.c_str(),
               read_only ? " (read-only)" : "");
  // Left to their default action, these would end or stop vmctl with the terminal raw.
  SignalEvents signals{SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGTSTP};
  RawTerminal terminal;
  unsigned in_flight = 0;
  bool input_open = true, detached = false;
  int status = 0;
  while (!done) {
    pollfd fds[3] = {client.poll_fd(),
                     {input_open && in_flight < kMaxWritesInFlight ? STDIN_FILENO : -1, POLLIN, 0},
                     {signals.fd(), POLLIN, 0}};
    if (::poll(fds, 3, client.poll_timeout_ms()) < 0 && errno != EINTR) break;
    if (fds[2].revents & POLLIN) {
      if (int signal = signals.next(); signal == SIGTSTP) {
        terminal.stop_process();
        continue;
      }
      done = detached = true;  // the channel is closed below, the terminal restored on return
      break;
    }
    if (fds[1].revents & (POLLIN | POLLHUP | POLLERR)) {
      uint8_t buf[kReadChunk];
      ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
      if (n <= 0) {
        input_open = false;
        done = detached = true;  // end of input: detach, as with the escape key
      } else {
        size_t len = static_cast<size_t>(n);
        const uint8_t* escape = static_cast<const uint8_t*>(std::memchr(buf, kConsoleEscape, len));
        if (escape) {
          len = static_cast<size_t>(escape - buf);
          done = detached = true;
        }
        if (!read_only && len > 0) {
          ++in_flight;
          auto sent = client.channel_write(*channel, {buf, len}, [&](Result<void> r) {
            --in_flight;
            if (!r && !done) done = true, reason = r.error().message(), status = 1;
          });
          if (!sent) done = true, reason = sent.error().message(), status = 1;
        }
      }
    }
    if (auto r = client.process(); !r) {
      done = true;
      reason = r.error().message();
      status = 1;
    }
  }
  if (detached) {
    (void)client.close_channel(*channel);
    client.flush();
    std::fprintf(stderr, "%sDetached from the console of VM '%s'.%s", terminal.newline(), vm.c_str(), terminal.newline());
  } else {
    std::fprintf(stderr, "%sThe console of VM '%s' closed: %s%s", terminal.newline(), vm.c_str(), reason.c_str(),
                 terminal.newline());
  }
  return status;
}

namespace {

// One local viewer connection and its channel.
struct Forward {
  UniqueFd fd;
  uint32_t channel = 0;
  unsigned in_flight = 0;
  std::string backlog;  ///< from the VM, not yet written to the viewer
  bool closing = false;
};

Result<UniqueFd> listen_on(const std::string& listen, uint16_t& port) {
  size_t colon = listen.rfind(':');
  if (colon == std::string::npos) return Error::invalid("--listen takes ADDRESS:PORT, not '" + listen + "'");
  std::string host = listen.substr(0, colon);
  char* end = nullptr;
  unsigned long p = std::strtoul(listen.c_str() + colon + 1, &end, 10);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  if (*end || colon + 1 == listen.size() || p > 65535 || ::inet_pton(AF_INET, host.c_str(), &sa.sin_addr) != 1)
    return Error::invalid("--listen takes an IPv4 ADDRESS:PORT, not '" + listen + "'");
  sa.sin_port = htons(static_cast<uint16_t>(p));
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return Error::from_errno("create a socket");
  int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0 || ::listen(fd.get(), 8) < 0)
    return Error::from_errno("listen on " + listen);
  socklen_t len = sizeof sa;
  ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&sa), &len);
  port = ntohs(sa.sin_port);
  return fd;
}

}  // namespace

int run_vnc_forward(Client& client, const std::string& vm, const std::string& listen) {
  uint16_t port = 0;
  auto listener = listen_on(listen, port);
  if (!listener) {
    std::fprintf(stderr, "vmctl: %s\n", listener.error().message().c_str());
    return 1;
  }
  std::map<uint32_t, Forward> forwards;  // by channel
  std::string lost;
  auto ok = client.watch_channels(
      [&](uint32_t id, std::span<const uint8_t> bytes) {
        auto it = forwards.find(id);
        if (it != forwards.end()) it->second.backlog.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
      },
      [&](uint32_t id, const std::string& why) {
        auto it = forwards.find(id);
        if (it == forwards.end()) return;
        std::fprintf(stderr, "vmctl: VNC connection %u closed: %s\n", id, why.c_str());
        it->second.closing = true;  // the backlog still goes out first
      });
  if (!ok) {
    std::fprintf(stderr, "vmctl: %s\n", ok.error().message().c_str());
    return 1;
  }
  std::string host = listen.substr(0, listen.rfind(':'));
  std::printf("Forwarding %s:%u to the VNC server of VM '%s'; connect a VNC viewer there, Ctrl-C ends.\n", host.c_str(),
              static_cast<unsigned>(port), vm.c_str());
  std::fflush(stdout);
  SignalEvents signals{SIGINT, SIGTERM, SIGHUP};
  int status = 0;
  for (;;) {
    size_t backlog = 0;
    std::vector<pollfd> fds = {client.poll_fd(), {listener->get(), POLLIN, 0}, {signals.fd(), POLLIN, 0}};
    // Past the backlog cap the control connection is not read: the daemon's queue fills, and
    // its source pauses.
    std::vector<uint32_t> order;
    for (auto& [id, f] : forwards) {
      backlog += f.backlog.size();
      short events = (f.in_flight < kMaxWritesInFlight && !f.closing ? POLLIN : 0) | (f.backlog.empty() ? 0 : POLLOUT);
      fds.push_back({f.fd.get(), events, 0});
      order.push_back(id);
    }
    if (backlog > kMaxLocalBacklog) fds[0].events &= ~POLLIN;
    if (::poll(fds.data(), fds.size(), client.poll_timeout_ms()) < 0 && errno != EINTR) break;
    if (fds[2].revents & POLLIN) break;
    if (fds[1].revents & POLLIN) {
      UniqueFd conn(::accept4(listener->get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
      if (conn) {
        auto channel = client.open_vnc(vm);
        if (!channel) std::fprintf(stderr, "vmctl: %s\n", channel.error().message().c_str());
        else forwards[*channel] = Forward{std::move(conn), *channel, 0, {}, false};
      }
    }
    for (size_t i = 3; i < fds.size(); ++i) {
      auto it = forwards.find(order[i - 3]);
      if (it == forwards.end()) continue;
      Forward& f = it->second;
      if ((fds[i].revents & POLLOUT) && !f.backlog.empty()) {
        ssize_t k = ::send(f.fd.get(), f.backlog.data(), f.backlog.size(), MSG_NOSIGNAL);
        if (k > 0) f.backlog.erase(0, static_cast<size_t>(k));
        else if (k < 0 && errno != EAGAIN) f.closing = true, f.backlog.clear();
      }
      if (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) {
        uint8_t buf[kForwardChunk];
        ssize_t n = ::read(f.fd.get(), buf, sizeof buf);
        if (n > 0) {
          ++f.in_flight;
          uint32_t id = f.channel;
          (void)client.channel_write(id, {buf, static_cast<size_t>(n)}, [&forwards, id](Result<void> r) {
            auto fit = forwards.find(id);
            if (fit == forwards.end()) return;
            --fit->second.in_flight;
            if (!r) fit->second.closing = true;
          });
        } else if (n == 0 || errno != EAGAIN) {
          (void)client.close_channel(f.channel);  // the viewer left
          f.closing = true;
          f.backlog.clear();
        }
      }
    }
    std::erase_if(forwards, [](const auto& e) { return e.second.closing && e.second.backlog.empty(); });
    if (auto r = client.process(); !r) {
      lost = r.error().message();
      status = 1;
      break;
    }
  }
  for (auto& [id, f] : forwards) (void)client.close_channel(id);
  client.flush();
  if (!lost.empty()) std::fprintf(stderr, "vmctl: %s\n", lost.c_str());
  return status;
}

}  // namespace vl::ctl
