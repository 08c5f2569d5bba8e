#include "daemon/planner.h"

#include "daemon/uefi_xml.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "common/argv_policy.h"
#include "common/sys.h"
#include "common/zone_network.h"
#include "daemon/converter.h"
#include "daemon/qemu_argv.h"
#include "daemon/shell_words.h"

namespace vl {

namespace {

constexpr auto kConvertTimeout = std::chrono::seconds(120);
constexpr int kEmbedRoots = 4;

// One embed root per concurrent conversion (libvirt holds a pid-file lock in it). Roots are
// kept between runs: a fresh one costs a ~2 s QEMU capabilities probe.
struct LockedRoot {
  std::string path;
  UniqueFd lock;
};

Result<LockedRoot> lock_embed_root(const std::string& cache_dir, bool wait = true) {
  std::string base = cache_dir + "/embed";
  if (::mkdir(cache_dir.c_str(), 0700) < 0 && errno != EEXIST)
    return Error::from_errno("create cache directory '" + cache_dir + "'");
  if (::mkdir(base.c_str(), 0700) < 0 && errno != EEXIST)
    return Error::from_errno("create '" + base + "'");
  for (int pass = 0; pass < 2; ++pass) {
    for (int i = 0; i < kEmbedRoots; ++i) {
      std::string lock_path = base + "/" + std::to_string(i) + ".lock";
      UniqueFd fd = VL_TRY(sys::check_fd(
          ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600), "open '" + lock_path + "'"));
      // First pass: any free root; second pass: wait for root 0.
      int how = pass == 0 ? LOCK_EX | LOCK_NB : LOCK_EX;
      if (sys::retry_eintr([&] { return ::flock(fd.get(), how); }) == 0)
        return LockedRoot{base + "/" + std::to_string(i), std::move(fd)};
      if (errno != EWOULDBLOCK) return Error::from_errno("lock '" + lock_path + "'");
      if (pass == 1) break;
    }
    if (!wait) return Error::make(ErrorCode::kConflict, "all conversion roots are busy");
  }
  return Error::make(ErrorCode::kInternal, "no conversion root could be locked");
}

}  // namespace

Result<void> check_tun_access() {
  int fd = ::open("/dev/net/tun", O_RDWR | O_CLOEXEC);
  if (fd >= 0) {
    ::close(fd);
    return {};
  }
  return Error::from_errno("cannot open /dev/net/tun, which libvirt needs to describe "
                           "<interface> devices; it must be mode 0666 (the Debian default set "
                           "by udev: chmod 0666 /dev/net/tun)");
}

Result<void> check_kvm_access() {
  int fd = ::open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (fd >= 0) {
    ::close(fd);
    return {};
  }
  return Error::from_errno("cannot open /dev/kvm, which libvirt needs to describe a domain of type "
                           "'kvm'; the daemon's user must be in the group that owns it (Debian: "
                           "root:kvm 0660, so add the daemon user to group 'kvm')");
}

Result<void> check_conversion_access(const Domain& domain) {
  if (!domain.nics.empty()) VL_CHECK(check_tun_access());
  if (domain.type == "kvm") VL_CHECK(check_kvm_access());
  return {};
}

Planner::Planner(const HostConfig& config)
    : config_(config), cache_(config.cache_dir + "/plans") {}

Result<std::string> Planner::native_command_line(const Domain& domain, std::string_view xml,
                                                 const std::string& key, PlanStats* stats) {
  std::optional<std::string> cached = VL_TRY(cache_.find(key));
  if (cached) {
    if (stats) stats->cache_hit = true;
    return std::move(*cached);
  }
  VL_CHECK(check_conversion_access(domain));
  LockedRoot root = VL_TRY(lock_embed_root(config_.cache_dir));
  ++conversions_[domain.name.str()];
  auto start = std::chrono::steady_clock::now();
  std::string native = VL_TRY(convert_to_native(std::string(xml), root.path, kConvertTimeout, zone_bridges(config_)));
  if (stats)
    stats->convert = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - start);
  return store_entry(key, root.path, native);
}

Result<std::string> Planner::store_entry(const std::string& key, const std::string& root, const std::string& native) {
  // The cached text still names its embed root; remember which, so the rewrite can check.
  std::string entry = root + "\n" + native;
  VL_CHECK(cache_.store(key, entry));
  return entry;
}

Result<std::string> Planner::cache_key_for(const Domain& domain, std::string_view xml) {
  if (!config_.emulator_allowed(domain.emulator))
    return Error::make(ErrorCode::kDenied, "emulator '" + domain.emulator +
                                               "' is not in [emulators] allowed of " + config_.source);
  if (libvirt_id_.empty()) libvirt_id_ = VL_TRY(libvirt_identity());  // once per process
  return plan_cache_key(xml, domain.emulator, libvirt_id_);
}

