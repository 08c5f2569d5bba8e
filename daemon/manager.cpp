#include "daemon/manager.h"

#include <fcntl.h>

#include "daemon/event_log.h"

#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>

#include "common/audit_facts.h"
#include "common/domain_file.h"
#include "daemon/audit.h"
#include "common/zone_network.h"
#include "common/plan.h"
#include "common/sys.h"

namespace vl {

std::vector<VmName> DomainCatalog::names() {
  std::vector<VmName> out;
  DIR* d = ::opendir(config_.domains_dir.c_str());
  if (!d) return out;
  while (dirent* e = ::readdir(d)) {
    std::string file = e->d_name;
    if (file.size() < 5 || file.compare(file.size() - 4, 4, ".xml") != 0) continue;
    if (auto vm = VmName::parse(file.substr(0, file.size() - 4))) out.push_back(*vm);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

Result<const DomainCatalog::Entry*> DomainCatalog::refresh(const VmName& vm) {
  // The same checks as the helper's (domain_file.h), on every refresh: a chmod changes no
  // mtime, and a definition the helper would refuse must not look startable here.
  auto file = open_domain_definition(config_, vm);
  if (!file) {
    entries_.erase(vm.str());
    return std::move(file).error();
  }
  const struct stat& st = file->st;
  Entry& entry = entries_[vm.str()];
  int64_t mtime = int64_t{st.st_mtim.tv_sec} * 1000000000 + st.st_mtim.tv_nsec;
  if (entry.mtime_ns == mtime && entry.size == st.st_size) return &entry;
  entry = Entry{mtime, st.st_size, "", std::nullopt, Error{}};
  auto xml = read_domain_file(*file);
  if (!xml) {
    entry.error = xml.error();
    return &entry;
  }
  entry.xml = *xml;
  auto domain = parse_domain(entry.xml, file->path);
  if (domain) {
    if (auto resolved = resolve_networks(*domain, config_); !resolved) domain = resolved.error().wrap(file->path);
    if (domain) resolve_nvram(*domain, config_);
    if (domain) resolve_vnc(*domain, config_);
  }
  if (domain) entry.domain = std::move(domain).value();
  else entry.error = domain.error();
  return &entry;
}

Result<Domain> DomainCatalog::get(const VmName& vm) {
  const Entry* entry = VL_TRY(refresh(vm));
  if (!entry->domain) return entry->error;
  return *entry->domain;
}

Result<std::string> DomainCatalog::xml(const VmName& vm) {
  const Entry* entry = VL_TRY(refresh(vm));
  if (!entry->domain) return entry->error;
  return entry->xml;
}

Manager::Manager(boost::asio::io_context& io, const HostConfig& config)
    : io_(io),
      config_(config),
      broker_(io, config.helper_socket()),
      planner_(config),
      catalog_(config),
      preplanner_(io, planner_,
                  [this](const std::string& vm) -> Result<std::pair<Domain, std::string>> {
                    VmName name = VL_TRY(VmName::parse(vm));
                    Domain domain = VL_TRY(catalog_.get(name));
                    std::string xml = VL_TRY(catalog_.xml(name));
                    return std::pair{std::move(domain), std::move(xml)};
                  }),
      context_{io, config, broker_, nullptr, nullptr},
      link_watch_(io, config, broker_, [this] {
        std::vector<LinkWatch::Vm> running;
        for (const auto& [name, s] : vms_)
          if (s->info().status == VmStatus::kRunning) running.push_back({name, s->info().zone, s->info().taps});
        return running;
      }),
      domain_watch_(io, config.domains_dir, [this](const std::string& name, DomainWatch::Change change) {
        domain_changed(name, change);
      }),
      // A changed emulator changes the cache key of every domain using it; the others are
      // cache hits, cheap to queue.
      emulator_watch_(io, config.emulators, [this] { preplan_all(); }) {
  context_.vnc_password = [this](const VmName& vm) {
    auto domain = catalog_.get(vm);
    return domain && domain->vnc ? domain->vnc->password : std::string();
  };
  context_.disk_targets = [this](const VmName& vm) {
    std::vector<std::string> targets;
    if (auto domain = catalog_.get(vm))
      for (const Disk& d : domain->disks) targets.push_back(d.target);
    return targets;
  };
  context_.state_changed = [this](const VmInfo& info) {
    link_watch_.poke();  // a VM that runs now is checked; one that stopped is forgotten
    if (on_state_changed) on_state_changed(info);
  };
}

Result<Supervisor*> Manager::supervisor(const std::string& name, bool must_be_defined) {
  VmName vm = VL_TRY(VmName::parse(name));
  if (must_be_defined) {
    auto domain = catalog_.get(vm);
    if (!domain) return domain.error();
  }
  auto& slot = vms_[vm.str()];
  if (!slot) slot = std::make_unique<Supervisor>(context_, vm);
  return slot.get();
}

void Manager::adopt_running() {
  std::string dir = config_.runtime_dir + "/vms";
  DIR* d = ::opendir(dir.c_str());
  if (!d) return;
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d))
    if (e->d_name[0] != '.') names.emplace_back(e->d_name);
  ::closedir(d);
  for (const std::string& name : names) {
    auto vm = VmName::parse(name);
    if (!vm) continue;
    std::string state_path = dir + "/" + name + "/state.json";
    Supervisor* s = supervisor(name, false).value();
    if (auto state = read_vm_state_file(state_path)) {
      s->adopt(*state);
      continue;
    }
    // No state yet: a launch that failed half way, or one still under way (vmlaunchd died
    // during its start).
    s->adopt_unfinished_launch(state_path);
  }
}

Result<void> Manager::watch_links() { return link_watch_.start(); }

Result<void> Manager::watch_domains() { return domain_watch_.start(); }

Result<void> Manager::watch_emulators() { return emulator_watch_.start(); }

void Manager::preplan_all() {
  for (const VmName& vm : catalog_.names()) preplanner_.enqueue(vm.str());
}

void Manager::domain_changed(const std::string& name, DomainWatch::Change change) {
  if (change == DomainWatch::Change::kRescan) {
    // Events were lost: the catalog's next read is right anyway; forget what is gone.
    std::vector<VmName> defined = catalog_.names();
    for (auto& [vm, s] : vms_)
      if (!std::binary_search(defined.begin(), defined.end(), VmName::parse(vm).value())) forget_if_idle(*s);
    preplan_all();  // the cache makes this cheap for every VM whose XML did not change
    return;
  }
  auto vm = VmName::parse(name);
  if (!vm) return;
  auto it = vms_.find(name);
  if (change == DomainWatch::Change::kRemoved) {
    if (catalog_.get(*vm).ok()) return;  // replaced meanwhile (a rename over it)
    preplanner_.forget(name);
    if (it == vms_.end() || forget_if_idle(*it->second)) {
      log_vm_event(name, LogLevel::kInfo, "definition removed");
      VmInfo gone;
      gone.name = name;
      gone.reason = "not defined";
      if (on_state_changed) on_state_changed(gone);
      return;
    }
    VmInfo info = undefined_info(*it->second);
    log_vm_event(name, LogLevel::kWarning, "definition removed; it keeps running until stopped");
    if (on_state_changed) on_state_changed(info);
    return;
  }
  auto domain = catalog_.get(*vm);
  bool running = it != vms_.end() && !it->second->idle();
  if (!domain) {
    log_vm_event(name, LogLevel::kWarning, "definition not usable: " + domain.error().message());
    preplanner_.forget(name);  // the definition's own error is what `list` shows
  } else {
    log_vm_event(name, LogLevel::kInfo, running ? "definition written; it applies at the next start" : "definition written");
    preplanner_.enqueue(name);
  }
  if (on_state_changed) {
    VmInfo info = it != vms_.end() ? it->second->info() : VmInfo{};
    info.name = name;
    if (!domain && info.reason.empty()) info.reason = domain.error().message();
    on_state_changed(info);
  }
}

// A running VM whose taps lost their bridge stays `running` (the guest runs); the reason says
// what is wrong with its network, in `list` as in `status`.
void Manager::add_network(VmInfo& info) const {
  if (info.status != VmStatus::kRunning) return;
  info.network = link_watch_.network(info.name);
  if (info.reason.empty() && info.network.rfind("detached", 0) == 0) info.reason = "network " + info.network;
}

std::vector<VmInfo> Manager::list() {
  std::vector<VmInfo> out;
  std::vector<VmName> defined = catalog_.names();
  for (const VmName& vm : defined) {
    auto it = vms_.find(vm.str());
    VmInfo info;
    if (it != vms_.end()) info = it->second->info();
    else info.name = vm.str();
    auto domain = catalog_.get(vm);
    if (!domain) {
      if (info.reason.empty()) info.reason = domain.error().message();
    } else {
      add_preplan_failure(info);
      if (info.zone.empty()) info.zone = domain->meta.zone;
      info.autostart = domain->meta.autostart;
      info.start_order = domain->meta.start_order;
    }
    add_network(info);
    out.push_back(std::move(info));
  }
  // VMs whose definition was removed are listed while their emulator lives (or its cleanup is
  // pending): they keep running until stopped, and say so. The others are forgotten.
  for (const auto& [name, s] : vms_)
    if (!std::binary_search(defined.begin(), defined.end(), VmName::parse(name).value()) && !forget_if_idle(*s)) {
      out.push_back(undefined_info(*s));
      add_network(out.back());
    }
  return out;
}

bool Manager::forget_if_idle(Supervisor& s) {
  if (!s.idle()) return false;
  s.forget();
  return true;
}

VmInfo Manager::undefined_info(const Supervisor& s) const {
  VmInfo info = s.info();
  std::string note = "its definition " + info.name + ".xml was removed; it keeps running until stopped";
  info.reason = info.reason.empty() ? note : info.reason + "; " + note;
  return info;
}

Result<VmInfo> Manager::status(const std::string& name) {
  VmName vm = VL_TRY(VmName::parse(name));
  auto domain = catalog_.get(vm);
  if (auto it = vms_.find(vm.str()); it != vms_.end() && (domain || !forget_if_idle(*it->second))) {
    VmInfo info = domain ? it->second->info() : undefined_info(*it->second);
    add_network(info);
    if (domain) add_preplan_failure(info);
    info.plan = preplanner_.state(info.name);
    info.conversions = planner_.conversions(info.name);
    return info;
  }
  if (!domain) return domain.error();
  VmInfo info;
  info.name = vm.str();
  info.zone = domain->meta.zone;
  add_preplan_failure(info);
  info.plan = preplanner_.state(info.name);
  info.conversions = planner_.conversions(info.name);
  return info;
}

void Manager::add_preplan_failure(VmInfo& info) const {
  // Only where nothing more pressing is said: a running VM's reason is about its run.
  if (info.status != VmStatus::kStopped && info.status != VmStatus::kFailed) return;
  if (std::string why = preplanner_.failure(info.name); !why.empty() && info.reason.empty())
    info.reason = "cannot be planned: " + why;
}

void Manager::start(const std::string& name, Done done) {
  auto s = supervisor(name, true);
  if (!s) return done(s.error());
  (*s)->start(std::move(done));
}

void Manager::start_with_passphrase(const std::string& name, UniqueFd passphrase, Done done) {
  auto vm = VmName::parse(name);
  if (!vm) return done(vm.error());
  auto domain = catalog_.get(*vm);
  if (!domain) return done(domain.error());
  if (!has_encrypted_disk(domain->disks))
    return done(Error::invalid("VM '" + name + "' has no encrypted disk (<encryption>): it takes no passphrase"));
  // A sealed memfd is what the helper accepts; saying so now spares a launch. F_GET_SEALS
  // reads nothing of its content.
  int seals = ::fcntl(passphrase.get(), F_GET_SEALS);
  if (seals < 0 || (seals & (F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK)) != (F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK))
    return done(Error::invalid("the passphrase for VM '" + name + "' must come as a sealed memfd"));
  uint64_t start = ++passphrase_starts_;
  passphrases_[name] = Passphrase{start, std::move(passphrase)};
  this->start(name, [this, name, start, done = std::move(done)](Result<void> r) {
    // Whichever way the start ended, its passphrase goes (unless a newer start gave another).
    if (auto it = passphrases_.find(name); it != passphrases_.end() && it->second.start == start) passphrases_.erase(it);
    done(std::move(r));
  });
}

Result<UniqueFd> Manager::take_passphrase(const std::string& name) {
  auto it = passphrases_.find(name);
  if (it == passphrases_.end() || !it->second.fd)
    return Error::make(ErrorCode::kNotFound, "no passphrase was given for the start of VM " + quote_for_message(name));
  return std::move(it->second.fd);
}

void Manager::stop(const std::string& name, std::chrono::seconds timeout, bool force, Done done, StopMode mode) {
  auto s = supervisor(name, false);
  if (!s) return done(s.error());
  (*s)->stop(timeout, force, std::move(done), mode);
}

void Manager::restart(const std::string& name, std::chrono::seconds timeout, Done done) {
  auto s = supervisor(name, true);
  if (!s) return done(s.error());
  (*s)->restart(timeout, std::move(done));
}

void Manager::kill(const std::string& name, int signal, Done done) {
  if (signal != SIGTERM && signal != SIGKILL && signal != SIGINT)
    return done(Error::invalid("signal " + std::to_string(signal) + " is not allowed (SIGTERM, SIGKILL or SIGINT)"));
  auto s = supervisor(name, false);
  if (!s) return done(s.error());
  (*s)->kill(signal, std::move(done));
}

void Manager::launched(const std::string& name, Done done) {
  auto s = supervisor(name, true);
  if (!s) return done(s.error());
  (*s)->launched(std::move(done));
}

void Manager::launch_failed(const std::string& name, const std::string& message) {
  auto s = supervisor(name, false);
  if (!s) return;
  (*s)->launch_failed(Error::make(ErrorCode::kSystem, message));
}

void Manager::launch_plan(const std::string& name, std::function<void(Result<std::string>)> done) {
  auto vm = VmName::parse(name);
  if (!vm) return done(vm.error());
  auto domain = catalog_.get(*vm);
  if (!domain) return done(domain.error());
  auto xml = catalog_.xml(*vm);
  if (!xml) return done(xml.error());
  planner_.plan_async(io_, *domain, std::move(xml).value(), [done = std::move(done)](Result<Plan> plan) {
    if (!plan) return done(plan.error());
    done(plan_to_json(*plan, false));
  });
}

}  // namespace vl

