#include "helper/locks.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>

#include "common/sys.h"

namespace vl::helper {

namespace {

// STATE and STATE/locks are root's 0700: nobody else can create, replace or hold these files.
Result<UniqueFd> lock_file(const std::string& path) {
  UniqueFd fd = VL_TRY(sys::check_fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600),
                                     "open " + quote_for_message(path, kQuotePathMax)));
  VL_TRY(sys::check(sys::retry_eintr([&] { return ::flock(fd.get(), LOCK_EX); }), "lock " + quote_for_message(path, kQuotePathMax)));
  return fd;
}

Result<void> ensure_dir(const std::string& dir) {
  if (::mkdir(dir.c_str(), 0700) < 0 && errno != EEXIST) return Error::from_errno("create " + quote_for_message(dir, kQuotePathMax));
  return {};
}

}  // namespace

Result<UniqueFd> lock_vm(const HostConfig& config, const VmName& vm) {
  VL_CHECK(ensure_dir(config.state_dir));
  VL_CHECK(ensure_dir(config.state_dir + "/locks"));
  return lock_file(config.state_dir + "/locks/" + vm.str());
}

Result<UniqueFd> lock_shared_state(const HostConfig& config) {
  VL_CHECK(ensure_dir(config.state_dir));
  return lock_file(config.state_dir + "/helper.lock");
}

}  // namespace vl::helper
