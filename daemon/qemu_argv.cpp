#include "daemon/qemu_argv.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <map>

#include "common/vm_name.h"

namespace vl {

namespace {

using Json = nlohmann::ordered_json;

bool is_env_assignment(std::string_view w) {
  size_t eq = w.find('=');
  if (eq == 0 || eq == std::string_view::npos) return false;
  if (!(std::isalpha(static_cast<unsigned char>(w[0])) || w[0] == '_')) return false;
  return std::all_of(w.begin(), w.begin() + static_cast<ptrdiff_t>(eq),
                     [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; });
}

std::string keyval_get(const std::vector<std::string>& parts, std::string_view key) {
  for (const auto& p : parts)
    if (p.size() > key.size() && p.compare(0, key.size(), key) == 0 && p[key.size()] == '=')
      return p.substr(key.size() + 1);
  return {};
}

// Strict UTF-8: no overlong forms, surrogates or code points past U+10FFFF. The plan travels
// as JSON, which carries nothing else (nlohmann's dump aborts on it with exceptions off).
bool is_utf8(std::string_view s) {
  static constexpr uint32_t kMinOfLength[] = {0, 0x80, 0x800, 0x10000};
  for (size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t more;
    uint32_t cp;
    if ((c & 0xe0) == 0xc0) more = 1, cp = c & 0x1f;
    else if ((c & 0xf0) == 0xe0) more = 2, cp = c & 0x0f;
    else if ((c & 0xf8) == 0xf0) more = 3, cp = c & 0x07;
    else return false;
    if (s.size() - i <= more) return false;
    for (size_t k = 1; k <= more; ++k) {
      auto d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3f);
    }
    if (cp < kMinOfLength[more] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += more + 1;
  }
  return true;
}

// A string member of a JSON option value, "" if absent. nlohmann's typed reads abort the
// process on a type mismatch when exceptions are off, so another type is an error.
Result<std::string> string_member(const Json& j, const char* key, std::string_view option) {
  auto it = j.find(key);
  if (it == j.end()) return std::string();
  if (!it->is_string()) return Error::invalid(std::string(option) + ": " + quote_for_message(key) + " must be a string");
  return it->get<std::string>();
}

class Rewriter {
 public:
  Rewriter(const Domain& domain, const std::string& root) : domain_(domain), root_(root) {}

  Result<Plan> run(const std::vector<std::string>& words);

 private:
  Result<void> rewrite(QemuOption& opt, bool& keep);
  Result<void> rewrite_object(QemuOption& opt, bool& keep);
  Result<void> rewrite_chardev(QemuOption& opt);
  Result<void> rewrite_netdev(QemuOption& opt);
  Result<void> rewrite_blockdev(QemuOption& opt);
  Result<void> add_encryption(Json& bd, size_t disk);
  Result<void> rewrite_vnc(QemuOption& opt);
  Result<void> rewrite_device(QemuOption& opt);
  Result<void> apply_nic_settings(const Nic& nic, Json& dev, std::string_view id);
  Result<void> check_pci_slots() const;

  std::string root_bus_ = "pci.0";        ///< the machine's root PCI bus ("pcie.0" on q35)
  std::vector<std::string> device_ids_;   ///< every -device id of the native command line

