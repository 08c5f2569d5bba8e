#include "common/argv_policy.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <map>
#include <set>

#include "common/qemu_options.h"
#include "common/sys.h"
#include "common/unique_fd.h"

namespace vl {

namespace {

using Json = nlohmann::json;
using Keys = std::initializer_list<std::string_view>;

bool one_of(std::string_view s, Keys set) { return std::find(set.begin(), set.end(), s) != set.end(); }

// A value with nothing a path, URL, list or nested option could hide in.
bool is_token(std::string_view s, std::string_view extra = "") {
  if (s.empty() || s.size() > 128) return false;
  return std::all_of(s.begin(), s.end(), [&](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-' || c == '.' || extra.find(c) != std::string_view::npos;
  });
}

bool has_control_chars(std::string_view s) {
  return std::any_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; });
}

// Device models that reach host resources directly (host devices, host files, vhost kernel
// interfaces, shared memory, other processes), whatever their other properties say.
constexpr std::string_view kDeniedDevicePrefixes[] = {
    "vfio", "vhost", "usb-host", "usb-redir", "usb-mtp", "u2f", "loader", "guest-loader",
    "virtio-9p", "ivshmem", "pci-assign", "kvm-pci-assign", "tpm-", "nvdimm", "virtio-pmem",
    "ccid-card-emulated", "ccid-card-passthru", "xen-"};

// Device properties that name host objects instead of guest-side settings.
constexpr std::string_view kDeniedDeviceKeys[] = {
    "fd", "fds", "vhostfd", "vhostfds", "vhost", "host", "hostbus", "hostaddr", "hostport",
    "hostdevice", "sysfsdev", "rootdir", "file", "filename", "kernel", "initrd", "tpmdev",
    "fsdev", "dtb", "backend"};

// Where Debian installs firmware for QEMU (and libvirt's autoselection finds it).
constexpr std::string_view kFirmwareDirs[] = {"/usr/share/qemu/", "/usr/share/seabios/", "/usr/share/OVMF/",
                                             "/usr/share/ovmf/", "/usr/share/AAVMF/", "/usr/share/qemu-efi-aarch64/",
                                             "/usr/lib/ipxe/"};

// The -object types that touch nothing on the host beyond anonymous memory and entropy.
constexpr std::string_view kMemoryBackends[] = {"memory-backend-ram", "memory-backend-memfd"};

class ArgvChecker {
 public:
  ArgvChecker(const Plan& plan, const Domain& domain) : plan_(plan), domain_(domain) {}

  Result<void> run();

 private:
  // Every option, its rule. Options not in the table are refused.
  using Check = Result<void> (ArgvChecker::*)(const QemuOption&);
  struct Rule {
    std::string_view name;
    Check check;  // nullptr: a flag, nothing to check
  };
  static const Rule kRules[];
  // Options refused by name, with the reason an operator needs to hear.
  static const std::pair<std::string_view, const char*> kRefused[];

  Error refuse(const QemuOption& opt, const std::string& why) const {
    std::string shown = opt.has_value ? opt.name + " " + quote_for_message(opt.value) : opt.name;
    return Error::make(ErrorCode::kDenied, "the emulator command line is refused: " + shown + ": " + why);
  }
  Result<Json> json_object(const QemuOption& opt) const;
  Result<std::string> string_member(const QemuOption& opt, const Json& j, const char* key) const;
  Result<bool> bool_member(const QemuOption& opt, const Json& j, const char* key) const;
  Result<void> keyval_tokens(const QemuOption& opt, Keys keys, std::string_view extra = "", bool bare_first = false);
  Result<void> reference(const QemuOption& opt, const std::set<std::string>& ids, const std::string& id,
                         const char* what) const;

  // First pass: backends other options refer to.
  Result<void> declare(const QemuOption& opt);
  Result<void> declare_chardev(const QemuOption& opt);
  Result<void> declare_fd_set(const QemuOption& opt);
  const FdSlot* slot_of(FdSlot::Kind kind) const;
  Result<void> declare_netdev(const QemuOption& opt);
  Result<void> declare_blockdev(const QemuOption& opt);
  Result<void> declare_object(const QemuOption& opt);
  Result<void> declare_audiodev(const QemuOption& opt);
  Result<void> declare_vnc_tls(const QemuOption& opt, const Json& obj);
  Result<void> declare_disk_secret(const QemuOption& opt, const Json& obj);
  Result<void> check_disk_nodes();

  // Second pass: one function per option.
  Result<void> check_declared(const QemuOption&) { return {}; }
  Result<void> check_name(const QemuOption& opt);
  Result<void> check_machine(const QemuOption& opt);
  Result<void> check_accel(const QemuOption& opt);
  Result<void> check_cpu(const QemuOption& opt);
  Result<void> check_memory(const QemuOption& opt);
  Result<void> check_overcommit(const QemuOption& opt);
  Result<void> check_smp(const QemuOption& opt);
  Result<void> check_uuid(const QemuOption& opt);
  Result<void> check_mon(const QemuOption& opt);
  Result<void> check_rtc(const QemuOption& opt);
  Result<void> check_boot(const QemuOption& opt);
  Result<void> check_device(const QemuOption& opt);
  Result<void> check_vnc(const QemuOption& opt);
  Result<void> check_watchdog_action(const QemuOption& opt);
  Result<void> check_msg(const QemuOption& opt);
  Result<void> check_global(const QemuOption& opt);
  Result<void> check_smbios(const QemuOption& opt);
  Result<void> check_display(const QemuOption& opt);
  Result<void> check_keyboard(const QemuOption& opt);
  Result<void> check_action(const QemuOption& opt);
  Result<void> check_numa(const QemuOption& opt);
  Result<void> check_boot_file(const QemuOption& opt);
  Result<void> check_append(const QemuOption& opt);
  Result<void> check_fw_cfg(const QemuOption& opt);

  const Plan& plan_;
  const Domain& domain_;
  std::set<std::string> chardevs_, netdevs_, audiodevs_, rngs_, memdevs_, iothreads_;
  bool have_monitor_chardev_ = false, have_monitor_ = false, have_agent_chardev_ = false;
  bool have_serial_chardev_ = false, have_serial_log_ = false;
  bool have_vnc_tls_ = false;
  std::set<int> nics_seen_;
  // -blockdev nodes: protocol nodes by name (with the disk they open, -1 for firmware), and
  // format nodes that devices may use as a drive.
  // An image of the domain: disk `disk` itself (layer -1) or layer `layer` of its declared
  // backing chain. disk -1: read-only firmware.
  struct Image {
    int disk = -1;
    int layer = -1;
    auto operator<=>(const Image&) const = default;
  };
  struct ProtocolNode {
    Image image;
    bool used = false;
    std::string filename;
  };
  std::map<std::string, ProtocolNode> protocol_nodes_;
  // Image::disk for the domain's UEFI variable store (the helper's per-VM NVRAM file).
  static constexpr int kNvramImage = -2;
  std::map<std::string, std::string> firmware_nodes_;  // read-only firmware format nodes -> file
  std::string nvram_node_;                             // the NVRAM's format node, once declared
  std::set<std::string> format_nodes_;          // what devices may use as a drive
  std::map<std::string, Image> layer_nodes_;    // format nodes of backing layers
  std::set<Image> images_opened_;
  // Encrypted disks (by index) whose secret object was declared, and those a node unlocks.
  std::set<int> secrets_declared_, secrets_used_;
  Result<Image> image_of(const QemuOption& opt, const std::string& driver, const std::string& filename) const;
  Result<void> check_backing(const QemuOption& opt, const Json& bd, const Image& image) const;
  Result<void> check_encryption(const QemuOption& opt, const Json& bd, const std::string& driver, const Image& image);
  Result<void> check_boot_path(const QemuOption& opt, const std::string& path) const;
  Result<void> check_pflash_code(const QemuOption& opt, const std::string& node) const;
};

