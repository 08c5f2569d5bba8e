// QEMU command lines as structure: option parsing and keyval escapes (common/qemu_options.h),
// the daemon's rewrite of libvirt's native argv (daemon/qemu_argv.h) and root's allowlist
// (common/argv_policy.h), all against one fixed domain.
//
// Input: the argv words separated by NUL bytes (a word of an execve argv cannot contain one),
// starting as libvirt's native output does: optional NAME=VALUE words, then the emulator.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/argv_policy.h"
#include "common/plan.h"
#include "common/qemu_options.h"
#include "daemon/qemu_argv.h"
#include "fuzz/fuzz_support.h"

namespace {

constexpr char kRoot[] = "/var/cache/vmlaunch/embed/0";
constexpr char kEmulator[] = "/usr/bin/qemu-system-x86_64";

std::vector<std::string> split_words(std::string_view text) {
  std::vector<std::string> words;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find('\0', start);
    if (end == std::string_view::npos) end = text.size();
    words.emplace_back(text.substr(start, end - start));
    start = end + 1;
  }
  return words;
}

// Keyval escaping is its own inverse once a value went through it.
void check_keyval(const std::string& value) {
  auto parts = vl::split_keyval(value);
  FUZZ_CHECK(vl::split_keyval(vl::join_keyval(parts)) == parts);
}

// The policy on the words as a whole argv, the way the helper receives a plan: it may refuse,
// but never crash.
void check_as_plan(const std::vector<std::string>& words) {
  vl::Plan plan;
  plan.vm = "web1";
  plan.emulator = kEmulator;
  plan.argv = {kEmulator};
  plan.argv.insert(plan.argv.end(), words.begin(), words.end());
  plan.fds = {{vl::FdSlot::Kind::kMonitor, 3, -1}, {vl::FdSlot::Kind::kTap, 4, 0}};
  plan.vnc = vl::VncSetup{vl::fuzz::sample_domain().vnc->socket, true};
  plan.serial_ptys = 1;
  (void)vl::check_plan_argv(plan, vl::fuzz::sample_domain());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 64 * 1024) return 0;  // a plan is capped far below; longer inputs only slow the run
  std::vector<std::string> words = split_words(vl::fuzz::as_text(data, size));

  if (auto options = vl::parse_qemu_options(words)) {
    for (const auto& o : *options) {
      FUZZ_CHECK(o.name.size() >= 2 && o.name[0] == '-');
      FUZZ_CHECK(o.has_value != vl::is_qemu_flag(o.name));
      if (o.has_value) check_keyval(o.value);
    }
  }
  check_as_plan(words);

  auto plan = vl::rewrite_native_argv(words, vl::fuzz::sample_domain(), kRoot);
  if (plan) {
    // The rewrite's promises: no word mentions the conversion root, and the plan the daemon
    // sends is exactly the plan the helper reads back.
    for (const auto& w : plan->argv) FUZZ_CHECK(w.find(kRoot) == std::string::npos);
    auto back = vl::plan_from_json(vl::plan_to_json(*plan, false));
    FUZZ_CHECK(back.ok());
    FUZZ_CHECK(*back == *plan);
    (void)vl::check_plan_argv(*plan, vl::fuzz::sample_domain());
  }
  return 0;
}
