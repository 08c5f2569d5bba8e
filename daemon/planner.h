// Domain XML -> launch plan: conversion (cached), rewrite.
#pragma once

#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <set>
#include <string>

#include "common/config.h"
#include "common/domain.h"
#include "common/plan.h"
#include "daemon/asio.h"
#include "daemon/plan_cache.h"

namespace vl {

/// Where the time of a plan went, for benchmarks and logs.
struct PlanStats {
  bool cache_hit = false;
  std::chrono::microseconds convert{0};
};

/// Computes plans for the domains of one host configuration. libvirt runs only in the
/// vmlaunch-convert processes it starts (see converter.h).
class Planner {
 public:
  explicit Planner(const HostConfig& config);

  /// The plan for `domain`, parsed from `xml`. Fails clearly if the emulator is not allowed,
  /// libvirt cannot convert the XML, or the result cannot be made exec-ready.
  Result<Plan> plan(const Domain& domain, std::string_view xml, PlanStats* stats = nullptr);

  /// The same for an event loop: a cache miss runs the converter without blocking `io`, and
  /// `done` runs on it. At most one conversion per embed root is in flight; more wait. A plan
  /// whose conversion is already under way (a pre-plan, another start) waits for that one.
  void plan_async(boost::asio::io_context& io, const Domain& domain, std::string xml,
                  std::function<void(Result<Plan>)> done);

  /// Computes and caches `domain`'s conversion ahead of its start, with the converter at low
  /// CPU priority, and checks the result as a plan would; reserves nothing. `done` runs on `io`.
  void prepare_async(boost::asio::io_context& io, const Domain& domain, std::string xml,
                     std::function<void(Result<void>)> done);

  /// How many libvirt conversions this planner has started for `vm` (for `status`: a start
  /// that found its plan ready runs none).
  unsigned conversions(const std::string& vm) const;

 private:
  Result<std::string> cache_key_for(const Domain& domain, std::string_view xml);
  /// What libvirt converts (the XML after the UEFI rewrite) and the cache key of its result.
  struct Input {
    std::string xml;
    std::string key;
  };
  Result<Input> input_for(const Domain& domain, std::string xml);
  Result<Plan> plan_from_entry(const Domain& domain, const std::string& entry, const std::string& key);
  Result<std::string> native_command_line(const Domain& domain, std::string_view xml,
                                          const std::string& key, PlanStats* stats);
  /// Stores a conversion made in embed root `root`; returns the cache entry.
  Result<std::string> store_entry(const std::string& key, const std::string& root, const std::string& native);
  using EntryDone = std::function<void(Result<std::string>)>;
  /// The cache entry for `key`: from the cache, from the conversion of `key` under way, or from
  /// a new one. `xml` is what libvirt gets (after the UEFI rewrite).
  void entry_async(boost::asio::io_context& io, const Domain& domain, std::string xml, std::string key,
                   bool background, EntryDone done);
  /// Hands a finished conversion to everything that waited for it, then starts what waited
  /// for a free root.
  void finish_conversion(const std::string& key, const Result<std::string>& entry);

  const HostConfig& config_;
  PlanCache cache_;
  std::string libvirt_id_;
  std::deque<std::function<void()>> waiting_;
  /// Conversions under way, by cache key, with everything waiting for their entry.
  std::map<std::string, std::vector<EntryDone>> converting_;
  std::map<std::string, unsigned> conversions_;
};


/// A clear error if /dev/net/tun cannot be opened, which libvirt needs to describe taps.
Result<void> check_tun_access();

/// A clear error if /dev/kvm cannot be opened read-write. libvirt's capabilities probe runs
/// QEMU with KVM only when its user can open it, and without that it refuses every domain of
/// type 'kvm' ("does not support virt type 'kvm'"). The daemon's user gets that access the way
/// Debian gives it to the VMs' uids: membership in the group that owns /dev/kvm (kvm). It
/// grants nothing the daemon does not already hold through the monitors of the VMs it runs.
Result<void> check_kvm_access();

/// What a conversion of `domain` needs from the host: /dev/net/tun for interfaces, /dev/kvm for
/// type 'kvm'.
Result<void> check_conversion_access(const Domain& domain);

}  // namespace vl