const ArgvChecker::Rule ArgvChecker::kRules[] = {
    {"-S", nullptr},
    {"-no-shutdown", nullptr},
    {"-no-user-config", nullptr},
    {"-nodefaults", nullptr},
    {"-no-acpi", nullptr},
    {"-no-hpet", nullptr},
    {"-no-reboot", nullptr},
    {"-enable-kvm", nullptr},
    {"-name", &ArgvChecker::check_name},
    {"-machine", &ArgvChecker::check_machine},
    {"-accel", &ArgvChecker::check_accel},
    {"-cpu", &ArgvChecker::check_cpu},
    {"-m", &ArgvChecker::check_memory},
    {"-overcommit", &ArgvChecker::check_overcommit},
    {"-smp", &ArgvChecker::check_smp},
    {"-uuid", &ArgvChecker::check_uuid},
    {"-chardev", &ArgvChecker::check_declared},
    {"-add-fd", &ArgvChecker::check_declared},
    {"-netdev", &ArgvChecker::check_declared},
    {"-blockdev", &ArgvChecker::check_declared},
    {"-object", &ArgvChecker::check_declared},
    {"-audiodev", &ArgvChecker::check_declared},
    {"-mon", &ArgvChecker::check_mon},
    {"-rtc", &ArgvChecker::check_rtc},
    {"-boot", &ArgvChecker::check_boot},
    {"-device", &ArgvChecker::check_device},
    {"-vnc", &ArgvChecker::check_vnc},
    {"-watchdog-action", &ArgvChecker::check_watchdog_action},
    {"-msg", &ArgvChecker::check_msg},
    {"-global", &ArgvChecker::check_global},
    {"-smbios", &ArgvChecker::check_smbios},
    {"-display", &ArgvChecker::check_display},
    {"-k", &ArgvChecker::check_keyboard},
    {"-action", &ArgvChecker::check_action},
    {"-numa", &ArgvChecker::check_numa},
    {"-kernel", &ArgvChecker::check_boot_file},
    {"-initrd", &ArgvChecker::check_boot_file},
    {"-dtb", &ArgvChecker::check_boot_file},
    {"-bios", &ArgvChecker::check_boot_file},
    {"-append", &ArgvChecker::check_append},
    {"-fw_cfg", &ArgvChecker::check_fw_cfg},
};

const std::pair<std::string_view, const char*> ArgvChecker::kRefused[] = {
    {"-sandbox", "the helper adds QEMU's sandbox itself; a plan may not choose it"},
    {"-net", "networking is the plan's tap fds only"},
    {"-nic", "networking is the plan's tap fds only"},
    {"-plugin", "loads code into the emulator"},
    {"-incoming", "incoming migration streams are not accepted"},
    {"-daemonize", "the emulator must stay in the foreground"},
    {"-runas", "the helper changes the uid itself"},
    {"-chroot", "the helper sets up the emulator's environment itself"},
    {"-readconfig", "reads options from a file the helper has not checked"},
    {"-D", "writes a log file the helper does not control"},
    {"-d", "debug logging is not allowed"},
    {"-trace", "tracing can write files the helper does not control"},
    {"-L", "firmware comes from QEMU's own data directory only"},
    {"-gdb", "opens a debugger endpoint"},
    {"-s", "opens a debugger endpoint"},
    {"-spice", "SPICE is not supported"},
    {"-serial", "serial ports are pty chardevs only"},
    {"-parallel", "character devices are pty chardevs only"},
    {"-monitor", "the only monitor is the plan's QMP fd"},
    {"-qmp", "the only monitor is the plan's QMP fd"},
    {"-qmp-pretty", "the only monitor is the plan's QMP fd"},
    {"-debugcon", "character devices are pty chardevs only"},
    {"-drive", "disks are -blockdev nodes of the domain's disks only"},
    {"-mem-path", "guest memory is anonymous memory only"},
    {"-set", "rewrites options after they were checked"},
    {"-loadvm", "loading snapshots at start is not supported"},
    {"-pidfile", "the helper knows the pid; the file would be written as the VM's uid"},
    {"-virtfs", "host filesystem sharing is not supported"},
    {"-fsdev", "host filesystem sharing is not supported"},
    {"-tpmdev", "TPM backends are not supported"},
    {"-option-rom", "ROM images from host paths are not supported"},
    {"-nographic", "redirects the serial port and a monitor to stdio"},
    {"-snapshot", "writes temporary images outside the storage roots"},
    {"-writeconfig", "writes a file the helper does not control"},
    {"-preconfig", "the supervisor expects the -S protocol"},
};

