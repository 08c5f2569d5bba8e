// The records of one read() from an inotify descriptor, for the directory watches.
#pragma once

#include <sys/inotify.h>

#include <cstddef>
#include <cstring>
#include <string>

namespace vl {

/// Calls `f(event, name)` for every whole record in the `n` bytes read into `buf`; `name` is
/// the file's name in the watched directory ("" for events about the directory itself).
template <typename F>
void for_each_inotify_event(const char* buf, size_t n, F f) {
  for (size_t off = 0; off + sizeof(inotify_event) <= n;) {
    inotify_event event;
    std::memcpy(&event, buf + off, sizeof event);
    std::string name;
    if (event.len > 0) name = std::string(buf + off + sizeof event, strnlen(buf + off + sizeof event, event.len));
    off += sizeof event + event.len;
    f(event, name);
  }
}

}  // namespace vl
