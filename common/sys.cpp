#include "common/sys.h"

#include <fcntl.h>
#include <sys/stat.h>

#include "common/vm_name.h"

namespace vl::sys {

Result<std::string> read_all(int fd, size_t max_bytes) {
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = retry_eintr([&] { return ::read(fd, buf, sizeof buf); });
    if (n < 0) return Error::from_errno("read");
    if (n == 0) return out;
    if (out.size() + static_cast<size_t>(n) > max_bytes)
      return Error::invalid("input larger than " + std::to_string(max_bytes) + " bytes");
    out.append(buf, static_cast<size_t>(n));
  }
}

Result<std::string> read_file(const std::string& path, size_t max_bytes) {
  auto fd = check_fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY), "open " + quote_for_message(path, kQuotePathMax));
  if (!fd) return std::move(fd).error();
  auto text = read_all(fd->get(), max_bytes);
  if (!text) return text.error().wrap(quote_for_message(path, kQuotePathMax));
  return text;
}

Result<void> write_all(int fd, std::string_view data) {
  while (!data.empty()) {
    ssize_t n = retry_eintr([&] { return ::write(fd, data.data(), data.size()); });
    if (n < 0) return Error::from_errno("write");
    data.remove_prefix(static_cast<size_t>(n));
  }
  return {};
}

Result<void> write_file_atomic(const std::string& path, std::string_view data, unsigned mode) {
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  UniqueFd fd = VL_TRY(check_fd(
      ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode),
      "create " + quote_for_message(tmp, kQuotePathMax)));
  auto written = write_all(fd.get(), data);
  if (written && ::fsync(fd.get()) < 0) written = Error::from_errno("fsync " + quote_for_message(tmp, kQuotePathMax));
  if (written && ::rename(tmp.c_str(), path.c_str()) < 0)
    written = Error::from_errno("rename " + quote_for_message(tmp, kQuotePathMax) + " to " + quote_for_message(path, kQuotePathMax));
  if (!written) ::unlink(tmp.c_str());
  return written;
}

}  // namespace vl::sys