Result<Json> ArgvChecker::json_object(const QemuOption& opt) const {
  if (opt.value.empty() || opt.value[0] != '{') return refuse(opt, "must be a JSON object");
  Json j = Json::parse(opt.value, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return refuse(opt, "must be a JSON object");
  return j;
}

// Members are read by their type, and a member of another type is refused: nlohmann's typed
// reads abort the process on a mismatch when exceptions are off, and the plan is untrusted.
// An absent member reads as "" or false.
Result<std::string> ArgvChecker::string_member(const QemuOption& opt, const Json& j, const char* key) const {
  auto it = j.find(key);
  if (it == j.end()) return std::string();
  if (!it->is_string()) return refuse(opt, std::string("'") + key + "' must be a string");
  return it->get<std::string>();
}

Result<bool> ArgvChecker::bool_member(const QemuOption& opt, const Json& j, const char* key) const {
  auto it = j.find(key);
  if (it == j.end()) return false;
  if (!it->is_boolean()) return refuse(opt, std::string("'") + key + "' must be a boolean");
  return it->get<bool>();
}

// keyval options: every part KEY=VALUE with KEY from `keys` and VALUE a token; with
// bare_first, the first part may be a bare token (the "default key" QEMU allows).
Result<void> ArgvChecker::keyval_tokens(const QemuOption& opt, Keys keys, std::string_view extra, bool bare_first) {
  std::vector<std::string> parts = split_keyval(opt.value);
  if (parts.empty()) return refuse(opt, "empty value");
  for (size_t i = 0; i < parts.size(); ++i) {
    const std::string& p = parts[i];
    if (i == 0 && bare_first && p.find('=') == std::string::npos) {
      if (!is_token(p, extra)) return refuse(opt, "unexpected value " + quote_for_message(p));
      continue;
    }
    if (p.find('=') == std::string::npos || !one_of(keyval_key(p), keys))
      return refuse(opt, "property " + quote_for_message(std::string(keyval_key(p))) + " is not allowed");
    if (!is_token(keyval_value(p), extra))
      return refuse(opt, "value of " + quote_for_message(std::string(keyval_key(p))) + " is not a plain token");
  }
  return {};
}

Result<void> ArgvChecker::reference(const QemuOption& opt, const std::set<std::string>& ids, const std::string& id,
                                    const char* what) const {
  if (!ids.count(id)) return refuse(opt, std::string("refers to ") + what + " " + quote_for_message(id) + " that the plan does not declare");
  return {};
}

Result<void> ArgvChecker::run() {
  if (plan_.argv.empty()) return Error::invalid("plan: empty argv");
  std::vector<std::string> words(plan_.argv.begin() + 1, plan_.argv.end());
  std::vector<QemuOption> options = VL_TRY(parse_qemu_options(words));
  std::map<std::string_view, int> counts;
  for (const QemuOption& opt : options) {
    for (const auto& [name, why] : kRefused)
      if (opt.name == name) return refuse(opt, why);
    const Rule* rule = nullptr;
    for (const Rule& r : kRules)
      if (r.name == opt.name) rule = &r;
    if (!rule) return refuse(opt, "not an option vmlaunch allows");
    if ((rule->check == nullptr) == opt.has_value)
      return refuse(opt, "malformed option");  // the parser's flag table and ours disagree
    if (has_control_chars(opt.value)) return refuse(opt, "contains control characters");
    ++counts[rule->name];
    VL_CHECK(declare(opt));
  }
  // Options that configure one thing: a second occurrence would silently override the first.
  for (std::string_view once : {"-name", "-machine", "-accel", "-cpu", "-m", "-smp", "-uuid", "-mon", "-vnc",
                                "-kernel", "-initrd", "-dtb", "-bios", "-append", "-display", "-rtc", "-boot"})
    if (counts[once] > 1) return Error::make(ErrorCode::kDenied, "the emulator command line is refused: " + std::string(once) + " appears more than once");
  if (counts["-S"] != 1 || counts["-no-shutdown"] != 1)
    return Error::make(ErrorCode::kDenied, "the emulator command line is refused: it must have -S and -no-shutdown once "
                                           "(the supervisor starts and stops the guest over QMP)");
  for (const QemuOption& opt : options) {
    for (const Rule& r : kRules)
      if (r.name == opt.name && r.check) VL_CHECK((this->*r.check)(opt));
  }
  if (!have_monitor_chardev_ || !have_monitor_)
    return Error::make(ErrorCode::kDenied, "the emulator command line is refused: it has no QMP monitor on the plan's monitor fd");
  if (have_serial_chardev_ != (slot_of(FdSlot::Kind::kSerial) != nullptr) || have_serial_chardev_ != have_serial_log_)
    return Error::make(ErrorCode::kDenied, "the emulator command line is refused: the plan's serial console fd, its log "
                                           "pipe and the serial chardev come together or not at all");
  return check_disk_nodes();
}

Result<void> ArgvChecker::declare(const QemuOption& opt) {
  if (opt.name == "-chardev") return declare_chardev(opt);
  if (opt.name == "-add-fd") return declare_fd_set(opt);
  if (opt.name == "-netdev") return declare_netdev(opt);
  if (opt.name == "-blockdev") return declare_blockdev(opt);
  if (opt.name == "-object") return declare_object(opt);
  if (opt.name == "-audiodev") return declare_audiodev(opt);
  return {};
}

Result<void> ArgvChecker::declare_chardev(const QemuOption& opt) {
  std::vector<std::string> parts = split_keyval(opt.value);
  if (parts.size() < 2 || parts[1].rfind("id=", 0) != 0 || !is_token(keyval_value(parts[1])))
    return refuse(opt, "expected BACKEND,id=ID");
  std::string id(keyval_value(parts[1]));
  if (parts[0] == "socket" && id == "charserial0") {
    // The console: exactly on the socket root bound in the VM's runtime directory, its
    // logfile exactly the fd set of root's log pipe (declare_fd_set). Any other logfile would
    // be a file the VM's uid opens and grows, any other path a socket of someone else's.
    const FdSlot* serial = slot_of(FdSlot::Kind::kSerial);
    const FdSlot* log = slot_of(FdSlot::Kind::kSerialLog);
    std::vector<std::string> expected = {"socket", "id=charserial0", "fd=" + std::to_string(serial ? serial->fd : -1),
                                         "server=on", "wait=off",
                                         "logfile=/dev/fdset/" + std::to_string(log ? log->fd : -1), "logappend=on"};
    if (!serial || !log || parts != expected || have_serial_chardev_)
      return refuse(opt, "the serial console must be the plan's serial fd, logged to the plan's serial log pipe");
    have_serial_chardev_ = true;
  } else if (parts[0] == "socket" && id != "charmonitor") {
    // The guest agent's channel, exactly on the fd root bound in the VM's runtime directory,
    // and only for a domain that declares the agent: a path or address would reach the
    // network or another process's socket.
    const FdSlot* agent = nullptr;
    for (const FdSlot& s : plan_.fds)
      if (s.kind == FdSlot::Kind::kAgent) agent = &s;
    std::vector<std::string> expected = {"socket", "id=charchannel0", "fd=" + std::to_string(agent ? agent->fd : -1),
                                         "server=on", "wait=off"};
    if (!domain_.guest_agent || !agent || parts != expected || have_agent_chardev_)
      return refuse(opt, "the only socket chardevs are the QMP monitor and the guest agent, each on the plan's own fd");
    have_agent_chardev_ = true;
  } else if (parts[0] == "socket") {
    // Only the monitor, exactly on the fd root bound: any other socket reaches the network
    // or another process.
    const FdSlot* monitor = nullptr;
    for (const FdSlot& s : plan_.fds)
      if (s.kind == FdSlot::Kind::kMonitor) monitor = &s;
    std::vector<std::string> expected = {"socket", "id=charmonitor", "fd=" + std::to_string(monitor ? monitor->fd : -1),
                                         "server=on", "wait=off"};
    if (!monitor || parts != expected || have_monitor_chardev_)
      return refuse(opt, "the only socket chardev is the QMP monitor on the plan's monitor fd");
    have_monitor_chardev_ = true;
  } else if (parts[0] == "pty" || parts[0] == "null") {
    if (parts.size() != 2) return refuse(opt, "pty and null chardevs take no options");
  } else {
    return refuse(opt, "chardev backend " + quote_for_message(parts[0]) + " is not allowed (only pty, null, the monitor and the guest agent)");
  }
  if (!chardevs_.insert(id).second) return refuse(opt, "chardev id " + quote_for_message(id) + " declared twice");
  return {};
}

const FdSlot* ArgvChecker::slot_of(FdSlot::Kind kind) const {
  for (const FdSlot& s : plan_.fds)
    if (s.kind == kind) return &s;
  return nullptr;
}

// An fd set holds only the serial log pipe, under its own number: the one name a chardev's
// logfile may have (/dev/fdset/N). Any other fd would hand the emulator a descriptor the plan
// did not ask root for under a name options could open.
Result<void> ArgvChecker::declare_fd_set(const QemuOption& opt) {
  const FdSlot* log = slot_of(FdSlot::Kind::kSerialLog);
  std::string fd = std::to_string(log ? log->fd : -1);
  if (!log || split_keyval(opt.value) != std::vector<std::string>{"fd=" + fd, "set=" + fd} || have_serial_log_)
    return refuse(opt, "the only fd set is the plan's serial log pipe, once");
  have_serial_log_ = true;
  return {};
}

Result<void> ArgvChecker::declare_netdev(const QemuOption& opt) {
  Json nd = VL_TRY(json_object(opt));
  for (const auto& [key, value] : nd.items())
    if (!one_of(key, {"type", "id", "fd"}) || !value.is_string())
      return refuse(opt, "netdev property " + quote_for_message(key) + " is not allowed (only type, id and fd)");
  if (nd.size() != 3 || nd["type"] != "tap") return refuse(opt, "only tap netdevs on the plan's tap fds are allowed");
  std::string id = nd["id"], fd = nd["fd"];
  const FdSlot* slot = nullptr;
  for (const FdSlot& s : plan_.fds)
    if (s.kind == FdSlot::Kind::kTap && std::to_string(s.fd) == fd) slot = &s;
  if (!slot) return refuse(opt, "fd " + fd + " is not one of the plan's tap fds");
  if (!nics_seen_.insert(slot->nic).second) return refuse(opt, "tap fd " + fd + " is used twice");
  if (!is_token(id) || !netdevs_.insert(id).second) return refuse(opt, "netdev id " + quote_for_message(id) + " is malformed or declared twice");
  return {};
}

Result<void> ArgvChecker::declare_blockdev(const QemuOption& opt) {
  Json bd = VL_TRY(json_object(opt));
  std::string driver = VL_TRY(string_member(opt, bd, "driver"));
  std::string node = VL_TRY(string_member(opt, bd, "node-name"));
  if (!is_token(node)) return refuse(opt, "a blockdev needs a plain node-name");
  if (protocol_nodes_.count(node) || format_nodes_.count(node)) return refuse(opt, "node " + quote_for_message(node) + " declared twice");
  auto only_keys = [&](Keys keys) -> Result<void> {
    for (const auto& [key, value] : bd.items()) {
      if (!one_of(key, keys)) return refuse(opt, "blockdev property " + quote_for_message(key) + " is not allowed");
      if (key == "cache") {
        if (!value.is_object()) return refuse(opt, "'cache' must be an object");
        for (const auto& [k, v] : value.items())
          if (!one_of(k, {"direct", "no-flush"}) || !v.is_boolean()) return refuse(opt, "cache property " + quote_for_message(k) + " is not allowed");
      } else if (key == "backing") {
        if (!value.is_null() && !value.is_string()) return refuse(opt, "'backing' must be null or a node name");
      } else if (key == "encrypt") {
        // qcow2's LUKS encryption: check_encryption checks it
      } else if (value.is_object() || value.is_array()) {
        return refuse(opt, "property " + quote_for_message(key) + " must be a plain value");
      }
    }
    return {};
  };
  bool read_only = VL_TRY(bool_member(opt, bd, "read-only"));
  if (driver == "file" || driver == "host_device" || driver == "host_cdrom") {
    VL_CHECK(only_keys({"driver", "filename", "node-name", "auto-read-only", "discard", "read-only", "aio", "cache"}));
    if (bd.contains("aio") && !one_of(VL_TRY(string_member(opt, bd, "aio")), {"threads", "native"}))
      return refuse(opt, "aio mode must be threads or native");
    if (!bd.contains("filename") || !bd["filename"].is_string()) return refuse(opt, "a protocol node needs a filename");
    Image image = VL_TRY(image_of(opt, driver, bd["filename"].get<std::string>()));
    if (image.disk == kNvramImage) {
      if (!images_opened_.insert(image).second) return refuse(opt, "the UEFI variable store is opened twice");
      protocol_nodes_[node] = ProtocolNode{image, false, {}};
      return {};
    }
    // Firmware without "read-only" is accepted with "auto-read-only" (libvirt 9 writes the UEFI
    // code image so): QEMU falls back to read-only because the file is root's (check_boot_path),
    // and its format node must be read-only anyway.
    bool auto_read_only = VL_TRY(bool_member(opt, bd, "auto-read-only"));
    if (image.disk < 0 && !read_only && (!auto_read_only || !check_boot_path(opt, bd["filename"].get<std::string>())))
      return refuse(opt, "'" + bd["filename"].get<std::string>() + "' is not a disk of the domain XML");
    if (image.disk < 0) VL_CHECK(check_boot_path(opt, bd["filename"].get<std::string>()));
    if (image.disk >= 0 && !images_opened_.insert(image).second)
      return refuse(opt, "'" + bd["filename"].get<std::string>() + "' is opened twice");
    protocol_nodes_[node] = ProtocolNode{image, false, bd["filename"].get<std::string>()};
    return {};
  }
  if (driver == "raw" || driver == "qcow2" || driver == "luks") {
    VL_CHECK(only_keys({"node-name", "read-only", "driver", "file", "backing", "cache", "discard", "detect-zeroes",
                        driver == "luks" ? "key-secret" : driver == "qcow2" ? "encrypt" : "file"}));
    if (!bd.contains("file") || !bd["file"].is_string())
      return refuse(opt, "a format node's file must name a protocol node declared before it");
    auto proto = protocol_nodes_.find(bd["file"].get<std::string>());
    if (proto == protocol_nodes_.end() || proto->second.used)
      return refuse(opt, "a format node's file must name a protocol node declared before it, once");
    proto->second.used = true;
    const Image image = proto->second.image;
    VL_CHECK(check_backing(opt, bd, image));
    if (image.disk == kNvramImage) {
      // Not a drive devices may use: only -machine pflash1 maps it.
      if (driver != "raw") return refuse(opt, "the UEFI variable store is opened as raw");
      nvram_node_ = node;
      return {};
    }
    if (image.disk < 0) {
      if (!read_only || driver != "raw") return refuse(opt, "firmware must be opened read-only as raw");
      format_nodes_.insert(node);
      firmware_nodes_[node] = proto->second.filename;
      return {};
    }
    VL_CHECK(check_encryption(opt, bd, driver, image));
    const Disk& disk = domain_.disks[image.disk];
    const std::string& format = image.layer < 0 ? disk.format : disk.backing[image.layer].format;
    const std::string& source = image.layer < 0 ? disk.source : disk.backing[image.layer].source;
    if (format != (driver == "luks" ? "raw" : driver)) return refuse(opt, quote_for_message(source, kQuotePathMax) + " is declared " + quote_for_message(format) + ", not " + quote_for_message(driver));
    if ((image.layer >= 0 || disk.read_only) && !read_only)
      return refuse(opt, quote_for_message(source, kQuotePathMax) + " is read-only in the domain XML");
    if (image.layer < 0) format_nodes_.insert(node);
    else layer_nodes_[node] = image;
    return {};
  }
  return refuse(opt, "blockdev driver " + quote_for_message(driver) + " is not allowed (only file, host_device, host_cdrom, raw, qcow2, luks)");
}

// Which of the domain's images a protocol node opens. A file that is no disk or declared
// backing layer may only be firmware that root installed (a UEFI code image, say), never
// anything a user could have written.
Result<ArgvChecker::Image> ArgvChecker::image_of(const QemuOption& opt, const std::string& driver,
                                                 const std::string& filename) const {
  bool block = driver != "file";
  for (size_t d = 0; d < domain_.disks.size(); ++d) {
    const Disk& disk = domain_.disks[d];
    if (disk.source == filename) {
      if (block != (disk.kind == Disk::Kind::kBlock))
        return refuse(opt, "driver " + quote_for_message(driver) + " does not match the domain's disk type for " + quote_for_message(filename, kQuotePathMax));
      return Image{static_cast<int>(d), -1};
    }
    for (size_t l = 0; l < disk.backing.size(); ++l)
      if (disk.backing[l].source == filename) {
        if (block != disk.backing[l].block)
          return refuse(opt, "driver " + quote_for_message(driver) + " does not match the declared layer type for " + quote_for_message(filename, kQuotePathMax));
        return Image{static_cast<int>(d), static_cast<int>(l)};
      }
  }
  if (driver != "file") return refuse(opt, quote_for_message(filename, kQuotePathMax) + " is not a disk of the domain XML");
  if (domain_.uefi && !domain_.uefi->nvram.empty() && filename == domain_.uefi->nvram) return Image{kNvramImage, -1};
  return Image{};
}

// The image header names a backing file that qemu would open as the VM's uid: anything
// readable, or an nbd:/http: URL. A qcow2 node must therefore name its backing node
// explicitly: the next declared layer of its disk, or null where the declared chain ends.
Result<void> ArgvChecker::check_backing(const QemuOption& opt, const Json& bd, const Image& image) const {
  std::string driver = VL_TRY(string_member(opt, bd, "driver"));
  if (driver == "raw" || driver == "luks") {
    if (bd.contains("backing")) return refuse(opt, "raw nodes have no backing");
    return {};
  }
  if (!bd.contains("backing"))
    return refuse(opt, "a qcow2 node must say \"backing\": null or name its declared layer (backing files are not allowed)");
  const Json& backing = bd["backing"];
  size_t next = static_cast<size_t>(image.layer + 1);
  bool chain_ends = image.disk < 0 || next >= domain_.disks[image.disk].backing.size();
  if (backing.is_null()) {
    if (!chain_ends) return refuse(opt, "the domain XML declares a backing layer here");
    return {};
  }
  auto layer = layer_nodes_.find(backing.get<std::string>());
  if (chain_ends || layer == layer_nodes_.end() || layer->second != Image{image.disk, static_cast<int>(next)})
    return refuse(opt, "backing node " + quote_for_message(backing.get<std::string>()) + " is not the layer the domain XML declares "
                       "(backing files are not allowed beyond the declared chain)");
  return {};
}

// An encrypted disk is opened through QEMU's LUKS layer with its own secret, and nothing else
// is: a LUKS node on a disk the XML does not encrypt, on a backing layer or firmware, or an
// encrypted disk opened as plain raw or qcow2 (the guest would see ciphertext, or a plan could
// hand its secret to another image) is refused.
Result<void> ArgvChecker::check_encryption(const QemuOption& opt, const Json& bd, const std::string& driver,
                                           const Image& image) {
  bool decrypts = driver == "luks" || bd.contains("encrypt");
  bool encrypted = image.disk >= 0 && image.layer < 0 && domain_.disks[image.disk].luks;
  if (!encrypted) {
    if (decrypts) return refuse(opt, "only a disk with <encryption> in the domain XML is opened with a LUKS secret");
    return {};
  }
  const Disk& disk = domain_.disks[image.disk];
  if (!decrypts)
    return refuse(opt, "disk '" + disk.target + "' is encrypted in the domain XML: its node must unlock it with its secret");
  std::string secret;
  if (driver == "luks") {
    secret = VL_TRY(string_member(opt, bd, "key-secret"));
  } else {
    const Json& encrypt = bd["encrypt"];
    if (!encrypt.is_object() || encrypt.size() != 2 || !encrypt.contains("format") || encrypt["format"] != "luks" ||
        !encrypt.contains("key-secret") || !encrypt["key-secret"].is_string())
      return refuse(opt, "'encrypt' must be {\"format\":\"luks\",\"key-secret\":ID}");
    secret = encrypt["key-secret"].get<std::string>();
  }
  if (secret != disk_secret_id(static_cast<size_t>(image.disk)) || !secrets_declared_.count(image.disk))
    return refuse(opt, "disk '" + disk.target + "' must be unlocked with its own secret " +
                           quote_for_message(disk_secret_id(static_cast<size_t>(image.disk))) + ", declared before it");
  if (!secrets_used_.insert(image.disk).second) return refuse(opt, "the secret of disk '" + disk.target + "' is used twice");
  return {};
}

Result<void> ArgvChecker::check_disk_nodes() {
  for (int d : secrets_declared_)
    if (!secrets_used_.count(d))
      return Error::make(ErrorCode::kDenied, "the emulator command line is refused: the secret of disk '" +
                                                 domain_.disks[static_cast<size_t>(d)].target + "' unlocks no node");
  for (const auto& [name, node] : protocol_nodes_)
    if (!node.used)
      return Error::make(ErrorCode::kDenied, "the emulator command line is refused: protocol node '" + name +
                                                 "' has no format node (disks are opened with a declared format only)");
  return {};
}

Result<void> ArgvChecker::declare_object(const QemuOption& opt) {
  Json obj = VL_TRY(json_object(opt));
  std::string type = VL_TRY(string_member(opt, obj, "qom-type"));
  std::string id = VL_TRY(string_member(opt, obj, "id"));
  if (!is_token(id)) return refuse(opt, "an object needs a plain id");
  for (const auto& [key, value] : obj.items())
    if (value.is_object() || value.is_array()) return refuse(opt, "property " + quote_for_message(key) + " must be a plain value");
  if (std::find(std::begin(kMemoryBackends), std::end(kMemoryBackends), type) != std::end(kMemoryBackends)) {
    for (const auto& [key, value] : obj.items())
      if (!one_of(key, {"qom-type", "id", "size", "share", "prealloc", "merge", "dump", "hugetlb", "hugetlbsize", "seal",
                        "x-use-canonical-path-for-ramblock-id"}))
        return refuse(opt, "memory backend property " + quote_for_message(key) + " is not allowed");
    memdevs_.insert(id);
  } else if (type == "rng-random") {
    for (const auto& [key, value] : obj.items())
      if (!one_of(key, {"qom-type", "id", "filename"})) return refuse(opt, "rng property " + quote_for_message(key) + " is not allowed");
    if (!one_of(VL_TRY(string_member(opt, obj, "filename")), {"/dev/urandom", "/dev/random", "/dev/hwrng"}))
      return refuse(opt, "an rng reads /dev/urandom, /dev/random or /dev/hwrng only");
    rngs_.insert(id);
  } else if (type == "rng-builtin") {
    if (obj.size() != 2) return refuse(opt, "rng-builtin takes no properties");
    rngs_.insert(id);
  } else if (type == "tls-creds-x509") {
    VL_CHECK(declare_vnc_tls(opt, obj));
  } else if (type == "secret") {
    VL_CHECK(declare_disk_secret(opt, obj));
  } else if (type == "iothread") {
    for (const auto& [key, value] : obj.items())
      if (!one_of(key, {"qom-type", "id", "poll-max-ns", "poll-grow", "poll-shrink", "aio-max-batch",
                        "thread-pool-min", "thread-pool-max"}))
        return refuse(opt, "iothread property " + quote_for_message(key) + " is not allowed");
    iothreads_.insert(id);
  } else {
    return refuse(opt, "object type " + quote_for_message(type) + " is not allowed");
  }
  return {};
}

// The VNC server's TLS credentials: exactly the object vmlaunch writes (vnc_tls_object), once,
// and only with [vnc] tls on. Its dir must be the one the helper filled for this VM: any other
// would serve a key someone else chose (or another VM's), and endpoint=client would make the
// emulator a TLS client.
Result<void> ArgvChecker::declare_vnc_tls(const QemuOption& opt, const Json& obj) {
  if (!domain_.vnc || domain_.vnc->tls_dir.empty())
    return refuse(opt, "TLS credentials are for VNC with [vnc] tls on, and it is off for this VM");
  if (obj != Json::parse(vnc_tls_object(domain_.vnc->tls_dir, domain_.vnc->tls_verify_client)))
    return refuse(opt, "the only TLS credentials are " + vnc_tls_object(domain_.vnc->tls_dir, domain_.vnc->tls_verify_client));
  if (have_vnc_tls_) return refuse(opt, "the VNC TLS credentials are declared twice");
  have_vnc_tls_ = true;
  return {};
}

// A secret is exactly the object vmlaunch writes for one encrypted disk (disk_secret_object):
// read from the plan's disk-secret fd, never given inline (data=, which would put the passphrase
// in the argv), never from another path (a file the VM's uid can read), never decrypted with
// another secret (keyid=), and only for a disk the domain XML encrypts.
Result<void> ArgvChecker::declare_disk_secret(const QemuOption& opt, const Json& obj) {
  const FdSlot* slot = slot_of(FdSlot::Kind::kDiskSecret);
  for (size_t d = 0; d < domain_.disks.size(); ++d) {
    if (!domain_.disks[d].luks || VL_TRY(string_member(opt, obj, "id")) != disk_secret_id(d)) continue;
    std::string expected = disk_secret_object(d, slot ? slot->fd : -1);
    if (!slot || obj != Json::parse(expected))
      return refuse(opt, "the secret of disk '" + domain_.disks[d].target + "' must be exactly " + expected);
    if (!secrets_declared_.insert(static_cast<int>(d)).second) return refuse(opt, "the secret is declared twice");
    return {};
  }
  return refuse(opt, "object type 'secret' is only the passphrase of an encrypted disk of the domain");
}

Result<void> ArgvChecker::declare_audiodev(const QemuOption& opt) {
  Json ad = VL_TRY(json_object(opt));
  // Every other driver reaches a host sound server or writes a file (wav).
  std::string driver = VL_TRY(string_member(opt, ad, "driver"));
  std::string id = VL_TRY(string_member(opt, ad, "id"));
  if (ad.size() != 2 || driver != "none" || !is_token(id))
    return refuse(opt, "only {\"id\":ID,\"driver\":\"none\"} audio backends are allowed");
  audiodevs_.insert(id);
  return {};
}

Result<void> ArgvChecker::check_name(const QemuOption& opt) {
  VL_CHECK(keyval_tokens(opt, {"guest", "debug-threads"}));
  for (const std::string& p : split_keyval(opt.value))
    if (keyval_key(p) == "guest" && keyval_value(p) != domain_.name.str())
      return refuse(opt, "the guest name must be '" + domain_.name.str() + "'");
  return {};
}

Result<void> ArgvChecker::check_machine(const QemuOption& opt) {
  VL_CHECK(keyval_tokens(opt, {"type", "usb", "dump-guest-core", "memory-backend", "vmport", "smm", "kernel_irqchip",
                               "kernel-irqchip", "hpet", "acpi", "pflash0", "pflash1", "graphics", "mem-merge", "sata",
                               "i8042", "pit", "pic", "suppress-vmdesc", "max-ram-below-4g", "hmat",
                               "smbios-entry-point-type", "sgx-epc", "pcspk-audiodev"},
                         "", /*bare_first=*/true));
  for (const std::string& p : split_keyval(opt.value)) {
    std::string value(keyval_value(p));
    if (keyval_key(p) == "memory-backend") VL_CHECK(reference(opt, memdevs_, value, "memory backend"));
    if (keyval_key(p) == "pcspk-audiodev") VL_CHECK(reference(opt, audiodevs_, value, "audio backend"));
    if (keyval_key(p) == "pflash0") VL_CHECK(check_pflash_code(opt, value));
    if (keyval_key(p) == "pflash1" && (nvram_node_.empty() || value != nvram_node_))
      return refuse(opt, "pflash1 must be the domain's UEFI variable store (" +
                             (domain_.uefi ? domain_.uefi->nvram : std::string("the domain has no UEFI firmware")) + ")");
  }
  return {};
}

// The flash the guest executes: read-only firmware root installed (check_boot_path ran when its
// node was declared), and for a UEFI domain exactly the loader its XML names.
Result<void> ArgvChecker::check_pflash_code(const QemuOption& opt, const std::string& node) const {
  auto it = firmware_nodes_.find(node);
  if (it == firmware_nodes_.end()) return refuse(opt, "pflash0 must be a read-only firmware image, not " + quote_for_message(node));
  if (domain_.uefi && it->second != domain_.uefi->code)
    return refuse(opt, "pflash0 must be the domain's UEFI code image " + quote_for_message(domain_.uefi->code, kQuotePathMax));
  return {};
}

Result<void> ArgvChecker::check_accel(const QemuOption& opt) {
  VL_CHECK(keyval_tokens(opt, {"thread", "tb-size", "kernel-irqchip", "dirty-ring-size"}, "", true));
  std::string accel = split_keyval(opt.value)[0];
  if (accel != "tcg" && accel != "kvm") return refuse(opt, "the accelerator must be tcg or kvm");
  return {};
}

Result<void> ArgvChecker::check_cpu(const QemuOption& opt) {
  if (!is_token(opt.value, ",=+") || opt.value.size() > 1024) return refuse(opt, "not a CPU model with flags");
  return {};
}

Result<void> ArgvChecker::check_memory(const QemuOption& opt) {
  return keyval_tokens(opt, {"size", "slots", "maxmem"}, "", true);
}

Result<void> ArgvChecker::check_overcommit(const QemuOption& opt) {
  return keyval_tokens(opt, {"mem-lock", "cpu-pm"});
}

Result<void> ArgvChecker::check_smp(const QemuOption& opt) {
  return keyval_tokens(opt, {"cpus", "sockets", "dies", "clusters", "cores", "threads", "maxcpus"}, "", true);
}

Result<void> ArgvChecker::check_uuid(const QemuOption& opt) {
  if (!domain_.uuid.empty() && opt.value != domain_.uuid) return refuse(opt, "the UUID must be the domain's");
  if (opt.value.size() != 36 || !is_token(opt.value)) return refuse(opt, "not a UUID");
  return {};
}

Result<void> ArgvChecker::check_mon(const QemuOption& opt) {
  VL_CHECK(keyval_tokens(opt, {"chardev", "id", "mode"}));
  std::vector<std::string> parts = split_keyval(opt.value);
  bool control = std::find(parts.begin(), parts.end(), "mode=control") != parts.end();
  bool on_monitor = std::find(parts.begin(), parts.end(), "chardev=charmonitor") != parts.end();
  if (!control || !on_monitor || !have_monitor_chardev_)
    return refuse(opt, "the only monitor is QMP (mode=control) on chardev charmonitor");
  have_monitor_ = true;
  return {};
}

Result<void> ArgvChecker::check_rtc(const QemuOption& opt) {
  return keyval_tokens(opt, {"base", "clock", "driftfix"}, ":");
}

Result<void> ArgvChecker::check_boot(const QemuOption& opt) {
  // Not splash=FILE: it would read a host file.
  return keyval_tokens(opt, {"order", "once", "menu", "strict", "reboot-timeout", "splash-time"}, "", true);
}

Result<void> ArgvChecker::check_device(const QemuOption& opt) {
  if (opt.value.empty() || opt.value[0] != '{')
    return refuse(opt, "-device must be a JSON object (as libvirt writes it for QEMU 7.2)");
  Json dev = VL_TRY(json_object(opt));
  std::string driver = VL_TRY(string_member(opt, dev, "driver"));
  if (!is_token(driver)) return refuse(opt, "a device needs a driver");
  for (std::string_view prefix : kDeniedDevicePrefixes)
    if (driver.rfind(prefix, 0) == 0) return refuse(opt, "device " + quote_for_message(driver) + " reaches host resources");
  for (const auto& [key, value] : dev.items()) {
    if (value.is_object() || value.is_array()) return refuse(opt, "property " + quote_for_message(key) + " must be a plain value");
    if (std::find(std::begin(kDeniedDeviceKeys), std::end(kDeniedDeviceKeys), key) != std::end(kDeniedDeviceKeys))
      return refuse(opt, "device property " + quote_for_message(key) + " names a host object");
    if (!value.is_string()) continue;
    const std::string& s = value.get_ref<const std::string&>();
    // libvirt writes "romfile":"" for <rom enabled='no'/>; any other ROM is a host file.
    if (key == "romfile" && !s.empty()) return refuse(opt, "ROM files from host paths are not allowed");
    if (!s.empty() && s[0] == '/') return refuse(opt, "device property " + quote_for_message(key) + " names a host path");
    if (key == "chardev") VL_CHECK(reference(opt, chardevs_, s, "chardev"));
    if (key == "chardev" && s == "charmonitor") return refuse(opt, "the monitor chardev is not a device backend");
    if (key == "netdev") VL_CHECK(reference(opt, netdevs_, s, "netdev"));
    if (key == "drive") VL_CHECK(reference(opt, format_nodes_, s, "block node"));
    if (key == "audiodev") VL_CHECK(reference(opt, audiodevs_, s, "audio backend"));
    if (key == "rng") VL_CHECK(reference(opt, rngs_, s, "rng backend"));
    if (key == "memdev") VL_CHECK(reference(opt, memdevs_, s, "memory backend"));
    if (key == "iothread") VL_CHECK(reference(opt, iothreads_, s, "iothread"));
  }
  return {};
}

Result<void> ArgvChecker::check_vnc(const QemuOption& opt) {
  if (!domain_.vnc) return refuse(opt, "the domain XML has no <graphics type='vnc'>");
  const Vnc& vnc = *domain_.vnc;
  std::vector<std::string> parts = split_keyval(opt.value);
  if (parts.empty()) return refuse(opt, "empty value");
  // The emulator has a network namespace of its own: its VNC server is the Unix socket in the
  // directory root made for this VM (helper/vnc_socket.h) and nothing else — not TCP, which
  // would reach nobody, not another VM's socket, not a websocket.
  if (vnc.socket.empty() || parts[0] != "unix:" + vnc.socket)
    return refuse(opt, "VNC must listen on unix:" + vnc.socket + " (the VM's own socket) and nowhere else");
  if (!plan_.vnc || plan_.vnc->socket != vnc.socket || plan_.vnc->has_password != !vnc.password.empty())
    return refuse(opt, "the plan's VNC setup does not match its -vnc option");
  bool password = false, tls = false;
  for (size_t i = 1; i < parts.size(); ++i) {
    std::string_view key = keyval_key(parts[i]), value = keyval_value(parts[i]);
    if (!one_of(key, {"password", "audiodev", "share", "lossy", "non-adaptive", "power-control", "tls-creds"}) ||
        !is_token(value))
      return refuse(opt, "VNC property " + quote_for_message(std::string(key)) + " is not allowed");
    if (key == "password") password = value == "on";
    if (key == "audiodev") VL_CHECK(reference(opt, audiodevs_, std::string(value), "audio backend"));
    if (key == "tls-creds") {
      if (vnc.tls_dir.empty()) return refuse(opt, "VNC property 'tls-creds' needs VNC over TLS, which is off ([vnc] tls)");
      if (value != kVncTlsCredsId || !have_vnc_tls_ || tls)
        return refuse(opt, std::string("tls-creds must name the plan's one credentials object, ") + kVncTlsCredsId);
      tls = true;
    }
  }
  if (password != !vnc.password.empty())
    return refuse(opt, vnc.password.empty() ? "the domain XML sets no VNC password" : "the domain XML requires a VNC password");
  // Configured TLS is a promise to the operator: VNC in clear text would break it silently.
  if (!vnc.tls_dir.empty() && !tls) return refuse(opt, "VNC over TLS is on ([vnc] tls): tls-creds=" + std::string(kVncTlsCredsId) + " is required");
  return {};
}

Result<void> ArgvChecker::check_watchdog_action(const QemuOption& opt) {
  if (!one_of(opt.value, {"reset", "shutdown", "poweroff", "pause", "debug", "none", "inject-nmi"}))
    return refuse(opt, "unknown watchdog action");
  return {};
}

Result<void> ArgvChecker::check_msg(const QemuOption& opt) { return keyval_tokens(opt, {"timestamp", "guest-name"}); }

Result<void> ArgvChecker::check_global(const QemuOption& opt) {
  std::vector<std::string> parts = split_keyval(opt.value);
  if (parts.size() != 1) return refuse(opt, "expected DRIVER.PROPERTY=VALUE");
  std::string_view key = keyval_key(parts[0]);
  size_t dot = key.find('.');
  if (dot == std::string_view::npos || !is_token(key)) return refuse(opt, "expected DRIVER.PROPERTY=VALUE");
  std::string_view property = key.substr(dot + 1);
  if (one_of(property, {"chardev", "drive", "netdev", "romfile", "memdev", "audiodev"}) ||
      std::find(std::begin(kDeniedDeviceKeys), std::end(kDeniedDeviceKeys), property) != std::end(kDeniedDeviceKeys))
    return refuse(opt, "global property " + quote_for_message(std::string(property)) + " is not allowed");
  if (!is_token(keyval_value(parts[0]))) return refuse(opt, "the value is not a plain token");
  return {};
}

Result<void> ArgvChecker::check_smbios(const QemuOption& opt) {
  std::vector<std::string> parts = split_keyval(opt.value);
  if (parts.empty() || keyval_key(parts[0]) != "type") return refuse(opt, "expected type=N,... (not file=)");
  for (const std::string& p : parts)
    if (p.find('=') == std::string::npos || keyval_key(p) == "file") return refuse(opt, "SMBIOS tables from files are not allowed");
  return {};
}

Result<void> ArgvChecker::check_display(const QemuOption& opt) {
  if (opt.value != "none") return refuse(opt, "the only display is none (or VNC)");
  return {};
}

Result<void> ArgvChecker::check_keyboard(const QemuOption& opt) {
  if (!is_token(opt.value)) return refuse(opt, "not a keyboard layout");
  return {};
}

Result<void> ArgvChecker::check_action(const QemuOption& opt) {
  return keyval_tokens(opt, {"reboot", "shutdown", "panic", "watchdog"});
}

Result<void> ArgvChecker::check_numa(const QemuOption& opt) {
  VL_CHECK(keyval_tokens(opt, {"nodeid", "cpus", "memdev", "initiator", "node-id", "socket-id", "core-id",
                               "thread-id", "die-id", "src", "dst", "val", "hierarchy", "data-type", "latency",
                               "bandwidth", "size", "level", "associativity", "policy", "line"},
                         "", true));
  for (const std::string& p : split_keyval(opt.value))
    if (keyval_key(p) == "memdev") VL_CHECK(reference(opt, memdevs_, std::string(keyval_value(p)), "memory backend"));
  return {};
}

Result<void> ArgvChecker::check_boot_file(const QemuOption& opt) { return check_boot_path(opt, opt.value); }

// Firmware, kernels and device trees: files the domain's <os> names, or QEMU's own firmware
// (what libvirt's firmware autoselection picks), and in both cases files only root can change.
Result<void> ArgvChecker::check_boot_path(const QemuOption& opt, const std::string& path) const {
  bool declared = std::find(domain_.boot_files.begin(), domain_.boot_files.end(), path) != domain_.boot_files.end();
  bool system = std::any_of(std::begin(kFirmwareDirs), std::end(kFirmwareDirs),
                            [&](std::string_view dir) { return path.rfind(dir, 0) == 0; });
  if (!declared && !system)
    return refuse(opt, quote_for_message(path, kQuotePathMax) + " is neither named in the domain's <os> nor QEMU firmware");
  if (auto r = check_root_owned_file(path); !r) return refuse(opt, r.error().context);
  return {};
}

Result<void> ArgvChecker::check_append(const QemuOption&) { return {}; }  // guest kernel command line

Result<void> ArgvChecker::check_fw_cfg(const QemuOption& opt) {
  std::vector<std::string> parts = split_keyval(opt.value);
  if (parts.size() != 2 || keyval_key(parts[0]) != "name" || keyval_key(parts[1]) != "string")
    return refuse(opt, "only name=...,string=... is allowed (no files)");
  return {};
}

}  // namespace

