#include "common/qemu_options.h"

#include <algorithm>

#include "common/vm_name.h"

namespace vl {

namespace {

// Options that take no value. Anything else consumes the next word, so an option missing
// from this list can only make a plan fail to parse, never turn a value into an option.
constexpr std::string_view kFlagOptions[] = {
    "-S", "-no-user-config", "-nodefaults", "-no-shutdown", "-no-acpi", "-no-hpet",
    "-enable-kvm", "-nographic", "-no-reboot", "-snapshot", "-enable-fips", "-full-screen",
    "-no-fd-bootchk", "-nodefconfig", "-daemonize", "-no-kvm", "-s", "-mem-prealloc",
    "-old-param", "-only-migratable", "-win2k-hack", "-no-quit", "-preconfig"};

}  // namespace

bool is_qemu_flag(std::string_view option) {
  return std::find(std::begin(kFlagOptions), std::end(kFlagOptions), option) != std::end(kFlagOptions);
}

Result<std::vector<QemuOption>> parse_qemu_options(const std::vector<std::string>& words) {
  std::vector<QemuOption> options;
  for (size_t i = 0; i < words.size(); ++i) {
    const std::string& w = words[i];
    if (w.size() < 2 || w[0] != '-') return Error::invalid("unexpected non-option word " + quote_for_message(w));
    QemuOption opt{w, "", false};
    if (!is_qemu_flag(w)) {
      if (i + 1 >= words.size()) return Error::invalid("option " + w + " lacks its value");
      opt.value = words[++i];
      opt.has_value = true;
    }
    options.push_back(std::move(opt));
  }
  return options;
}

std::vector<std::string> split_keyval(std::string_view value) {
  std::vector<std::string> parts(1);
  for (size_t i = 0; i < value.size(); ++i) {
    if (value[i] != ',') {
      parts.back() += value[i];
    } else if (i + 1 < value.size() && value[i + 1] == ',') {
      parts.back() += ',';
      ++i;
    } else {
      parts.emplace_back();
    }
  }
  if (parts.size() == 1 && parts[0].empty()) parts.clear();
  return parts;
}

std::string join_keyval(const std::vector<std::string>& parts) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (i) out += ',';
    for (char c : parts[i]) {
      out += c;
      if (c == ',') out += ',';
    }
  }
  return out;
}

std::string_view keyval_key(std::string_view part) { return part.substr(0, part.find('=')); }

std::string_view keyval_value(std::string_view part) {
  size_t eq = part.find('=');
  return eq == std::string_view::npos ? std::string_view{} : part.substr(eq + 1);
}

}  // namespace vl
