#include "daemon/event_log.h"

#include <sys/stat.h>
#include <systemd/sd-journal.h>

#include <cstdio>
#include <cstdlib>

namespace vl {

bool stderr_is_journal(const char* journal_stream) {
  if (!journal_stream) return false;
  unsigned long long dev = 0, ino = 0;
  if (std::sscanf(journal_stream, "%llu:%llu", &dev, &ino) != 2) return false;
  struct stat st {};
  if (::fstat(2, &st) < 0) return false;
  return st.st_dev == dev && st.st_ino == ino;
}

void log_vm_event(const std::string& vm, LogLevel level, const std::string& message) {
  // Decided once: stderr does not change under a running daemon.
  static const bool journal = stderr_is_journal(std::getenv("JOURNAL_STREAM"));
  std::string line = "VM '" + vm + "': " + message;
  if (journal &&
      sd_journal_send("MESSAGE=%s", line.c_str(), "PRIORITY=%d", static_cast<int>(level), "VMLAUNCH_VM=%s", vm.c_str(),
                      "SYSLOG_IDENTIFIER=vmlaunchd", nullptr) >= 0)
    return;
  std::fprintf(stderr, "vmlaunchd: %s\n", line.c_str());
}

}  // namespace vl