Result<void> check_plan_argv(const Plan& plan, const Domain& domain) {
  ArgvChecker checker(plan, domain);
  return checker.run();
}

std::vector<std::string> emulator_sandbox_args() {
  return {"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"};
}

namespace {

// "/a/./b/../c" -> "/a/c", lexically. Sound here because every prefix it shortens was walked as
// a real directory (symlinks are substituted before the rest of the path is read).
std::string normalize_path(const std::string& path) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (start <= path.size()) {
    size_t slash = path.find('/', start);
    std::string part = path.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
    if (part == "..") {
      if (!parts.empty()) parts.pop_back();
    } else if (!part.empty() && part != ".") {
      parts.push_back(part);
    }
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  std::string out;
  for (const auto& p : parts) out += "/" + p;
  return out.empty() ? "/" : out;
}

// Walks `path` from "/" one component at a time without following anything the walk has not
// checked: every directory, and the file, owned by root and not writable by group or others.
// A symlink found on the way was placed by root (its directory is root's alone) and is
// substituted, at most 16 times.
Result<void> check_root_owned_chain(const std::string& shown, const std::string& path, int hops) {
  if (hops > 16) return Error::make(ErrorCode::kDenied, quote_for_message(shown, kQuotePathMax) + " has too many levels of symlinks");
  UniqueFd dir(::open("/", O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!dir) return Error::from_errno("open /");
  std::string walked;
  size_t start = 1;
  for (;;) {
    struct stat st {};
    VL_TRY(sys::check(::fstat(dir.get(), &st), "stat a directory above " + quote_for_message(shown, kQuotePathMax)));
    if (st.st_uid != 0 || (st.st_mode & (S_IWGRP | S_IWOTH)))
      return Error::make(ErrorCode::kDenied, quote_for_message(shown, kQuotePathMax) + " is in a directory that users other than root can change");
    size_t slash = path.find('/', start);
    bool last = slash == std::string::npos;
    std::string component = path.substr(start, last ? std::string::npos : slash - start);
    UniqueFd next(::openat(dir.get(), component.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
    if (!next) return Error::from_errno("open " + quote_for_message(shown, kQuotePathMax));
    VL_TRY(sys::check(::fstat(next.get(), &st), "stat " + quote_for_message(shown, kQuotePathMax)));
    if (S_ISLNK(st.st_mode)) {
      char target[4096];
      ssize_t n = ::readlinkat(next.get(), "", target, sizeof target - 1);
      if (n <= 0) return Error::from_errno("read symlink in " + quote_for_message(shown, kQuotePathMax));
      std::string t(target, static_cast<size_t>(n));
      std::string rest = last ? "" : path.substr(slash);
      return check_root_owned_chain(shown, normalize_path((t[0] == '/' ? t : walked + "/" + t) + rest), hops + 1);
    }
    if (last) {
      if (!S_ISREG(st.st_mode) || st.st_uid != 0 || (st.st_mode & (S_IWGRP | S_IWOTH)))
        return Error::make(ErrorCode::kDenied, quote_for_message(shown, kQuotePathMax) + " must be a regular file only root can change");
      return {};
    }
    walked += "/" + component;
    dir = std::move(next);
    start = slash + 1;
  }
}

}  // namespace

Result<void> check_root_owned_file(const std::string& path) {
  if (path.empty() || path[0] != '/' || path.find("/../") != std::string::npos || path.ends_with("/..") ||
      path.find("//") != std::string::npos || path.find("/./") != std::string::npos)
    return Error::make(ErrorCode::kDenied, quote_for_message(path, kQuotePathMax) + " is not a canonical absolute path");
  return check_root_owned_chain(path, path, 0);
}

}  // namespace vl