  const Domain& domain_;
  const std::string& root_;
  Plan plan_;
  /// Words that go just before the option being rewritten (an encrypted disk's secret).
  std::vector<std::string> before_;
  std::map<std::string, std::string> protocol_files_;  ///< protocol node name -> filename
  std::vector<bool> disks_encrypted_;                   ///< by disk index, once rewritten
  bool have_monitor_ = false;
  bool have_agent_ = false;
  bool have_serial_ = false;
};

Result<Plan> Rewriter::run(const std::vector<std::string>& words) {
  // Leading NAME=VALUE words are libvirt's copy of its caller's environment (LD_PRELOAD
  // included, if set). They are dropped; the helper builds a clean environment itself.
  size_t i = 0;
  while (i < words.size() && is_env_assignment(words[i])) ++i;
  if (i >= words.size()) return Error::invalid("native command line has no program");
  if (words[i] != domain_.emulator)
    return Error::invalid("native command line runs " + quote_for_message(words[i]) + ", the domain's emulator is '" +
                          domain_.emulator + "'");
  std::vector<QemuOption> options =
      VL_TRY(parse_qemu_options(std::vector<std::string>(words.begin() + static_cast<ptrdiff_t>(i) + 1, words.end())));
  // What the interfaces' PCI addresses refer to: the machine's root bus and the controllers.
  for (const QemuOption& opt : options) {
    if (opt.name == "-machine") {
      std::vector<std::string> parts = split_keyval(opt.value);
      std::string type = parts.empty() ? "" : parts[0].rfind("type=", 0) == 0 ? parts[0].substr(5) : parts[0];
      if (type.find("q35") != std::string::npos) root_bus_ = "pcie.0";
    }
    if (opt.name == "-device" && !opt.value.empty() && opt.value[0] == '{') {
      Json dev = Json::parse(opt.value, nullptr, false);
      if (dev.is_object() && dev.contains("id") && dev["id"].is_string()) device_ids_.push_back(dev["id"].get<std::string>());
    }
  }

  plan_.vm = domain_.name.str();
  plan_.emulator = domain_.emulator;
  plan_.argv.push_back(domain_.emulator);
  plan_.serial_ptys = domain_.serial_ptys;
  bool have_s = false, have_no_shutdown = false;
  for (QemuOption& opt : options) {
    bool keep = true;
    VL_CHECK(rewrite(opt, keep));
    for (std::string& w : before_) plan_.argv.push_back(std::move(w));
    before_.clear();
    if (!keep) continue;
    have_s |= opt.name == "-S";
    have_no_shutdown |= opt.name == "-no-shutdown";
    // The VNC server's TLS credentials object, where libvirt puts it: just before -vnc.
    if (opt.name == "-vnc" && !domain_.vnc->tls_dir.empty()) {
      plan_.argv.push_back("-object");
      plan_.argv.push_back(vnc_tls_object(domain_.vnc->tls_dir, domain_.vnc->tls_verify_client));
    }
    plan_.argv.push_back(opt.name);
    if (opt.has_value) plan_.argv.push_back(opt.value);
  }
  // The supervisor's protocol depends on these: -S (it sends `cont` after setup),
  // -no-shutdown (a guest poweroff becomes a SHUTDOWN event it answers with `quit`).
  if (!have_s) plan_.argv.push_back("-S");
  if (!have_no_shutdown) plan_.argv.push_back("-no-shutdown");
  // The serial chardev's logfile names this fd set; QEMU reads -add-fd before it creates any
  // chardev, wherever the option stands.
  if (have_serial_) {
    plan_.argv.push_back("-add-fd");
    plan_.argv.push_back(join_keyval({"fd=" + std::to_string(kSerialLogFd), "set=" + std::to_string(kSerialLogFd)}));
  }
  if (!have_monitor_) return Error::invalid("native command line has no QMP monitor chardev");
  for (size_t d = 0; d < domain_.disks.size(); ++d)
    if (domain_.disks[d].luks && (d >= disks_encrypted_.size() || !disks_encrypted_[d]))
      return Error::invalid("native command line does not open encrypted disk '" + domain_.disks[d].target + "'");

  size_t taps = std::count_if(plan_.fds.begin(), plan_.fds.end(),
                              [](const FdSlot& s) { return s.kind == FdSlot::Kind::kTap; });
  if (taps != domain_.nics.size())
    return Error::invalid("native command line has " + std::to_string(taps) + " tap netdevs for " +
                          std::to_string(domain_.nics.size()) + " interfaces");
  if (domain_.vnc && !plan_.vnc) return Error::invalid("native command line has no -vnc option");
  if (domain_.guest_agent != have_agent_) return Error::invalid("native command line has no guest agent chardev");
  VL_CHECK(check_pci_slots());

  for (const std::string& w : plan_.argv) {
    if (!is_utf8(w))
      return Error::unsupported("the command line has a word that is not valid UTF-8: " + quote_for_message(w));
    if (w.find(root_) != std::string::npos)
      return Error::unsupported("the command line still refers to the conversion root in '" + w +
                                "' (a device that needs libvirtd-managed files?)");
    if (w.find("\"keyid\"") != std::string::npos || w.find("keyid=") != std::string::npos)
      return Error::unsupported("the command line references a secret ('" + w +
                                "') that vmlaunch does not supply");
  }
  std::sort(plan_.fds.begin(), plan_.fds.end(),
            [](const FdSlot& a, const FdSlot& b) { return a.fd < b.fd; });
  return std::move(plan_);
}

Result<void> Rewriter::rewrite(QemuOption& opt, bool& keep) {
  // The pid is known from fork/exec, and the file would live in the conversion root. The
  // sandbox is the helper's to add: a plan that chose its own would be refused.
  if (opt.name == "-pidfile" || opt.name == "-sandbox") {
    keep = false;
    return {};
  }
  if (opt.name == "-blockdev") return rewrite_blockdev(opt);
  if (opt.name == "-object") return rewrite_object(opt, keep);
  if (opt.name == "-chardev") return rewrite_chardev(opt);
  if (opt.name == "-netdev") return rewrite_netdev(opt);
  if (opt.name == "-vnc") return rewrite_vnc(opt);
  if (opt.name == "-device") return rewrite_device(opt);
  return {};
}

// libvirt's domxml-to-native replaces each interface by one that has only its model and MAC
// (and its own PCI address). Everything else the XML says of the interface is put back here
// on the interface's -device, found by its netdev; common/domain.h refuses what cannot be.
Result<void> Rewriter::rewrite_device(QemuOption& opt) {
  if (opt.value.empty() || opt.value[0] != '{') return {};  // the helper's policy refuses it
  Json dev = Json::parse(opt.value, nullptr, false);
  if (dev.is_discarded() || !dev.is_object()) return Error::invalid("-device is not valid JSON: " + quote_for_message(opt.value));
  std::string netdev = VL_TRY(string_member(dev, "netdev", "-device"));
  if (netdev.empty()) return {};
  if (netdev.rfind("hostnet", 0) != 0 || netdev.size() != 8 || !std::isdigit(static_cast<unsigned char>(netdev[7])))
    return Error::invalid("unexpected netdev id " + quote_for_message(netdev));
  size_t nic = static_cast<size_t>(netdev[7] - '0');
  if (nic >= domain_.nics.size()) return Error::invalid("device of netdev " + netdev + " has no matching <interface>");
  VL_CHECK(apply_nic_settings(domain_.nics[nic], dev, netdev));
  opt.value = dev.dump();
  return {};
}

Result<void> Rewriter::apply_nic_settings(const Nic& nic, Json& dev, std::string_view netdev) {
  if (VL_TRY(string_member(dev, "mac", "-device")) != nic.mac.str())
    return Error::invalid("the device of netdev " + std::string(netdev) + " has not the MAC of its <interface>");
  if (nic.pci) {
    std::string bus = nic.pci->bus == 0 ? root_bus_ : "pci." + std::to_string(nic.pci->bus);
    if (std::find(device_ids_.begin(), device_ids_.end(), bus) == device_ids_.end() && nic.pci->bus != 0)
      return Error::unsupported("interface " + nic.mac.str() + ": PCI bus " + std::to_string(nic.pci->bus) +
                                " is not a controller of this domain");
    char addr[16];
    if (nic.pci->function == 0) std::snprintf(addr, sizeof addr, "0x%x", nic.pci->slot);
    else std::snprintf(addr, sizeof addr, "0x%x.0x%x", nic.pci->slot, nic.pci->function);
    dev["bus"] = bus;
    dev["addr"] = addr;
    if (nic.pci->multifunction) dev["multifunction"] = true;
    else dev.erase("multifunction");
  }
  if (nic.boot_order) dev["bootindex"] = *nic.boot_order;
  if (nic.rx_queue_size) dev["rx_queue_size"] = *nic.rx_queue_size;
  if (nic.tx_queue_size) dev["tx_queue_size"] = *nic.tx_queue_size;
  for (const NicOffload& o : nic.offloads) dev[o.property] = o.on;
  if (nic.rom_bar) dev["rombar"] = *nic.rom_bar ? 1 : 0;
  if (nic.rom_disabled) dev["romfile"] = "";
  if (!nic.alias.empty()) {
    if (std::find(device_ids_.begin(), device_ids_.end(), nic.alias) != device_ids_.end())
      return Error::unsupported("interface " + nic.mac.str() + ": alias " + quote_for_message(nic.alias) +
                                " is the id of another device");
    dev["id"] = nic.alias;
  }
  return {};
}

// The dry run gave the simplified interfaces addresses of libvirt's choosing, possibly the
// slot the XML gives an interface: two devices on one slot would fail in QEMU, later and
// less clearly.
Result<void> Rewriter::check_pci_slots() const {
  std::vector<std::pair<std::string, std::string>> used;
  for (size_t i = 0; i + 1 < plan_.argv.size(); ++i) {
    if (plan_.argv[i] != "-device" || plan_.argv[i + 1].empty() || plan_.argv[i + 1][0] != '{') continue;
    Json dev = Json::parse(plan_.argv[i + 1], nullptr, false);
    if (!dev.is_object() || !dev.contains("addr") || !dev["addr"].is_string()) continue;
    std::string bus = dev.contains("bus") && dev["bus"].is_string() ? dev["bus"].get<std::string>() : "";
    std::pair<std::string, std::string> where{bus, dev["addr"].get<std::string>()};
    if (std::find(used.begin(), used.end(), where) != used.end())
      return Error::unsupported("two devices at PCI address " + where.second + " of bus " + quote_for_message(bus) +
                                " (give every device of the domain its <address>, as libvirt writes them)");
    used.push_back(where);
  }
  return {};
}

Result<void> Rewriter::rewrite_object(QemuOption& opt, bool& keep) {
  if (opt.value.empty() || opt.value[0] != '{') return {};
  Json obj = Json::parse(opt.value, nullptr, false);
  if (obj.is_discarded() || !obj.is_object()) return Error::invalid("-object is not valid JSON: " + opt.value);
  if (VL_TRY(string_member(obj, "qom-type", "-object")) != "secret") return {};
  // libvirt's master key encrypts secrets it passes over the monitor; the dry run names a
  // file it never writes. vmlaunch passes no secrets that way (anything using keyid is
  // refused below), so the object is dropped.
  std::string id = VL_TRY(string_member(obj, "id", "-object"));
  if (id != "masterKey0") return Error::unsupported("secret object " + quote_for_message(id) + " is not supported");
  keep = false;
  return {};
}

Result<void> Rewriter::rewrite_chardev(QemuOption& opt) {
  std::vector<std::string> parts = split_keyval(opt.value);
  if (parts.empty()) return Error::invalid("empty -chardev");
  std::string id = keyval_get(parts, "id");
  if (id == "charmonitor") {
    if (have_monitor_) return Error::invalid("two monitor chardevs");
    // A listening socket bound by root and passed as an fd: QEMU accepts a new client on it
    // after the daemon restarts, unlike a connected socketpair.
    opt.value = join_keyval({"socket", "id=charmonitor", "fd=" + std::to_string(kMonitorFd),
                             "server=on", "wait=off"});
    plan_.fds.push_back({FdSlot::Kind::kMonitor, kMonitorFd, -1});
    have_monitor_ = true;
    return {};
  }
  if (id == "charchannel0" && parts[0] == "socket" && domain_.guest_agent) {
    if (have_agent_) return Error::invalid("two guest agent chardevs");
    // libvirt's path lies in the conversion root; the helper binds the socket in the runtime
    // directory and passes it, as for the monitor.
    opt.value = join_keyval({"socket", "id=charchannel0", "fd=" + std::to_string(kAgentFd), "server=on", "wait=off"});
    plan_.fds.push_back({FdSlot::Kind::kAgent, kAgentFd, -1});
    have_agent_ = true;
    return {};
  }
  if (id == "charserial0" && parts[0] == "pty") {
    if (have_serial_) return Error::invalid("two serial console chardevs");
    // The console: a listening socket root bound in the runtime directory, which the daemon
    // connects to when someone attaches (a pty would be the VM uid's, and QEMU drops a pty's
    // output while nobody holds it). Everything the guest prints also goes to the logfile, a
    // pipe to root's relay (helper/serial_log.h), whether anyone is attached or not.
    opt.value = join_keyval({"socket", "id=charserial0", "fd=" + std::to_string(kSerialFd), "server=on", "wait=off",
                             "logfile=/dev/fdset/" + std::to_string(kSerialLogFd), "logappend=on"});
    plan_.fds.push_back({FdSlot::Kind::kSerial, kSerialFd, -1});
    plan_.fds.push_back({FdSlot::Kind::kSerialLog, kSerialLogFd, -1});
    have_serial_ = true;
    return {};
  }
  if (parts[0] != "pty" && parts[0] != "null" && parts[0] != "spicevmc")
    return Error::unsupported("chardev " + quote_for_message(id) + " of backend " + quote_for_message(parts[0]) + " is not supported");
  return {};
}

Result<void> Rewriter::rewrite_netdev(QemuOption& opt) {
  Json nd = Json::parse(opt.value, nullptr, false);
  if (nd.is_discarded() || !nd.is_object())
    return Error::unsupported("-netdev in non-JSON form is not supported: " + opt.value);
  std::string type = VL_TRY(string_member(nd, "type", "-netdev"));
  if (type != "tap") return Error::unsupported("netdev type " + quote_for_message(type));
  std::string id = VL_TRY(string_member(nd, "id", "-netdev"));
  for (const auto& [key, value] : nd.items()) {
    if (key == "type" || key == "id" || key == "fd") continue;
    if (key == "vhost" || key == "vhostfd" || key == "vhostfds")
      return Error::unsupported("netdev " + id + ": vhost-net is not supported yet");
    return Error::unsupported("netdev " + id + ": key " + quote_for_message(key) + " is not supported");
  }
  if (id.rfind("hostnet", 0) != 0 || id.size() != 8 || !std::isdigit(static_cast<unsigned char>(id[7])))
    return Error::invalid("unexpected netdev id " + quote_for_message(id));
  int nic = id[7] - '0';
  if (static_cast<size_t>(nic) >= domain_.nics.size())
    return Error::invalid("netdev " + id + " has no matching <interface>");
  for (const FdSlot& s : plan_.fds)
    if (s.kind == FdSlot::Kind::kTap && s.nic == nic) return Error::invalid("netdev " + id + " appears twice");
  int fd = kFirstTapFd + nic;
  nd["fd"] = std::to_string(fd);  // QEMU wants the fd number as a JSON string
  opt.value = nd.dump();
  plan_.fds.push_back({FdSlot::Kind::kTap, fd, nic});
  return {};
}

// libvirt's dry run never reads the image, so for a qcow2 layer without a declared
// <backingStore> below it, it leaves "backing" out and qemu would follow whatever backing file
// the image header names, as the VM's uid. Such a layer gets "backing": null; a declared
// chain keeps libvirt's node references, which the allowlist checks against the XML.
Result<void> Rewriter::rewrite_blockdev(QemuOption& opt) {
  Json bd = Json::parse(opt.value, nullptr, false);
  if (bd.is_discarded() || !bd.is_object()) return Error::unsupported("-blockdev in non-JSON form is not supported: " + opt.value);
  std::string driver = VL_TRY(string_member(bd, "driver", "-blockdev"));
  std::string node = VL_TRY(string_member(bd, "node-name", "-blockdev"));
  if (driver == "file") protocol_files_[node] = VL_TRY(string_member(bd, "filename", "-blockdev"));
  bool changed = false;
  if (driver == "qcow2" && !bd.contains("backing")) {
    bd["backing"] = nullptr;
    changed = true;
  }
  // The format node of an encrypted disk (never of a backing layer: libvirt names those by
  // their own files, which no <encryption> covers).
  if (driver == "raw" || driver == "qcow2") {
    auto file = protocol_files_.find(VL_TRY(string_member(bd, "file", "-blockdev")));
    for (size_t d = 0; file != protocol_files_.end() && d < domain_.disks.size(); ++d) {
      if (!domain_.disks[d].luks || domain_.disks[d].source != file->second) continue;
      VL_CHECK(add_encryption(bd, d));
      changed = true;
    }
  }
  if (changed) opt.value = bd.dump();
  return {};
}

// libvirt's own form for <encryption format='luks'>: a raw image becomes a "luks" format node,
// a qcow2 image gets "encrypt", each naming its secret object, which goes just before it. The
// secret reads the passphrase from the plan's disk-secret fd, which the helper fills.
Result<void> Rewriter::add_encryption(Json& bd, size_t disk) {
  if (disks_encrypted_.size() <= disk) disks_encrypted_.resize(disk + 1);
  if (disks_encrypted_[disk]) return Error::invalid("encrypted disk '" + domain_.disks[disk].target + "' is opened twice");
  disks_encrypted_[disk] = true;
  if (bd["driver"] == "raw") bd["driver"] = "luks";
  if (bd["driver"] == "luks") bd["key-secret"] = disk_secret_id(disk);
  else bd["encrypt"] = {{"format", "luks"}, {"key-secret", disk_secret_id(disk)}};
  before_ = {"-object", disk_secret_object(disk, kDiskSecretFd)};
  if (std::none_of(plan_.fds.begin(), plan_.fds.end(), [](const FdSlot& s) { return s.kind == FdSlot::Kind::kDiskSecret; }))
    plan_.fds.push_back({FdSlot::Kind::kDiskSecret, kDiskSecretFd, -1});
  return {};
}

Result<void> Rewriter::rewrite_vnc(QemuOption& opt) {
  if (!domain_.vnc) return Error::invalid("-vnc without <graphics type='vnc'>");
  std::vector<std::string> parts = split_keyval(opt.value);
  if (parts.empty()) return Error::invalid("empty -vnc");
  for (size_t i = 1; i < parts.size(); ++i) {
    std::string key = parts[i].substr(0, parts[i].find('='));
    if (key != "password" && key != "audiodev" && key != "share" && key != "lossy" &&
        key != "non-adaptive" && key != "power-control")
      return Error::unsupported("VNC option " + quote_for_message(key) + " is not supported");
  }
  // The emulator has a network namespace of its own: TCP there reaches nobody. QEMU 7.2 takes
  // no passed listening fd for VNC (`-vnc fd:N` is read as host "fd"), so it binds the socket
  // itself, in the directory the helper made for it (helper/vnc_socket.h).
  if (domain_.vnc->socket.empty()) return Error::make(ErrorCode::kInternal, "the VM's VNC socket path is unset");
  parts[0] = "unix:" + domain_.vnc->socket;
  // VNC over TLS is vmlaunch's configuration ([vnc] tls), not libvirt's: the converter runs
  // with a qemu.conf of its own, so the words for it are added here (helper/vnc_tls.h).
  if (!domain_.vnc->tls_dir.empty()) parts.push_back(std::string("tls-creds=") + kVncTlsCredsId);
  opt.value = join_keyval(parts);
  plan_.vnc = VncSetup{domain_.vnc->socket, !domain_.vnc->password.empty()};
  return {};
}

}  // namespace

Result<Plan> rewrite_native_argv(const std::vector<std::string>& words, const Domain& domain,
                                 const std::string& conversion_root) {
  if (conversion_root.size() < 2) return Error::make(ErrorCode::kInternal, "conversion root unset");
  Rewriter rewriter(domain, conversion_root);
  return rewriter.run(words);
}

}  // namespace vl