Result<Plan> Planner::plan(const Domain& domain, std::string_view original, PlanStats* stats) {
  Input input = VL_TRY(input_for(domain, std::string(original)));
  std::string entry = VL_TRY(native_command_line(domain, input.xml, input.key, stats));
  return plan_from_entry(domain, entry, input.key);
}

Result<Planner::Input> Planner::input_for(const Domain& domain, std::string xml) {
  if (domain.uefi) xml = VL_TRY(uefi_xml_for_libvirt(xml, *domain.uefi));
  std::string key = VL_TRY(cache_key_for(domain, xml));
  return Input{std::move(xml), std::move(key)};
}

void Planner::plan_async(boost::asio::io_context& io, const Domain& domain, std::string xml,
                         std::function<void(Result<Plan>)> done) {
  auto input = input_for(domain, std::move(xml));
  if (!input) return done(input.error());
  entry_async(io, domain, std::move(input->xml), input->key, /*background=*/false,
              [this, domain, key = input->key, done = std::move(done)](Result<std::string> entry) {
                if (!entry) return done(entry.error());
                done(plan_from_entry(domain, *entry, key));
              });
}

void Planner::prepare_async(boost::asio::io_context& io, const Domain& domain, std::string xml,
                            std::function<void(Result<void>)> done) {
  auto input = input_for(domain, std::move(xml));
  if (!input) return done(input.error());
  entry_async(io, domain, std::move(input->xml), input->key, /*background=*/true,
              [this, domain, key = input->key, done = std::move(done)](Result<std::string> entry) {
                if (!entry) return done(entry.error());
                auto plan = plan_from_entry(domain, *entry, key);
                if (!plan) return done(plan.error());
                done({});
              });
}

unsigned Planner::conversions(const std::string& vm) const {
  auto it = conversions_.find(vm);
  return it == conversions_.end() ? 0 : it->second;
}

void Planner::entry_async(boost::asio::io_context& io, const Domain& domain, std::string xml, std::string key,
                          bool background, EntryDone done) {
  auto cached = cache_.find(key);
  if (!cached) return done(cached.error());
  if (*cached) return done(std::move(**cached));
  // The same XML and emulator already converting (a pre-plan, a concurrent start): one
  // conversion serves both, and the second start does not pay another.
  if (auto running = converting_.find(key); running != converting_.end()) {
    running->second.push_back(std::move(done));
    return;
  }
  if (auto access = check_conversion_access(domain); !access) return done(access.error());
  auto root = lock_embed_root(config_.cache_dir, /*wait=*/false);
  if (!root) {
    if (root.error().code != ErrorCode::kConflict) return done(root.error());
    // Every root is converting: go on when one is free (see finish_conversion).
    waiting_.push_back([this, &io, domain, xml = std::move(xml), key = std::move(key), background,
                        done = std::move(done)]() mutable {
      entry_async(io, domain, std::move(xml), std::move(key), background, std::move(done));
    });
    return;
  }
  converting_[key].push_back(std::move(done));
  ++conversions_[domain.name.str()];
  auto locked = std::make_shared<LockedRoot>(std::move(root).value());
  convert_to_native_async(io, xml, locked->path, kConvertTimeout,
                          [this, locked, key](Result<std::string> native) {
                            Result<std::string> entry = native ? store_entry(key, locked->path, *native) : native.error();
                            locked->lock.reset();
                            finish_conversion(key, entry);
                          },
                          zone_bridges(config_), background ? ConvertPriority::kBackground : ConvertPriority::kNormal);
}

void Planner::finish_conversion(const std::string& key, const Result<std::string>& entry) {
  auto waiters = std::move(converting_[key]);
  converting_.erase(key);
  for (auto& waiter : waiters) waiter(entry);
  if (!waiting_.empty()) {
    auto next = std::move(waiting_.front());
    waiting_.pop_front();
    next();
  }
}

Result<Plan> Planner::plan_from_entry(const Domain& domain, const std::string& entry, const std::string& key) {
  size_t newline = entry.find('\n');
  if (newline == std::string::npos) return Error::make(ErrorCode::kInternal, "corrupt plan cache entry " + key);
  std::string root = entry.substr(0, newline);
  std::vector<std::string> words = VL_TRY(split_shell_words(std::string_view(entry).substr(newline + 1)));
  Plan plan = VL_TRY(rewrite_native_argv(words, domain, root));
  // The helper refuses what this refuses; saying so now puts the reason in front of the
  // operator at plan time. It also covers cache entries, which this uid can write.
  VL_CHECK(check_plan_argv(plan, domain));
  plan.cache_key = key;
  // And the structural caps the helper applies to any plan it receives (1024 words, 256 KiB):
  // a domain that needs more is refused now, in the helper's words, not at every start.
  VL_CHECK(plan_from_json(plan_to_json(plan, false)));
  return plan;
}

}  // namespace vl
