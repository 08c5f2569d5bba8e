#include "daemon/domain_watch.h"

#include <cstdio>

#include "common/sys.h"
#include "daemon/inotify_events.h"

namespace vl {

DomainWatch::DomainWatch(boost::asio::io_context& io, std::string dir, Handler handler)
    : io_(io), dir_(std::move(dir)), handler_(std::move(handler)) {}

DomainWatch::~DomainWatch() {
  if (stream_) stream_->close();
}

Result<void> DomainWatch::start() {
  UniqueFd fd = VL_TRY(sys::check_fd(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC), "inotify_init1"));
  // Written: a file closed after writing, or renamed into place (how editors and `install`
  // replace a file); IN_ATTRIB because the owner and mode decide whether a file is accepted
  // (common/domain_file.h). Removed: deleted, or renamed away.
  constexpr uint32_t kMask = IN_CLOSE_WRITE | IN_MOVED_TO | IN_ATTRIB | IN_DELETE | IN_MOVED_FROM | IN_ONLYDIR;
  VL_TRY(sys::check(::inotify_add_watch(fd.get(), dir_.c_str(), kMask), "watch " + quote_for_message(dir_, kQuotePathMax)));
  stream_ = std::make_unique<boost::asio::posix::stream_descriptor>(io_, fd.release());
  read_events();
  return {};
}

void DomainWatch::read_events() {
  stream_->async_read_some(boost::asio::buffer(buffer_), [this](boost::system::error_code ec, size_t n) {
    if (ec == boost::asio::error::operation_aborted) return;
    if (ec) {
      std::fprintf(stderr, "vmlaunchd: domain directory events: %s; changes are seen at the next request\n",
                   ec.message().c_str());
      return;
    }
    bool gone = false;
    for_each_inotify_event(buffer_, n, [&](const inotify_event& event, const std::string& name) {
      if (gone) return;
      if (event.mask & IN_Q_OVERFLOW) return handler_("", Change::kRescan);
      if (event.mask & IN_IGNORED) {  // the directory itself is gone
        gone = true;
        return;
      }
      if (name.size() <= 4 || name.compare(name.size() - 4, 4, ".xml") != 0) return;
      std::string vm = name.substr(0, name.size() - 4);
      if (!VmName::parse(vm)) return;  // not a VM's file (the catalog ignores it too)
      handler_(vm, event.mask & (IN_DELETE | IN_MOVED_FROM) ? Change::kRemoved : Change::kWritten);
    });
    if (gone) {
      std::fprintf(stderr, "vmlaunchd: the domain directory '%s' is no longer watched\n", dir_.c_str());
      return;
    }
    read_events();
  });
}

}  // namespace vl
