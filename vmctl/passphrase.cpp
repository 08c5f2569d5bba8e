#include "vmctl/passphrase.h"

#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <termios.h>
#include <unistd.h>

#include <iterator>

#include "common/sys.h"
#include "common/vm_name.h"

namespace vl::ctl {

namespace {

// The terminal as it was, for the signal handler: a signal during the prompt must not leave
// the operator's shell without echo.
int g_tty = -1;
struct termios g_saved {};
constexpr int kSignals[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};

void restore_and_reraise(int sig) {
  ::tcsetattr(g_tty, TCSAFLUSH, &g_saved);
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

constexpr size_t kMaxPassphrase = 4096;  // the helper's limit (helper/disk_secret.h)

}  // namespace

Result<std::string> read_passphrase_from_terminal(const std::string& vm) {
  // The controlling terminal, as ssh and cryptsetup ask; without one (a session of its own),
  // a terminal on stdin.
  UniqueFd tty(::open("/dev/tty", O_RDWR | O_NOCTTY | O_CLOEXEC));
  if (!tty && ::isatty(0)) tty.reset(::fcntl(0, F_DUPFD_CLOEXEC, 3));
  if (!tty) return Error::make(ErrorCode::kInvalid, "--ask-passphrase needs a terminal to ask on (none is open)");
  std::string prompt = "Passphrase for VM " + quote_for_message(vm) + ": ";
  VL_CHECK(sys::write_all(tty.get(), prompt));
  struct termios saved {};
  VL_TRY(sys::check(::tcgetattr(tty.get(), &saved), "read the terminal's settings"));
  struct termios quiet = saved;
  quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
  quiet.c_lflag |= ECHONL | ICANON;
  g_tty = tty.get();
  g_saved = saved;
  struct sigaction sa {}, old[std::size(kSignals)];
  sa.sa_handler = restore_and_reraise;
  for (size_t i = 0; i < std::size(kSignals); ++i) ::sigaction(kSignals[i], &sa, &old[i]);
  int set = ::tcsetattr(tty.get(), TCSAFLUSH, &quiet);
  std::string line;
  char c;
  ssize_t n = 0;
  while (set == 0 && line.size() <= kMaxPassphrase && (n = sys::retry_eintr([&] { return ::read(tty.get(), &c, 1); })) == 1 &&
         c != '\n')
    line.push_back(c);
  int read_errno = errno;
  ::tcsetattr(tty.get(), TCSAFLUSH, &saved);
  for (size_t i = 0; i < std::size(kSignals); ++i) ::sigaction(kSignals[i], &old[i], nullptr);
  g_tty = -1;
  if (set != 0) return Error::from_errno("turn the terminal's echo off");
  if (n < 0) {
    ::explicit_bzero(line.data(), line.size());
    return Error::from_errno(read_errno, "read the passphrase from the terminal");
  }
  if (line.size() > kMaxPassphrase) {
    ::explicit_bzero(line.data(), line.size());
    return Error::invalid("the passphrase is longer than " + std::to_string(kMaxPassphrase) + " bytes");
  }
  if (line.empty()) return Error::invalid("no passphrase given for VM " + quote_for_message(vm));
  return line;
}

Result<UniqueFd> sealed_passphrase(const std::string& passphrase) {
  UniqueFd fd = VL_TRY(sys::check_fd(::memfd_create("vmctl-passphrase", MFD_CLOEXEC | MFD_ALLOW_SEALING), "memfd_create"));
  VL_CHECK(sys::write_all(fd.get(), passphrase));
  VL_TRY(sys::check(::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE),
                    "seal the passphrase's memfd"));
  return fd;
}

Result<UniqueFd> ask_passphrase(const std::string& vm) {
  std::string passphrase = VL_TRY(read_passphrase_from_terminal(vm));
  auto fd = sealed_passphrase(passphrase);
  ::explicit_bzero(passphrase.data(), passphrase.size());
  return fd;
}

}  // namespace vl::ctl
