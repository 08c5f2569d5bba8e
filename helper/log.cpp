#include "helper/log.h"

#include <syslog.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#include <cstdio>

namespace vl::helper {

namespace {

std::string g_vm;

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
  std::fprintf(stderr, "vmlaunch-helper: %s\n", line.c_str());
}

}  // namespace

void log_set_vm(const std::string& vm) { g_vm = vm; }
void log_info(const std::string& message) { emit(LOG_INFO, message); }
void log_warning(const std::string& message) { emit(LOG_WARNING, message); }

Error log_error(Error error) {
  emit(LOG_ERR, error.message());
  return error;
}

}  // namespace vl::helper
