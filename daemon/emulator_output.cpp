#include "daemon/emulator_output.h"

#include <fcntl.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>

#include "common/emulator_tail.h"
#include "common/sys.h"

namespace vl {

namespace {

constexpr size_t kSaidLines = 2, kSaidLineMax = 300;
constexpr size_t kRelayTail = 4096;
constexpr int kJournalLines = 16;
constexpr size_t kJournalFieldMax = 4096;

// The relay escapes what it copies; the journal holds the emulator's bytes as they were: a
// line quoted in a reason must not carry escape sequences or line breaks either way.
std::string escape_controls(const std::string& line) {
  std::string out;
  for (unsigned char c : line) {
    if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

struct JournalCloser {
  void operator()(sd_journal* j) const { sd_journal_close(j); }
};
using JournalPtr = std::unique_ptr<sd_journal, JournalCloser>;

Result<JournalPtr> open_run_journal(const VmName& vm, const VmState& state) {
  sd_journal* raw = nullptr;
  // Not SD_JOURNAL_SYSTEM: the emulator runs as the VM's uid, and journald (SplitMode=uid)
  // files what a uid outside the system range writes in that uid's own journal file, even for a
  // system unit.
  if (int r = sd_journal_open(&raw, SD_JOURNAL_LOCAL_ONLY); r < 0) return Error::from_errno(-r, "open the journal");
  JournalPtr j(raw);
  // Without read access sd-journal opens no file and finds nothing: say so rather than wait.
  if (sd_journal_has_runtime_files(j.get()) <= 0 && sd_journal_has_persistent_files(j.get()) <= 0)
    return Error::make(ErrorCode::kDenied, "no journal file is readable (is the daemon's user in group systemd-journal?)");
  // Fields of different names must all match: this unit, this run, the emulator's process
  // (the helper execs it in place) and its standard output, not the helper's own log lines.
  for (const std::string& match : {"_SYSTEMD_UNIT=kvm-vm@" + vm.str() + ".service", "_SYSTEMD_INVOCATION_ID=" + state.invocation,
                                   "_PID=" + std::to_string(state.pid), std::string("_TRANSPORT=stdout")})
    if (int r = sd_journal_add_match(j.get(), match.data(), match.size()); r < 0)
      return Error::from_errno(-r, "match the journal");
  (void)sd_journal_set_data_threshold(j.get(), kJournalFieldMax);
  return j;
}

std::vector<std::string> read_run_lines(sd_journal* j) {
  std::vector<std::string> lines;
  if (sd_journal_seek_tail(j) < 0) return lines;
  for (int n = 0; n < kJournalLines && sd_journal_previous(j) > 0; ++n) {
    const void* data = nullptr;
    size_t size = 0;
    if (sd_journal_get_data(j, "MESSAGE", &data, &size) < 0) continue;
    std::string field(static_cast<const char*>(data), std::min(size, kJournalFieldMax));
    lines.push_back(field.substr(std::min(field.size(), sizeof "MESSAGE=" - 1)));
  }
  std::reverse(lines.begin(), lines.end());
  return lines;
}

}  // namespace

std::string format_emulator_said(const std::vector<std::string>& lines) {
  std::vector<const std::string*> said;
  for (const std::string& line : lines)
    // QEMU's notice for every pty chardev says nothing about a failure.
    if (!line.empty() && line.rfind("char device redirected to ", 0) != 0) said.push_back(&line);
  if (said.empty()) return "";
  std::string out = "; qemu said: ";
  size_t first = said.size() > kSaidLines ? said.size() - kSaidLines : 0;
  for (size_t i = first; i < said.size(); ++i)
    out += (i == first ? "" : " | ") + escape_controls(*said[i]).substr(0, kSaidLineMax);
  return out;
}

std::string explain_emulator_said(const std::string& said, const std::vector<std::string>& disk_targets) {
  // crypto/block-luks.c's words when no keyslot opens with the passphrase, after the option
  // of the node that failed.
  if (said.find("Invalid password, cannot unlock any keyslot") == std::string::npos) return said;
  constexpr std::string_view kSecret = "\"key-secret\":\"disk";
  std::string disk = "an encrypted disk";
  if (size_t at = said.find(kSecret); at != std::string::npos) {
    size_t digits = at + kSecret.size(), end = digits;
    while (end < said.size() && end - digits < 3 && std::isdigit(static_cast<unsigned char>(said[end]))) ++end;
    if (end > digits && said.compare(end, 8, "-secret\"") == 0) {
      size_t index = std::stoul(said.substr(digits, end - digits));
      if (index < disk_targets.size()) disk = "disk " + quote_for_message(disk_targets[index]);
    }
  }
  return "; wrong passphrase for " + disk + said;
}

namespace {

// The relay's copy as it is now: its lines, and whether the relay has ended it.
struct RelayCopy {
  std::vector<std::string> lines;
  bool ended = false;
};

RelayCopy read_relay_copy(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
  struct stat st {};
  if (!fd || ::fstat(fd.get(), &st) < 0 || !S_ISREG(st.st_mode) || st.st_size <= 0) return {};
  off_t from = st.st_size > static_cast<off_t>(kRelayTail) ? st.st_size - static_cast<off_t>(kRelayTail) : 0;
  std::string text(static_cast<size_t>(st.st_size - from), '\0');
  ssize_t n = ::pread(fd.get(), text.data(), text.size(), from);
  if (n <= 0) return {};
  text.resize(static_cast<size_t>(n));
  RelayCopy copy;
  copy.ended = text.ends_with(kEmulatorTailEnd);
  if (copy.ended) text.resize(text.size() - kEmulatorTailEnd.size());
  for (size_t pos = 0; pos < text.size();) {
    size_t nl = text.find('\n', pos);
    std::string line = text.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
    pos = nl == std::string::npos ? text.size() : nl + 1;
    if (line.rfind("qemu: ", 0) == 0) line.erase(0, 6);
    copy.lines.push_back(std::move(line));
  }
  if (from > 0 && !copy.lines.empty()) copy.lines.erase(copy.lines.begin());  // cut at its start
  return copy;
}

}  // namespace

std::vector<std::string> relay_output_lines(const std::string& path) { return read_relay_copy(path).lines; }

Result<std::vector<std::string>> journal_output_lines(const VmName& vm, const VmState& state) {
  JournalPtr j = VL_TRY(open_run_journal(vm, state));
  return read_run_lines(j.get());
}

// Owned by its EmulatorSaid and by the asynchronous waits in flight, so that a wait completing
// after the EmulatorSaid is gone finds `done_` empty and does nothing. finish() ends the
// waits; the answer is posted, so it never runs inside a start_*(). One source per waiter:
// the journal (journal_ set) or the relay's copy (copy_ set).
struct EmulatorSaid::Waiter final : std::enable_shared_from_this<Waiter> {
  Waiter(boost::asio::io_context& io, std::function<void(std::string)> done) : io_(io), timer_(io), done_(std::move(done)) {}

  void start_journal(const VmName& vm, const VmState& state, std::chrono::milliseconds wait) {
    auto opened = open_run_journal(vm, state);
    if (!opened) return finish({});
    journal_ = std::move(*opened);
    // Before the first read, so that nothing appended after it goes unnoticed.
    int fd = sd_journal_get_fd(journal_.get());
    if (fd < 0) return finish(read_run_lines(journal_.get()));
    if (check()) return;
    // A dup for asio: the journal keeps its own fd (one owner each); readiness is shared.
    int copy = ::fcntl(fd, F_DUPFD_CLOEXEC, 3);
    if (copy < 0) return finish({});
    wait_for_changes(UniqueFd(copy), wait);
  }

  void start_relay_copy(std::string path, std::chrono::milliseconds wait) {
    copy_ = std::move(path);
    // The watch before the first read, so that nothing appended after it goes unnoticed. No
    // copy (a launch without a relay): nothing will come.
    UniqueFd fd(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
    if (!fd || ::inotify_add_watch(fd.get(), copy_.c_str(), IN_MODIFY | IN_DONT_FOLLOW) < 0)
      return finish(relay_output_lines(copy_));
    if (check()) return;
    wait_for_changes(std::move(fd), wait);
  }

  // Until `wait` passes, checks again whenever `fd` says the source changed.
  void wait_for_changes(UniqueFd fd, std::chrono::milliseconds wait) {
    changes_ = std::make_unique<boost::asio::posix::stream_descriptor>(io_, fd.release());
    timer_.expires_after(wait);
    timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
      if (ec || self->finished_) return;
      self->take_in_changes();
      self->finish(self->read_lines());
    });
    watch();
  }

  void watch() {
    changes_->async_wait(boost::asio::posix::stream_descriptor::wait_read, [self = shared_from_this()](boost::system::error_code ec) {
      if (ec || self->finished_) return;
      self->take_in_changes();
      if (!self->check()) self->watch();
    });
  }

  void take_in_changes() {
    if (journal_) {
      (void)sd_journal_process(journal_.get());  // takes in what was appended meanwhile
      return;
    }
    // The inotify events only say "look again": drained, unread.
    char buf[4096];
    while (changes_ && ::read(changes_->native_handle(), buf, sizeof buf) > 0) {
    }
  }

  std::vector<std::string> read_lines() { return journal_ ? read_run_lines(journal_.get()) : relay_output_lines(copy_); }

  // True once the run's lines are all there (and handed over): the journal has any, or the
  // relay has ended its copy.
  bool check() {
    if (!journal_) {
      RelayCopy copy = read_relay_copy(copy_);
      if (!copy.ended) return false;
      finish(std::move(copy.lines));
      return true;
    }
    std::vector<std::string> lines = read_run_lines(journal_.get());
    if (format_emulator_said(lines).empty()) return false;
    finish(std::move(lines));
    return true;
  }

  void finish(std::vector<std::string> lines) {
    if (std::exchange(finished_, true)) return;
    timer_.cancel();
    if (changes_) changes_->close();
    boost::asio::post(io_, [self = shared_from_this(), said = format_emulator_said(lines)] {
      if (auto done = std::exchange(self->done_, nullptr)) done(said);
    });
  }

  void cancel() {
    done_ = nullptr;
    finished_ = true;
    timer_.cancel();
    if (changes_) changes_->close();
  }

  boost::asio::io_context& io_;
  boost::asio::steady_timer timer_;
  std::function<void(std::string)> done_;
  bool finished_ = false;
  JournalPtr journal_;
  std::string copy_;
  std::unique_ptr<boost::asio::posix::stream_descriptor> changes_;
};

EmulatorSaid::EmulatorSaid(boost::asio::io_context& io, VmName vm, VmState state, std::string relay_copy,
                           std::chrono::milliseconds wait, std::function<void(std::string)> done)
    : waiter_(std::make_shared<Waiter>(io, std::move(done))) {
  if (state.invocation.empty()) waiter_->start_relay_copy(std::move(relay_copy), wait);
  else waiter_->start_journal(vm, state, wait);
}

EmulatorSaid::~EmulatorSaid() { waiter_->cancel(); }

}  // namespace vl
