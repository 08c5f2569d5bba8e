#include "helper/log.h"

#include <fcntl.h>
#include <syslog.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#include "common/sys.h"

namespace vl::helper {

namespace {

std::string g_vm;
int g_stderr = STDERR_FILENO;

bool journald_present() {
  static const bool present = ::access("/run/systemd/journal/socket", W_OK) == 0;
  return present;
}

void emit(int priority, const std::string& message) {
  std::string line = g_vm.empty() ? message : g_vm + ": " + message;
  if (journald_present()) {
    sd_journal_send("MESSAGE=%s", line.c_str(), "PRIORITY=%d", priority, "VMLAUNCH_VM=%s", g_vm.c_str(),
                    "SYSLOG_IDENTIFIER=vmlaunch-helper", nullptr);
    return;
  }
  // One write per line: with O_APPEND it is not interleaved with another writer's lines.
  (void)sys::write_all(g_stderr, "vmlaunch-helper: " + line + "\n");
}

}  // namespace

void log_set_vm(const std::string& vm) { g_vm = vm; }
void log_info(const std::string& message) { emit(LOG_INFO, message); }
void log_warning(const std::string& message) { emit(LOG_WARNING, message); }

Result<int> log_keep_private_stderr(int min_fd) {
  int fd = VL_TRY(sys::check(::fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, min_fd), "duplicate the log fd"));
  if (g_stderr != STDERR_FILENO) ::close(g_stderr);
  g_stderr = fd;
  return fd;
}

Error log_error(Error error) {
  emit(LOG_ERR, error.message());
  return error;
}

}  // namespace vl::helper
