#include "daemon/event_log.h"

#include <sys/stat.h>
#include <systemd/sd-journal.h>

#include <cstdio>
#include <cstdlib>

#include "common/vm_name.h"

namespace vl {

bool stderr_is_journal(const char* journal_stream) {
  if (!journal_stream) return false;
  unsigned long long dev = 0, ino = 0;
  if (std::sscanf(journal_stream, "%llu:%llu", &dev, &ino) != 2) return false;
  struct stat st {};
  if (::fstat(2, &st) < 0) return false;
  return st.st_dev == dev && st.st_ino == ino;
}

namespace {

// Decided once: stderr does not change under a running daemon.
bool to_journal() {
  static const bool journal = stderr_is_journal(std::getenv("JOURNAL_STREAM"));
  return journal;
}

}  // namespace

void log_vm_event(const std::string& vm, LogLevel level, const std::string& message) {
  const bool journal = to_journal();
  std::string line = "VM '" + vm + "': " + message;
  if (journal &&
      sd_journal_send("MESSAGE=%s", line.c_str(), "PRIORITY=%d", static_cast<int>(level), "VMLAUNCH_VM=%s", vm.c_str(),
                      "SYSLOG_IDENTIFIER=vmlaunchd", nullptr) >= 0)
    return;
  std::fprintf(stderr, "vmlaunchd: %s\n", line.c_str());
}

void log_control_call(const std::string& who, const std::string& how, const std::string& method,
                      const std::string& vm, bool allowed) {
  // The VM name is the caller's to choose: quoted in the line, and a journal field only when
  // it is a valid name.
  std::string line = who + " [" + how + "]: " + method + (vm.empty() ? "" : " " + quote_for_message(vm)) +
                     (allowed ? ": allowed" : ": refused");
  std::string field = VmName::parse(vm) ? vm : "";
  int priority = static_cast<int>(allowed ? LogLevel::kInfo : LogLevel::kWarning);
  if (to_journal() && sd_journal_send("MESSAGE=%s", line.c_str(), "PRIORITY=%d", priority, "VMLAUNCH_PEER=%s",
                                      who.c_str(), "VMLAUNCH_VM=%s", field.c_str(), "SYSLOG_IDENTIFIER=vmlaunchd",
                                      nullptr) >= 0)
    return;
  std::fprintf(stderr, "vmlaunchd: %s\n", line.c_str());
}

}  // namespace vl
