// Following the domains directory: a domain XML written, replaced or removed is noticed at
// once, without a daemon restart.
//
// The catalog (manager.h) re-reads the directory on every request anyway, so this is about
// the moments between requests: the daemon logs each definition change, tells its listeners
// (StateChanged), and forgets the last outcome of a VM whose XML is gone and nothing of
// which runs. A running VM whose XML vanished keeps running, and says so, until stopped.
//
// inotify events are triggers only: IN_Q_OVERFLOW (events were lost) is reported as a change
// of every name, as the catalog's next read is authoritative either way.
#pragma once

#include "daemon/asio.h"
#include <functional>
#include <memory>
#include <string>

#include "common/error.h"
#include "common/unique_fd.h"
#include "common/vm_name.h"

namespace vl {

class DomainWatch final {
 public:
  enum class Change { kWritten, kRemoved, kRescan };
  /// `name` is the VM of NAME.xml; for kRescan (events were lost) it is empty.
  using Handler = std::function<void(const std::string& name, Change change)>;

  DomainWatch(boost::asio::io_context& io, std::string dir, Handler handler);
  ~DomainWatch();
  DomainWatch(const DomainWatch&) = delete;
  DomainWatch& operator=(const DomainWatch&) = delete;

  /// Starts watching; an error (no inotify, no directory) leaves the daemon working without.
  Result<void> start();

 private:
  void read_events();

  boost::asio::io_context& io_;
  std::string dir_;
  Handler handler_;
  std::unique_ptr<boost::asio::posix::stream_descriptor> stream_;
  alignas(8) char buffer_[8192];
};

}  // namespace vl