namespace vl {

namespace {

FileFacts file_facts(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return {};
  return {true, st.st_uid, st.st_gid, st.st_mode};
}

}  // namespace

void Manager::audit(const std::vector<std::string>& names, std::function<void(Result<std::string>)> done) {
  // Every name is checked before root is asked anything.
  std::vector<std::pair<VmName, Domain>> vms;
  std::vector<VmName> wanted;
  for (const std::string& n : names) {
    auto vm = VmName::parse(n);
    if (!vm) return done(vm.error());
    wanted.push_back(*vm);
  }
  if (names.empty()) wanted = catalog_.names();
  for (const VmName& vm : wanted) {
    auto domain = catalog_.get(vm);
    if (!domain) return done(domain.error());
    vms.emplace_back(vm, std::move(domain).value());
  }
  struct Run {
    std::vector<std::pair<VmName, Domain>> vms;
    std::vector<std::optional<AuditFacts>> facts;
    size_t pending = 0;
    std::optional<Error> error;
    std::function<void(Result<std::string>)> done;
  };
  auto run = std::make_shared<Run>();
  run->vms = std::move(vms);
  run->facts.resize(run->vms.size());
  run->pending = run->vms.size();
  run->done = std::move(done);
  auto finish = [this, run] {
    if (run->error) return run->done(*run->error);
    std::vector<Finding> findings;
    std::optional<HostFacts> host;
    for (size_t i = 0; i < run->vms.size(); ++i) {
      auto more = audit_vm(config_, run->vms[i].second, *run->facts[i]);
      findings.insert(findings.end(), more.begin(), more.end());
      host = run->facts[i]->host;
    }
    LocalFacts local;
    local.daemon_uid = ::geteuid();
    local.control_socket = file_facts(config_.control_socket());
    local.runtime_dir = file_facts(config_.runtime_dir);
    if (!config_.tls.listen.empty()) local.tls_key = file_facts(config_.tls.key);
    auto more = audit_host(config_, host, local);
    findings.insert(findings.end(), more.begin(), more.end());
    run->done(findings_to_json(findings));
  };
  if (run->vms.empty()) return finish();
  for (size_t i = 0; i < run->vms.size(); ++i) {
    broker_.call_for_reply({BrokerOp::kInspect, run->vms[i].first, 0}, [run, i, finish](Result<BrokerReply> reply) {
      if (!reply && !run->error) run->error = reply.error().wrap("inspect VM '" + run->vms[i].first.str() + "'");
      if (reply) {
        auto facts = audit_facts_from_json(reply->facts);
        if (facts) run->facts[i] = std::move(facts).value();
        else if (!run->error) run->error = facts.error();
      }
      if (--run->pending == 0) finish();
    });
  }
}

}  // namespace vl
