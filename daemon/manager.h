// The daemon's model: every defined VM, its supervisor, and the operations on them.
#pragma once

#include "daemon/asio.h"
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/config.h"
#include "common/domain.h"
#include "daemon/broker_client.h"
#include "daemon/domain_watch.h"
#include "daemon/emulator_watch.h"
#include "daemon/link_watch.h"
#include "daemon/planner.h"
#include "daemon/preplanner.h"
#include "daemon/supervisor.h"

namespace vl {

/// Domain XML files, parsed once and re-parsed only when their mtime or size changes, so
/// that listing a thousand VMs costs a directory scan, not a thousand parses.
class DomainCatalog final {
 public:
  explicit DomainCatalog(const HostConfig& config) : config_(config) {}
  /// Names of all *.xml files with a valid VM name, sorted.
  std::vector<VmName> names();
  /// The parsed domain, or why it is not defined, refused (domain_file.h) or unparsable.
  Result<Domain> get(const VmName& vm);
  /// The raw XML of the last successful get().
  Result<std::string> xml(const VmName& vm);

 private:
  struct Entry {
    int64_t mtime_ns = -1;
    int64_t size = -1;
    std::string xml;
    std::optional<Domain> domain;
    Error error;
  };
  Result<const Entry*> refresh(const VmName& vm);
  HostConfig config_;
  std::map<std::string, Entry> entries_;
};

class Manager final {
 public:
  using Done = Supervisor::Done;

  Manager(boost::asio::io_context& io, const HostConfig& config);
  Manager(const Manager&) = delete;
  Manager& operator=(const Manager&) = delete;

  /// Re-adopts every VM that has runtime state (daemon start).
  void adopt_running();
  /// Starts watching the zone bridges of running VMs (daemon/link_watch.h).
  Result<void> watch_links();
  /// Starts following the domains directory (daemon/domain_watch.h).
  Result<void> watch_domains();
  /// Queues every defined VM for planning ahead of its start (daemon/preplanner.h).
  void preplan_all();
  /// Starts following the allowed emulators, planning again when one changes.
  Result<void> watch_emulators();

  std::vector<VmInfo> list();
  Result<VmInfo> status(const std::string& name);
  void start(const std::string& name, Done done);
  /// The same with the passphrase of the VM's encrypted disks, as the operator gave it: a
  /// sealed memfd that this process never reads. It waits for the launch's TakePassphrase
  /// (take_passphrase) and is closed when the start ends, whichever way. Refused for a VM
  /// without encrypted disks.
  void start_with_passphrase(const std::string& name, UniqueFd passphrase, Done done);
  /// The passphrase given with the start of `name` under way, handed over once; kNotFound if
  /// there is none (the launch then reads the VM's key file).
  Result<UniqueFd> take_passphrase(const std::string& name);
  void stop(const std::string& name, std::chrono::seconds timeout, bool force, Done done,
            StopMode mode = StopMode::kAuto);
  void restart(const std::string& name, std::chrono::seconds timeout, Done done);
  void kill(const std::string& name, int signal, Done done);
  /// A kvm-vm@NAME unit exec'd the emulator (its ExecStartPost says so): supervised from
  /// here, `done` once the guest runs. Whether vmctl or systemctl asked for the start.
  void launched(const std::string& name, Done done);
  /// A kvm-vm@NAME unit's launch failed with `message` (the helper says so before it exits).
  void launch_failed(const std::string& name, const std::string& message);
  /// The plan of a defined VM as JSON; a cache miss converts without blocking the loop.
  void launch_plan(const std::string& name, std::function<void(Result<std::string>)> done);

  /// `vmctl audit`: the findings (daemon/audit.h) for `names`, every defined VM if empty, and
  /// for the host, as JSON (findings_to_json). A name that is invalid or not defined is an
  /// error before root is asked anything. Root's facts come from one `inspect` per VM.
  void audit(const std::vector<std::string>& names, std::function<void(Result<std::string>)> done);

  std::function<void(const VmInfo&)> on_state_changed;

 private:
  Result<Supervisor*> supervisor(const std::string& name, bool must_be_defined);
  /// A stopped or failed VM whose pre-plan failed says why in its reason, unless it has one.
  void add_preplan_failure(VmInfo& info) const;
  /// Adds what the link watch knows about a running VM's network to `info`.
  void add_network(VmInfo& info) const;
  /// For a VM whose definition is gone: true (and its last state forgotten) if nothing of it
  /// runs, so that it is no longer listed; false while its emulator lives.
  bool forget_if_idle(Supervisor& s);
  /// The info of a VM whose definition is gone, saying so.
  VmInfo undefined_info(const Supervisor& s) const;
  /// A domain XML written, replaced or removed (DomainWatch).
  void domain_changed(const std::string& name, DomainWatch::Change change);

  boost::asio::io_context& io_;
  const HostConfig& config_;
  BrokerClient broker_;
  Planner planner_;
  DomainCatalog catalog_;
  Preplanner preplanner_;
  SupervisorContext context_;
  std::map<std::string, std::unique_ptr<Supervisor>> vms_;
  /// Passphrases given with starts under way, by VM, with the start they belong to.
  struct Passphrase {
    uint64_t start = 0;
    UniqueFd fd;
  };
  std::map<std::string, Passphrase> passphrases_;
  uint64_t passphrase_starts_ = 0;
  LinkWatch link_watch_;
  DomainWatch domain_watch_;
  EmulatorWatch emulator_watch_;
};

}  // namespace vl
