#include "daemon/emulator_watch.h"

#include <sys/inotify.h>

#include <climits>
#include <cstdio>
#include <cstdlib>

#include "common/sys.h"
#include "daemon/inotify_events.h"

namespace vl {

EmulatorWatch::EmulatorWatch(boost::asio::io_context& io, std::vector<std::string> emulators,
                             std::function<void()> changed)
    : io_(io), emulators_(std::move(emulators)), changed_(std::move(changed)) {}

EmulatorWatch::~EmulatorWatch() {
  if (stream_) stream_->close();
}

Result<void> EmulatorWatch::start() {
  UniqueFd fd = VL_TRY(sys::check_fd(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC), "inotify_init1"));
  // Replaced (renamed over, or written in place), created, or changed in mode or owner.
  constexpr uint32_t kMask = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_ATTRIB | IN_ONLYDIR;
  std::vector<std::string> paths = emulators_;
  for (const std::string& emulator : emulators_) {
    char resolved[PATH_MAX];
    if (::realpath(emulator.c_str(), resolved) && emulator != resolved) paths.emplace_back(resolved);
  }
  for (const std::string& path : paths) {
    size_t slash = path.rfind('/');
    if (slash == std::string::npos || slash + 1 == path.size()) continue;
    std::string dir = slash == 0 ? "/" : path.substr(0, slash);
    int wd = VL_TRY(sys::check(::inotify_add_watch(fd.get(), dir.c_str(), kMask), "watch '" + dir + "'"));
    files_.insert(std::to_string(wd) + "/" + path.substr(slash + 1));
  }
  stream_ = std::make_unique<boost::asio::posix::stream_descriptor>(io_, fd.release());
  read_events();
  return {};
}

void EmulatorWatch::read_events() {
  stream_->async_read_some(boost::asio::buffer(buffer_), [this](boost::system::error_code ec, size_t n) {
    if (ec == boost::asio::error::operation_aborted) return;
    if (ec) {
      std::fprintf(stderr, "vmlaunchd: emulator directory events: %s; emulator changes are seen at the next start\n",
                   ec.message().c_str());
      return;
    }
    bool changed = false;
    for_each_inotify_event(buffer_, n, [&](const inotify_event& event, const std::string& name) {
      changed |= (event.mask & IN_Q_OVERFLOW) || files_.contains(std::to_string(event.wd) + "/" + name);
    });
    if (changed) changed_();  // once per batch: an upgrade touches several files at once
    read_events();
  });
}

}  // namespace vl
