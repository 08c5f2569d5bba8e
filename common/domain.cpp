#include "common/domain.h"

#include <arpa/inet.h>
#include <libxml/parser.h>
#include <libxml/tree.h>

#include <algorithm>
#include <cctype>
#include <initializer_list>
#include <cstdio>
#include <cstring>
#include <memory>
#include <span>
#include <cerrno>
#include <cstdlib>

#include "common/sys.h"

namespace vl {

namespace {

struct XmlDocFree {
  void operator()(xmlDoc* d) const { xmlFreeDoc(d); }
};
struct XmlCtxtFree {
  void operator()(xmlParserCtxt* c) const { xmlFreeParserCtxt(c); }
};

// libxml2 prints to stderr by default; errors are read back from the context instead.
void ignore_xml_error(void*, xmlError*) {}

std::string name_of(const xmlNode* n) { return reinterpret_cast<const char*>(n->name); }

bool has_vmlaunch_ns(const xmlNode* n) {
  return n->ns && n->ns->href &&
         std::string_view(reinterpret_cast<const char*>(n->ns->href)) == kVmlaunchXmlns;
}

std::optional<std::string> attr(const xmlNode* n, const char* name) {
  xmlChar* v = xmlGetNoNsProp(n, reinterpret_cast<const xmlChar*>(name));
  if (!v) return std::nullopt;
  std::string s(reinterpret_cast<char*>(v));
  xmlFree(v);
  return s;
}

std::string text_of(const xmlNode* n) {
  xmlChar* v = xmlNodeGetContent(n);
  if (!v) return {};
  std::string s(reinterpret_cast<char*>(v));
  xmlFree(v);
  // Trim the whitespace of pretty-printed XML.
  auto first = s.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return {};
  auto last = s.find_last_not_of(" \t\r\n");
  return s.substr(first, last - first + 1);
}

template <class F>
void for_each_element(const xmlNode* parent, F&& f) {
  for (const xmlNode* c = parent->children; c; c = c->next)
    if (c->type == XML_ELEMENT_NODE) f(c);
}

// The element names below parent (with their namespace) that occur more than once and are
// not in `repeatable`. libvirt reads the first of two <emulator>, <mac> or <source>; a parser
// that read the last would validate one thing while libvirt planned another.
const xmlNode* repeated_child(const xmlNode* parent, std::initializer_list<std::string_view> repeatable) {
  std::vector<std::pair<std::string, std::string>> seen;
  const xmlNode* repeated = nullptr;
  for_each_element(parent, [&](const xmlNode* c) {
    if (repeated) return;
    std::string name = name_of(c);
    std::string ns = c->ns && c->ns->href ? reinterpret_cast<const char*>(c->ns->href) : "";
    if (std::find(repeatable.begin(), repeatable.end(), name) != repeatable.end() && ns.empty()) return;
    std::pair<std::string, std::string> key{ns, name};
    if (std::find(seen.begin(), seen.end(), key) != seen.end()) repeated = c;
    seen.push_back(std::move(key));
  });
  return repeated;
}

// Builds "file:line: message" errors and walks the document.
class DomainParser {
 public:
  explicit DomainParser(const std::string& source) : source_(source) {}

  Result<Domain> parse(const xmlNode* root);

 private:
  Error error(const xmlNode* n, std::string_view what, ErrorCode code = ErrorCode::kInvalid) const {
    return Error::make(code, source_ + ":" + std::to_string(n ? xmlGetLineNo(n) : 0) + ": " +
                                 std::string(what));
  }
  Error unsupported(const xmlNode* n, std::string_view what) const {
    return error(n, what, ErrorCode::kUnsupported);
  }
  Result<void> refuse_repeated(const xmlNode* parent, std::initializer_list<std::string_view> repeatable) const {
    if (const xmlNode* c = repeated_child(parent, repeatable))
      return error(c, "<" + name_of(c) + "> appears more than once in <" + name_of(parent) + ">");
    return {};
  }

  Result<void> parse_devices(const xmlNode* devices);
  Result<void> parse_interface(const xmlNode* n);
  Result<void> parse_nic_driver(const xmlNode* n, Nic& nic);
  Result<void> parse_pci_address(const xmlNode* n, Nic& nic);
  Result<void> parse_rom(const xmlNode* n, Nic& nic);
  Result<void> parse_alias(const xmlNode* n, Nic& nic);
  /// Refuses any attribute of n not in `known`, naming it.
  Result<void> only_attributes(const xmlNode* n, std::initializer_list<std::string_view> known) const;
  /// The attribute as an integer in [lo, hi] (decimal, or hex with 0x as libvirt writes
  /// addresses); missing or malformed is an error quoting the value.
  Result<int> number_attr(const xmlNode* n, const char* name, long lo, long hi) const;
  Result<bool> switch_attr(const xmlNode* n, const char* name, const char* on, const char* off) const;
  Result<void> parse_ip(const xmlNode* n, Nic& nic);
  Result<void> parse_disk(const xmlNode* n);
  Result<void> parse_backing_store(const xmlNode* n, Disk& disk);
  Result<void> parse_encryption(const xmlNode* n, Disk& disk);
  Result<void> parse_graphics(const xmlNode* n);
  Result<void> parse_serial(const xmlNode* n);
  void parse_console(const xmlNode* n);
  Result<void> parse_channel(const xmlNode* n);
  Result<void> parse_metadata(const xmlNode* n);
  Result<void> parse_os(const xmlNode* n);
  Result<std::string> absolute_path(const xmlNode* n, const std::string& path);

  const std::string& source_;
  std::string name_, uuid_, type_, emulator_;
  std::vector<Nic> nics_;
  std::vector<Disk> disks_;
  std::optional<Vnc> vnc_;
  int serial_ptys_ = 0;
  bool console_is_serial_ = false;  ///< a pty <console> whose target is a serial port
  bool guest_agent_ = false;
  std::optional<Uefi> uefi_;
  std::vector<std::string> boot_files_;
  VmlaunchMeta meta_;
};

// Top-level elements either map to qemu arguments libvirt derives (fine), or are applied by
// libvirtd at runtime (cgroups, NUMA policy, ...), which vmlaunch would silently lose.
constexpr const char* kTopLevelSupported[] = {
    "name", "uuid", "genid", "title", "description", "metadata", "memory", "currentMemory",
    "maxMemory", "vcpu", "vcpus", "iothreads", "cpu", "os", "features", "clock", "on_poweroff",
    "on_reboot", "on_crash", "pm", "devices", "sysinfo", "memoryBacking", "commandline"};
constexpr std::pair<const char*, const char*> kTopLevelRefused[] = {
    {"cputune", "CPU tuning is applied by libvirtd through cgroups"},
    {"numatune", "NUMA policy is applied by libvirtd at runtime"},
    {"blkiotune", "block I/O tuning is applied by libvirtd through cgroups"},
    {"memtune", "memory tuning is applied by libvirtd through cgroups"},
    {"resource", "resource partitions are libvirtd cgroups"},
    {"seclabel", "vmlaunch isolates VMs by uid, not by libvirt security labels"},
    {"idmap", "container id maps do not apply to QEMU"},
    {"launchSecurity", "confidential-computing launch needs libvirtd"},
};

// Devices vmlaunch can run as an unprivileged uid; everything else needs host access
// (hostdev, direct interfaces) or libvirtd helpers (channels, filesystems via virtiofsd, TPM).
constexpr const char* kDevicesSupported[] = {
    "emulator", "disk", "interface", "serial", "console", "graphics", "video", "input",
    "controller", "memballoon", "rng", "sound", "audio", "watchdog", "panic", "channel"};

Result<Domain> DomainParser::parse(const xmlNode* root) {
  if (name_of(root) != "domain" || root->ns)
    return error(root, "root element is <" + name_of(root) + ">, expected <domain>");
  type_ = attr(root, "type").value_or("");
  if (type_ != "kvm" && type_ != "qemu")
    return unsupported(root, "domain type " + quote_for_message(type_) + " is not supported (use 'kvm' or 'qemu')");

  VL_CHECK(refuse_repeated(root, {"sysinfo"}));
  bool have_devices = false;
  Result<void> status;
  for_each_element(root, [&](const xmlNode* n) {
    if (!status) return;
    std::string el = name_of(n);
    for (const auto& [refused, why] : kTopLevelRefused)
      if (el == refused) {
        status = unsupported(n, "<" + el + "> is not supported: " + why);
        return;
      }
    if (std::find_if(std::begin(kTopLevelSupported), std::end(kTopLevelSupported),
                     [&](const char* s) { return el == s; }) == std::end(kTopLevelSupported)) {
      status = unsupported(n, "unknown or unsupported element <" + el + ">");
      return;
    }
    if (el == "commandline") {
      // Extra arguments are harmless (they run as the VM's uid); an environment is not
      // passed through libvirt's dry run at all, so a VM relying on it would start different.
      for_each_element(n, [&](const xmlNode* c) {
        if (status && name_of(c) == "env") status = unsupported(c, "<qemu:env> is not supported: vmlaunch builds the emulator's environment itself");
      });
    }
    if (el == "name") name_ = text_of(n);
    if (el == "os") status = parse_os(n);
    if (el == "uuid") uuid_ = text_of(n);
    if (el == "metadata") status = parse_metadata(n);
    if (el == "devices") {
      have_devices = true;
      status = parse_devices(n);
    }
  });
  VL_CHECK(status);

  auto name = VmName::parse(name_);
  if (!name) return error(root, name.error().context);
  if (!have_devices || emulator_.empty())
    return error(root, "<devices><emulator> is required: vmlaunch only runs allowed emulators");

  for (size_t i = 0; i < nics_.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      if (nics_[i].mac == nics_[j].mac)
        return Error::invalid(source_ + ":" + std::to_string(nics_[i].line) + ": MAC " + nics_[i].mac.str() +
                              " is used by two interfaces");
  if (nics_.size() > VmName::kMaxNics)
    return unsupported(root, "more than " + std::to_string(VmName::kMaxNics) + " interfaces");

  // A pty <console> on a domain without <serial> is libvirt's serial port 0 (it adds the
  // <serial> itself; virt-install writes only the <console>).
  if (serial_ptys_ == 0 && console_is_serial_) serial_ptys_ = 1;

  return Domain{std::move(name).value(), uuid_, type_, emulator_, std::move(nics_),
                std::move(disks_), std::move(vnc_), serial_ptys_, std::move(boot_files_), meta_, guest_agent_,
                std::move(uefi_)};
}

Result<void> DomainParser::parse_devices(const xmlNode* devices) {
  VL_CHECK(refuse_repeated(devices, {"disk", "interface", "serial", "console", "graphics", "video", "input",
                                     "controller", "rng", "sound", "audio", "watchdog", "panic", "channel"}));
  Result<void> status;
  for_each_element(devices, [&](const xmlNode* n) {
    if (!status) return;
    std::string el = name_of(n);
    if (std::find_if(std::begin(kDevicesSupported), std::end(kDevicesSupported),
                     [&](const char* s) { return el == s; }) == std::end(kDevicesSupported)) {
      status = unsupported(n, "device " + quote_for_message("<" + el + ">") + " is not supported by vmlaunch");
      return;
    }
    if (el == "emulator") {
      auto path = absolute_path(n, text_of(n));
      if (!path) status = std::move(path).error();
      else emulator_ = *path;
    }
    if (el == "interface") status = parse_interface(n);
    if (el == "disk") status = parse_disk(n);
    if (el == "graphics") status = parse_graphics(n);
    if (el == "serial") status = parse_serial(n);
    if (el == "console") parse_console(n);
    if (el == "channel") status = parse_channel(n);
  });
  return status;
}

Result<void> DomainParser::parse_interface(const xmlNode* n) {
  std::string type = attr(n, "type").value_or("");
  // 'network' is how most libvirt hosts name where a VM plugs in; vmlaunch's networks are its
  // zones, so <source network='dmz'/> means zone dmz's bridge (resolve_networks, zone_network.h).
  if (type != "bridge" && type != "network")
    return unsupported(n, "<interface type=" + quote_for_message(type) + "> is not supported (only 'bridge', and "
                          "'network' naming a zone: the tap is created by vmlaunch and filtered on "
                          "the zone bridge)");
  VL_CHECK(refuse_repeated(n, {"ip"}));
  Nic nic;
  nic.line = xmlGetLineNo(n);
  bool have_mac = false;
  Result<void> status;
  for_each_element(n, [&](const xmlNode* c) {
    if (!status) return;
    std::string el = name_of(c);
    if (el == "mac") {
      auto mac = MacAddress::parse(attr(c, "address").value_or(""));
      if (!mac) status = error(c, mac.error().context);
      else nic.mac = *mac, have_mac = true;
    } else if (el == "source") {
      if (type == "bridge") nic.bridge = attr(c, "bridge").value_or("");
      else nic.network = attr(c, "network").value_or("");
      if (attr(c, "portgroup") || attr(c, "portid"))
        status = unsupported(c, "<source portgroup|portid=...> is not supported (a zone has no port groups)");
    } else if (el == "model") {
      nic.model = attr(c, "type").value_or("");
    } else if (el == "ip") {
      status = parse_ip(c, nic);
    } else if (el == "route") {
      status = unsupported(c, "<interface><route> is not supported: routes are guest settings that "
                              "QEMU cannot apply (vmlaunch reads <ip> only as the addresses the VM may send from)");
    } else if (el == "driver") {
      status = parse_nic_driver(c, nic);
    } else if (el == "target") {
      status = unsupported(c, "<target dev=...> is not supported: vmlaunch names taps NAME-N");
    } else if (el == "address") {
      status = parse_pci_address(c, nic);
    } else if (el == "boot") {
      status = only_attributes(c, {"order"});
      if (status) {
        auto order = number_attr(c, "order", 1, 65535);
        if (!order) status = std::move(order).error();
        else nic.boot_order = *order;
      }
    } else if (el == "rom") {
      status = parse_rom(c, nic);
    } else if (el == "alias") {
      status = parse_alias(c, nic);
    } else if (el == "mtu") {
      status = unsupported(c, "<interface><mtu> is not supported yet: vmlaunch does not set the MTU of the tap");
    } else {
      status = unsupported(c, "<interface><" + el + "> is not supported (libvirtd applies it)");
    }
  });
  VL_CHECK(status);
  bool virtio = nic.model == "virtio";
  if (!virtio && (nic.rx_queue_size || nic.tx_queue_size || !nic.offloads.empty()))
    return unsupported(n, "ring sizes and offloads of <driver> need <model type='virtio'/>");
  if (!have_mac)
    return error(n, "interface has no <mac address=...>: the anti-spoofing filter needs a fixed MAC");
  if (type == "bridge" && nic.bridge.empty()) return error(n, "interface has no <source bridge=...>");
  if (type == "network" && nic.network.empty()) return error(n, "interface has no <source network=...>");
  if (type == "network" && (nic.network.size() > 64 || nic.network.find_first_of("'\"<>&/") != std::string::npos))
    return error(n, "<source network=" + quote_for_message(nic.network) + "> is not a zone name");
  nics_.push_back(std::move(nic));
  return {};
}

Result<void> DomainParser::only_attributes(const xmlNode* n, std::initializer_list<std::string_view> known) const {
  for (const xmlAttr* a = n->properties; a; a = a->next) {
    std::string name = reinterpret_cast<const char*>(a->name);
    if (a->ns || std::find(known.begin(), known.end(), name) == known.end())
      return unsupported(n, "<" + name_of(n) + " " + quote_for_message(name) + "=...> is not supported");
  }
  return {};
}

Result<int> DomainParser::number_attr(const xmlNode* n, const char* name, long lo, long hi) const {
  std::string text = attr(n, name).value_or("");
  char* end = nullptr;
  errno = 0;
  long v = text.empty() || text[0] == '-' || text[0] == '+' || std::isspace(static_cast<unsigned char>(text[0]))
               ? -1
               : std::strtol(text.c_str(), &end, 0);
  if (v < lo || v > hi || errno != 0 || !end || *end != '\0')
    return error(n, "<" + name_of(n) + " " + name + "=" + quote_for_message(text) + "> must be a number from " +
                        std::to_string(lo) + " to " + std::to_string(hi));
  return static_cast<int>(v);
}

Result<bool> DomainParser::switch_attr(const xmlNode* n, const char* name, const char* on, const char* off) const {
  std::string text = attr(n, name).value_or("");
  if (text == on) return true;
  if (text == off) return false;
  return error(n, "<" + name_of(n) + " " + name + "=" + quote_for_message(text) + "> must be '" + on + "' or '" + off + "'");
}

// <driver name=... queues=... rx_queue_size=... tx_queue_size=...><host .../><guest .../></driver>
Result<void> DomainParser::parse_nic_driver(const xmlNode* n, Nic& nic) {
  VL_CHECK(only_attributes(n, {"name", "queues", "rx_queue_size", "tx_queue_size"}));
  if (auto name = attr(n, "name"); name && *name != "qemu")
    return unsupported(n, "<driver name=" + quote_for_message(*name) + "> is not supported (only 'qemu'; vhost-net not yet)");
  if (attr(n, "queues") && VL_TRY(number_attr(n, "queues", 1, 256)) != 1)
    return unsupported(n, "<driver queues=" + quote_for_message(*attr(n, "queues")) +
                              "> (multiqueue) is not supported yet: it needs one tap fd per queue");
  // QEMU takes powers of two from 256 to 1024 (virtio-net's realize refuses the rest).
  auto ring = [&](const char* name, std::optional<int>& out) -> Result<void> {
    if (!attr(n, name)) return {};
    int size = VL_TRY(number_attr(n, name, 256, 1024));
    if (size & (size - 1)) return error(n, std::string("<driver ") + name + "='" + std::to_string(size) + "'> must be a power of two");
    out = size;
    return {};
  };
  VL_CHECK(ring("rx_queue_size", nic.rx_queue_size));
  VL_CHECK(ring("tx_queue_size", nic.tx_queue_size));
  // libvirt's offload switches and the virtio-net properties they set.
  static constexpr std::pair<std::string_view, std::string_view> kHost[] = {
      {"csum", "csum"}, {"gso", "gso"}, {"tso4", "host_tso4"}, {"tso6", "host_tso6"},
      {"ecn", "host_ecn"}, {"ufo", "host_ufo"}, {"mrg_rxbuf", "mrg_rxbuf"}};
  static constexpr std::pair<std::string_view, std::string_view> kGuest[] = {
      {"csum", "guest_csum"}, {"tso4", "guest_tso4"}, {"tso6", "guest_tso6"}, {"ecn", "guest_ecn"}, {"ufo", "guest_ufo"}};
  VL_CHECK(refuse_repeated(n, {}));
  Result<void> status;
  for_each_element(n, [&](const xmlNode* c) {
    if (!status) return;
    std::string el = name_of(c);
    if (el != "host" && el != "guest") {
      status = unsupported(c, "<interface><driver><" + el + "> is not supported");
      return;
    }
    for (const xmlAttr* a = c->properties; a && status; a = a->next) {
      std::string key = reinterpret_cast<const char*>(a->name);
      std::string_view property;
      auto table = el == "host" ? std::span<const std::pair<std::string_view, std::string_view>>(kHost)
                                : std::span<const std::pair<std::string_view, std::string_view>>(kGuest);
      for (const auto& [xml, qemu] : table)
        if (xml == key) property = qemu;
      if (a->ns || property.empty()) {
        status = unsupported(c, "<" + el + " " + quote_for_message(key) + "=...> is not supported");
        return;
      }
      auto on = switch_attr(c, key.c_str(), "on", "off");
      if (!on) status = std::move(on).error();
      else nic.offloads.push_back({std::string(property), *on});
    }
  });
  return status;
}

Result<void> DomainParser::parse_pci_address(const xmlNode* n, Nic& nic) {
  std::string type = attr(n, "type").value_or("");
  if (type != "pci")
    return unsupported(n, "<interface><address type=" + quote_for_message(type) + "> is not supported (only 'pci')");
  VL_CHECK(only_attributes(n, {"type", "domain", "bus", "slot", "function", "multifunction"}));
  if (attr(n, "domain") && VL_TRY(number_attr(n, "domain", 0, 0xffff)) != 0)
    return unsupported(n, "PCI domains other than 0 are not supported");
  PciAddress pci;
  pci.bus = static_cast<unsigned>(attr(n, "bus") ? VL_TRY(number_attr(n, "bus", 0, 255)) : 0);
  pci.slot = static_cast<unsigned>(VL_TRY(number_attr(n, "slot", 0, 31)));
  pci.function = static_cast<unsigned>(attr(n, "function") ? VL_TRY(number_attr(n, "function", 0, 7)) : 0);
  if (attr(n, "multifunction")) pci.multifunction = VL_TRY(switch_attr(n, "multifunction", "on", "off"));
  nic.pci = pci;
  return {};
}

Result<void> DomainParser::parse_rom(const xmlNode* n, Nic& nic) {
  VL_CHECK(only_attributes(n, {"bar", "enabled", "file"}));
  if (auto file = attr(n, "file"))
    return unsupported(n, "<rom file=" + quote_for_message(*file) + "> is not supported: the emulator would read a host file");
  if (attr(n, "bar")) nic.rom_bar = VL_TRY(switch_attr(n, "bar", "on", "off"));
  if (attr(n, "enabled")) nic.rom_disabled = !VL_TRY(switch_attr(n, "enabled", "yes", "no"));
  return {};
}

// libvirt keeps an alias in a definition only if it is a user alias ("ua-" prefix); QEMU takes
// it as the device id, which allows letters, digits, '-', '_' and '.'.
Result<void> DomainParser::parse_alias(const xmlNode* n, Nic& nic) {
  VL_CHECK(only_attributes(n, {"name"}));
  std::string name = attr(n, "name").value_or("");
  bool valid = name.size() > 3 && name.size() <= 64 && name.rfind("ua-", 0) == 0 &&
               std::all_of(name.begin(), name.end(), [](char c) {
                 return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
               });
  if (!valid)
    return unsupported(n, "<alias name=" + quote_for_message(name) +
                              "> is not supported (only user aliases: 'ua-' then letters, digits, '-', '_', '.'; at most 64)");
  nic.alias = name;
  return {};
}

// <ip address='192.0.2.10' family='ipv4' prefix='24'/>, libvirt's form. libvirt refuses it for
// QEMU guests (it would be guest-side configuration); vmlaunch reads it as the addresses the VM
// may send from, and the daemon strips it before libvirt sees the XML (converter.h).
Result<void> DomainParser::parse_ip(const xmlNode* n, Nic& nic) {
  for (const xmlAttr* a = n->properties; a; a = a->next) {
    std::string name = reinterpret_cast<const char*>(a->name);
    if (a->ns || (name != "address" && name != "family" && name != "prefix"))
      return unsupported(n, "<ip " + name + "=...> is not supported (only address, family and prefix)");
  }
  if (n->children) return error(n, "<ip> must be empty");
  auto address = attr(n, "address");
  if (!address || address->empty()) return error(n, "<ip> needs an address attribute");
  auto family = attr(n, "family");
  if (family && *family != "ipv4" && *family != "ipv6")
    return error(n, "<ip family=" + quote_for_message(*family) + "> must be 'ipv4' or 'ipv6'");
  auto ip = IpAddress::parse(*address, family.value_or(""));
  if (!ip) return error(n, ip.error().context);
  if (auto prefix = attr(n, "prefix")) {
    const int max = ip->is_v6() ? 128 : 32;
    char* end = nullptr;
    long p = std::strtol(prefix->c_str(), &end, 10);
    if (prefix->empty() || !std::isdigit(static_cast<unsigned char>((*prefix)[0])) || *end != '\0' || p > max)
      return error(n, "<ip prefix=" + quote_for_message(*prefix) + "> must be 0-" + std::to_string(max) + " for " +
                          ip->str());
    ip->prefix = static_cast<int>(p);
  }
  if (std::find(nic.ips.begin(), nic.ips.end(), *ip) != nic.ips.end())
    return error(n, "<ip address=" + quote_for_message(ip->str()) + "> is given twice");
  if (nic.ips.size() >= kMaxIpsPerNic)
    return unsupported(n, "more than " + std::to_string(kMaxIpsPerNic) + " <ip> addresses on one interface");
  nic.ips.push_back(*ip);
  return {};
}

Result<std::string> DomainParser::absolute_path(const xmlNode* n, const std::string& path) {
  if (path.empty() || path.front() != '/')
    return error(n, "path " + quote_for_message(path, kQuotePathMax) + " is not absolute");
  if (path.find("/../") != std::string::npos || path.ends_with("/..") ||
      path.find("/./") != std::string::npos || path.find("//") != std::string::npos)
    return error(n, "path " + quote_for_message(path, kQuotePathMax) + " has '.', '..' or empty components");
  for (char c : path)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f)
      return error(n, "path " + quote_for_message(path, kQuotePathMax) + " contains control characters");
  return path;
}

Result<void> DomainParser::parse_disk(const xmlNode* n) {
  VL_CHECK(refuse_repeated(n, {}));
  Disk disk;
  disk.line = xmlGetLineNo(n);
  std::string type = attr(n, "type").value_or("file");
  if (type == "file") disk.kind = Disk::Kind::kFile;
  else if (type == "block") disk.kind = Disk::Kind::kBlock;
  else return unsupported(n, "<disk type=" + quote_for_message(type) + "> is not supported (only 'file' and 'block')");
  disk.device = attr(n, "device").value_or("disk");
  if (disk.device != "disk" && disk.device != "cdrom")
    return unsupported(n, "<disk device=" + quote_for_message(disk.device) + "> is not supported");
  Result<void> status;
  for_each_element(n, [&](const xmlNode* c) {
    if (!status) return;
    std::string el = name_of(c);
    if (el == "source") {
      auto p = attr(c, disk.kind == Disk::Kind::kFile ? "file" : "dev");
      if (!p) return;
      auto path = absolute_path(c, *p);
      if (!path) status = std::move(path).error();
      else disk.source = *path;
    } else if (el == "driver") {
      disk.format = attr(c, "type").value_or("");
    } else if (el == "target") {
      disk.target = attr(c, "dev").value_or("");
    } else if (el == "readonly") {
      disk.read_only = true;
    } else if (el == "shareable") {
      disk.shareable = true;
    } else if (el == "iotune") {
      status = unsupported(c, "<iotune> is applied by libvirtd over the monitor; not supported");
    } else if (el == "encryption") {
      status = parse_encryption(c, disk);
    } else if (el == "auth") {
      status = unsupported(c, "<auth> needs libvirt secrets; not supported");
    } else if (el == "backingStore") {
      status = parse_backing_store(c, disk);
    } else if (el != "address" && el != "alias" && el != "boot" && el != "serial" &&
               el != "wwn" && el != "vendor" && el != "product" && el != "geometry" &&
               el != "blockio") {
      status = unsupported(c, "<disk><" + el + "> is not supported");
    }
  });
  VL_CHECK(status);
  if (disk.source.empty() && disk.device != "cdrom") return error(n, "disk has no <source>");
  if (disk.format != "raw" && disk.format != "qcow2" && !disk.source.empty())
    return unsupported(n, "disk format " + quote_for_message(disk.format) +
                              " is not supported (set <driver type='raw'|'qcow2'/>: probing "
                              "formats is unsafe)");
  if (disk.format == "raw" && !disk.backing.empty()) return error(n, "a raw disk has no backing file");
  if (disk.luks && (disk.kind != Disk::Kind::kFile || disk.device != "disk"))
    return unsupported(n, "<encryption> is supported on <disk type='file' device='disk'> only");
  disks_.push_back(std::move(disk));
  return {};
}

// <encryption format='luks'><secret type='passphrase' uuid=...|usage=.../></encryption>, as
// libvirt writes it. libvirt looks the secret up in its own store; vmlaunch has none, and takes
// the passphrase from the VM's key file or the operator (helper/disk_secret.h), so the secret
// element is checked for shape only. Everything that would make QEMU open the image otherwise
// than with its LUKS driver and that one passphrase is refused by name.
Result<void> DomainParser::parse_encryption(const xmlNode* n, Disk& disk) {
  VL_CHECK(refuse_repeated(n, {}));
  VL_CHECK(only_attributes(n, {"format", "engine"}));
  std::string format = attr(n, "format").value_or("");
  if (format == "qcow")
    return unsupported(n, "<encryption format='qcow'> (qcow's legacy AES) is not supported: it is insecure; use 'luks'");
  if (format != "luks")
    return unsupported(n, "<encryption format=" + quote_for_message(format) + "> is not supported (only 'luks')");
  if (std::string engine = attr(n, "engine").value_or("qemu"); engine != "qemu")
    return unsupported(n, "<encryption engine=" + quote_for_message(engine) + "> is not supported (only 'qemu')");
  int secrets = 0;
  Result<void> status;
  for_each_element(n, [&](const xmlNode* c) {
    if (!status) return;
    std::string el = name_of(c);
    if (el != "secret") {
      // <cipher> and <ivgen> describe an image libvirt would create; opening one reads them
      // from its LUKS header.
      status = unsupported(c, "<encryption><" + el + "> is not supported");
      return;
    }
    ++secrets;
    if (auto ok = only_attributes(c, {"type", "uuid", "usage"}); !ok) {
      status = std::move(ok).error();
      return;
    }
    if (attr(c, "type").value_or("") != "passphrase")
      status = unsupported(c, "<secret type=" + quote_for_message(attr(c, "type").value_or("")) + "> is not supported (only 'passphrase')");
    else if (attr(c, "uuid").has_value() == attr(c, "usage").has_value())
      status = error(c, "<secret> needs a uuid or a usage");
  });
  VL_CHECK(status);
  if (secrets != 1) return error(n, "<encryption> needs one <secret type='passphrase'/>");
  disk.luks = true;
  return {};
}

// <backingStore type='file'><format type='qcow2'/><source file='...'/><backingStore .../>
// </backingStore>, nested once per layer; an empty <backingStore/> ends the chain. Each layer
// is opened read-only by the emulator, and only the layers declared here: the helper checks
// them like disks, and the plan must name exactly these files.
Result<void> DomainParser::parse_backing_store(const xmlNode* n, Disk& disk) {
  constexpr size_t kMaxLayers = 8;
  for (const xmlNode* layer = n; layer;) {
    VL_CHECK(refuse_repeated(layer, {}));
    if (!layer->children && !layer->properties) return {};  // <backingStore/>: no backing file
    if (disk.backing.size() >= kMaxLayers)
      return unsupported(layer, "backing chains deeper than " + std::to_string(kMaxLayers) + " layers are not supported");
    if (!disk.backing.empty() && disk.backing.back().format == "raw")
      return error(layer, "a raw image has no backing file");
    BackingLayer bl;
    std::string type = attr(layer, "type").value_or("file");
    if (type != "file" && type != "block") return unsupported(layer, "<backingStore type=" + quote_for_message(type) + "> is not supported");
    bl.block = type == "block";
    const xmlNode* next = nullptr;
    Result<void> status;
    for_each_element(layer, [&](const xmlNode* c) {
      if (!status) return;
      std::string el = name_of(c);
      if (el == "format") {
        bl.format = attr(c, "type").value_or("");
      } else if (el == "source") {
        auto path = absolute_path(c, attr(c, bl.block ? "dev" : "file").value_or(""));
        if (!path) status = std::move(path).error();
        else bl.source = *path;
      } else if (el == "backingStore") {
        next = c;
      } else {
        status = unsupported(c, "<backingStore><" + el + "> is not supported");
      }
    });
    VL_CHECK(status);
    if (bl.source.empty()) return error(layer, "<backingStore> needs a <source>");
    if (bl.format != "raw" && bl.format != "qcow2")
      return unsupported(layer, "backing format " + quote_for_message(bl.format) + " is not supported (set <format type='raw'|'qcow2'/>)");
    disk.backing.push_back(std::move(bl));
    layer = next;
  }
  return {};
}

Result<void> DomainParser::parse_graphics(const xmlNode* n) {
  std::string type = attr(n, "type").value_or("");
  if (type != "vnc") return unsupported(n, "<graphics type=" + quote_for_message(type) + "> is not supported (only 'vnc')");
  if (vnc_) return unsupported(n, "more than one <graphics> is not supported");
  VL_CHECK(refuse_repeated(n, {}));
  if (attr(n, "websocket")) return unsupported(n, "VNC websockets are not supported");
  // The emulator has a network namespace of its own (domain.h): whatever the XML asks, VNC is
  // a Unix socket of vmlaunch's choosing, reached through `vmctl vnc`. Loopback and a socket
  // say as much; another address or a fixed port would be a promise of TCP it cannot keep.
  const char* kHow = ": each emulator runs in a network namespace of its own, so VNC is a Unix socket that "
                     "'vmctl vnc' reaches (locally, or remotely over SSH or TLS)";
  auto check_listen = [&](const xmlNode* at, const std::string& address) -> Result<void> {
    in_addr a{};
    if (address == "localhost" || (::inet_pton(AF_INET, address.c_str(), &a) == 1 && (ntohl(a.s_addr) >> 24) == 127))
      return {};
    return unsupported(at, "VNC listen address " + quote_for_message(address) + " cannot be honoured" + kHow +
                               "; use listen='127.0.0.1' or <listen type='socket'/>");
  };
  if (attr(n, "socket")) return unsupported(n, "a VNC socket path of the XML's own is not supported (vmlaunch chooses it); use <listen type='socket'/>");
  Vnc vnc;
  if (auto listen = attr(n, "listen")) VL_CHECK(check_listen(n, *listen));
  Result<void> status;
  for_each_element(n, [&](const xmlNode* c) {
    if (name_of(c) != "listen" || !status) return;
    std::string type = attr(c, "type").value_or("address");
    if (type == "socket") {
      if (attr(c, "socket")) status = unsupported(c, "a VNC socket path of the XML's own is not supported (vmlaunch chooses it); remove socket=");
    } else if (type == "none")
      status = unsupported(c, "<listen type='none'> (VNC without a listener) is not supported yet; remove the <graphics>");
    else if (type != "address")
      status = unsupported(c, "<listen type=" + quote_for_message(type) + "> is not supported (only 'address' and 'socket')");
    else if (attr(c, "address"))
      status = check_listen(c, *attr(c, "address"));
  });
  VL_CHECK(status);
  if (attr(n, "autoport").value_or("yes") == "no")
    return unsupported(n, "a fixed VNC port (autoport='no' port=" + quote_for_message(attr(n, "port").value_or("")) + ") cannot be honoured" +
                              kHow + "; 'vmctl vnc NAME --listen 127.0.0.1:PORT' serves it on a port of your choice");
  vnc.password = attr(n, "passwd").value_or("");
  vnc_ = vnc;
  return {};
}

void DomainParser::parse_console(const xmlNode* n) {
  std::string target_type;
  for_each_element(n, [&](const xmlNode* c) {
    if (name_of(c) == "target") target_type = attr(c, "type").value_or("");
  });
  console_is_serial_ |= attr(n, "type").value_or("") == "pty" && (target_type.empty() || target_type == "serial");
}

Result<void> DomainParser::parse_serial(const xmlNode* n) {
  std::string type = attr(n, "type").value_or("");
  if (type != "pty") return unsupported(n, "<serial type=" + quote_for_message(type) + "> is not supported (only 'pty')");
  if (++serial_ptys_ > 16) return unsupported(n, "more than 16 serial ports");
  return {};
}

// virt-install adds the guest agent channel to every VM. Its socket is the helper's to bind (in
// the runtime directory, where only root creates files): libvirt's <source path>, if any, names
// libvirt's location for the same socket and is not used. Other channels (spicevmc, guestfwd,
// other unix ports) are refused.
Result<void> DomainParser::parse_channel(const xmlNode* n) {
  VL_CHECK(refuse_repeated(n, {}));
  std::string type = attr(n, "type").value_or("");
  if (type != "unix")
    return unsupported(n, "<channel type=" + quote_for_message(type) + "> is not supported (only the guest agent's 'unix' channel)");
  bool agent_target = false;
  Result<void> status;
  for_each_element(n, [&](const xmlNode* c) {
    if (!status) return;
    std::string el = name_of(c);
    if (el == "target") {
      agent_target = attr(c, "type").value_or("") == "virtio" && attr(c, "name").value_or("") == kGuestAgentChannel;
    } else if (el == "source") {
      if (attr(c, "mode").value_or("bind") != "bind")
        status = unsupported(c, "<channel><source mode=" + quote_for_message(attr(c, "mode").value_or("")) +
                                    "> is not supported (the helper binds the agent socket)");
    } else if (el != "address" && el != "alias") {
      status = unsupported(c, "<channel><" + el + "> is not supported");
    }
  });
  VL_CHECK(status);
  if (!agent_target)
    return unsupported(n, "<channel> is supported only as the guest agent (<target type='virtio' name='" +
                              std::string(kGuestAgentChannel) + "'/>)");
  if (guest_agent_) return unsupported(n, "more than one guest agent <channel>");
  guest_agent_ = true;
  return {};
}

// The variable store each Debian `ovmf` code image is shipped with (as its descriptors in
// /usr/share/qemu/firmware pair them, and the non-4M images by name). Any other code image
// needs <nvram template=...>.
constexpr std::pair<std::string_view, std::string_view> kOvmfPairs[] = {
    {"/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"},
    {"/usr/share/OVMF/OVMF_CODE_4M.ms.fd", "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"},
    {"/usr/share/OVMF/OVMF_CODE_4M.secboot.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"},
    {"/usr/share/OVMF/OVMF_CODE_4M.snakeoil.fd", "/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd"},
    {"/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"},
    {"/usr/share/OVMF/OVMF_CODE.ms.fd", "/usr/share/OVMF/OVMF_VARS.ms.fd"},
    {"/usr/share/OVMF/OVMF_CODE.secboot.fd", "/usr/share/OVMF/OVMF_VARS.fd"},
};

// UEFI: <os firmware='efi'> (autoselection) or an explicit <loader type='pflash'>, each with a
// variable store. The store's path is vmlaunch's own (Config::nvram_path): the XML's <nvram>
// text names libvirtd's location, which vmlaunch neither reads nor writes; only its template
// is used. Autoselection picks the plain 4 MiB image (no Secure Boot, so no SMM): libvirt 9
// would pick the Secure Boot one with enrolled Microsoft keys and smm=on; a VM that wants that
// names the loader and its template in the XML.
Result<void> DomainParser::parse_os(const xmlNode* n) {
  VL_CHECK(refuse_repeated(n, {"boot", "initarg"}));
  std::string firmware = attr(n, "firmware").value_or("");
  if (!firmware.empty() && firmware != "efi" && firmware != "bios")
    return unsupported(n, "<os firmware=" + quote_for_message(firmware) + "> is not supported (only 'efi' and 'bios')");
  bool efi = firmware == "efi";
  std::optional<Uefi> uefi;
  const xmlNode* nvram = nullptr;
  Result<void> status;
  for_each_element(n, [&](const xmlNode* c) {
    std::string el = name_of(c);
    if (!status) return;
    if (el == "firmware") {
      for_each_element(c, [&](const xmlNode* f) {
        if (status && name_of(f) == "feature" && attr(f, "enabled").value_or("") == "yes")
          status = unsupported(f, "firmware autoselection with feature " + quote_for_message(attr(f, "name").value_or("")) +
                                      " is not supported: name the <loader type='pflash'> and its <nvram "
                                      "template=...> (for Secure Boot, OVMF_CODE_4M.ms.fd) in the XML");
      });
      return;
    }
    if (el == "nvram") {
      nvram = c;
      if (std::string type = attr(c, "type").value_or("file"); type != "file")
        status = unsupported(c, "<nvram type=" + quote_for_message(type) + "> is not supported (only a file)");
      return;
    }
    bool pflash = el == "loader" && attr(c, "type").value_or(efi ? "pflash" : "rom") == "pflash";
    if (pflash) {
      if (attr(c, "readonly").value_or("") != "yes") {
        status = unsupported(c, "<loader type='pflash'> must say readonly='yes': the UEFI code image is never writable");
        return;
      }
      if (attr(c, "stateless").value_or("no") == "yes") {
        status = unsupported(c, "<loader stateless='yes'> is not supported");
        return;
      }
      uefi = Uefi{std::string(kOvmfCode), {}, {}};
    }
    if (el != "loader" && el != "kernel" && el != "initrd" && el != "dtb") return;
    std::string file = text_of(c);
    if (file.empty()) return;  // <loader/> with only attributes: firmware autoselection
    auto path = absolute_path(c, file);
    if (!path) status = std::move(path).error();
    else boot_files_.push_back(*path);
    if (path && pflash) uefi->code = *path;
  });
  VL_CHECK(status);
  if (efi && !uefi) uefi = Uefi{std::string(kOvmfCode), {}, {}};
  if (nvram && !uefi)
    return unsupported(nvram, "<nvram> needs UEFI firmware (<os firmware='efi'> or <loader type='pflash'>)");
  if (!uefi) return {};
  if (auto t = nvram ? attr(nvram, "template") : std::nullopt; t && !t->empty()) {
    uefi->vars_template = VL_TRY(absolute_path(nvram, *t));
  } else {
    for (const auto& [code, vars] : kOvmfPairs)
      if (uefi->code == code) uefi->vars_template = vars;
    if (uefi->vars_template.empty())
      return unsupported(n, "UEFI code image " + quote_for_message(uefi->code, kQuotePathMax) + " needs <nvram template=...> naming its variable store template");
  }
  uefi_ = std::move(uefi);
  return {};
}

Result<void> DomainParser::parse_metadata(const xmlNode* n) {
  VL_CHECK(refuse_repeated(n, {}));
  Result<void> status;
  for_each_element(n, [&](const xmlNode* vm) {
    if (!has_vmlaunch_ns(vm)) return;  // other tools' metadata is theirs
    if (status) status = refuse_repeated(vm, {});
    if (name_of(vm) != "vm") {
      status = error(vm, "unknown vmlaunch metadata element <" + name_of(vm) + ">");
      return;
    }
    for_each_element(vm, [&](const xmlNode* c) {
      if (!status) return;
      std::string el = name_of(c), value = text_of(c);
      if (!has_vmlaunch_ns(c)) {
        status = error(c, "element <" + el + "> inside <vmlaunch:vm> must be in its namespace");
      } else if (el == "zone") {
        meta_.zone = value;
      } else if (el == "autostart") {
        if (value != "yes" && value != "no") status = error(c, "autostart must be 'yes' or 'no'");
        meta_.autostart = value == "yes";
      } else if (el == "start-order") {
        char* end = nullptr;
        long v = std::strtol(value.c_str(), &end, 10);
        if (value.empty() || *end != '\0' || v < 0 || v > 1000000)
          status = error(c, "start-order must be an integer 0-1000000");
        meta_.start_order = static_cast<int>(v);
      } else {
        status = error(c, "unknown vmlaunch metadata element <" + el + ">");
      }
    });
  });
  return status;
}

}  // namespace

Result<MacAddress> MacAddress::parse(std::string_view text) {
  MacAddress mac;
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  if (text.size() != 17) return Error::invalid("MAC address " + quote_for_message(text) + " is malformed");
  for (size_t i = 0; i < 6; ++i) {
    int hi = hex(text[i * 3]), lo = hex(text[i * 3 + 1]);
    if (hi < 0 || lo < 0 || (i < 5 && text[i * 3 + 2] != ':'))
      return Error::invalid("MAC address " + quote_for_message(text) + " is malformed");
    mac.bytes[i] = static_cast<uint8_t>(hi * 16 + lo);
  }
  if (mac.bytes[0] & 1) return Error::invalid("MAC address " + std::string(text) + " is multicast");
  if (mac == MacAddress{}) return Error::invalid("MAC address 00:00:00:00:00:00 is not usable");
  return mac;
}

Result<IpAddress> IpAddress::parse(std::string_view text, std::string_view family) {
  IpAddress ip;
  std::string s(text);
  auto bad = [&](std::string_view why) {
    return Error::invalid("IP address " + quote_for_message(text) + " " + std::string(why));
  };
  if (::inet_pton(AF_INET, s.c_str(), ip.bytes.data()) == 1) {
    ip.family = Family::kIpv4;
  } else if (::inet_pton(AF_INET6, s.c_str(), ip.bytes.data()) == 1) {
    ip.family = Family::kIpv6;
  } else {
    return bad("is malformed (expected IPv4 dotted quad or IPv6, with no prefix length or zone)");
  }
  if (family == "ipv4" && ip.is_v6()) return bad("is not an IPv4 address, but family is 'ipv4'");
  if (family == "ipv6" && !ip.is_v6()) return bad("is not an IPv6 address, but family is 'ipv6'");
  const auto& b = ip.bytes;
  if (!ip.is_v6()) {
    if (b[0] == 0) return bad("is in 0.0.0.0/8 (unspecified), not a host address");
    if (b[0] == 127) return bad("is a loopback address");
    if (b[0] >= 224 && b[0] <= 239) return bad("is a multicast address");
    if (b[0] == 255 && b[1] == 255 && b[2] == 255 && b[3] == 255) return bad("is the broadcast address");
    return ip;
  }
  const std::array<uint8_t, 16> zero{};
  std::array<uint8_t, 16> loopback{};
  loopback[15] = 1;
  if (b == zero) return bad("is the unspecified address");
  if (b == loopback) return bad("is the loopback address");
  if (b[0] == 0xff) return bad("is a multicast address");
  if (std::all_of(b.begin(), b.begin() + 10, [](uint8_t x) { return x == 0; }) && b[10] == 0xff && b[11] == 0xff)
    return bad("is IPv4-mapped: declare the IPv4 address with family='ipv4'");
  return ip;
}

std::string IpAddress::str() const {
  char buf[INET6_ADDRSTRLEN];
  if (!::inet_ntop(is_v6() ? AF_INET6 : AF_INET, bytes.data(), buf, sizeof buf)) return "?";
  return buf;
}

IpAddress eui64_link_local(const MacAddress& mac) {
  IpAddress ip;
  ip.family = IpAddress::Family::kIpv6;
  ip.prefix = 64;
  const auto& m = mac.bytes;
  ip.bytes = {0xfe, 0x80, 0, 0, 0, 0, 0, 0, static_cast<uint8_t>(m[0] ^ 0x02), m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]};
  return ip;
}

std::string MacAddress::str() const {
  char buf[18];
  std::snprintf(buf, sizeof buf, "%02x:%02x:%02x:%02x:%02x:%02x", bytes[0], bytes[1], bytes[2],
                bytes[3], bytes[4], bytes[5]);
  return buf;
}

bool has_encrypted_disk(const std::vector<Disk>& disks) {
  return std::any_of(disks.begin(), disks.end(), [](const Disk& d) { return d.luks; });
}

Result<Domain> parse_domain(std::string_view xml, const std::string& source) {
  if (xml.find('\0') != std::string_view::npos) return Error::invalid(source + ": contains a NUL byte");
  if (xml.size() > kMaxDomainBytes) return Error::invalid(source + ": larger than 1 MiB");
  xmlSetStructuredErrorFunc(nullptr, ignore_xml_error);
  std::unique_ptr<xmlParserCtxt, XmlCtxtFree> ctxt(xmlNewParserCtxt());
  if (!ctxt) return Error::make(ErrorCode::kInternal, source + ": out of memory");
  // No XML_PARSE_NOENT, DTDLOAD, DTDATTR or XINCLUDE: nothing outside the document is read.
  constexpr int kOptions = XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING;
  std::unique_ptr<xmlDoc, XmlDocFree> doc(xmlCtxtReadMemory(
      ctxt.get(), xml.data(), static_cast<int>(xml.size()), source.c_str(), nullptr, kOptions));
  if (!doc) {
    const xmlError* e = xmlCtxtGetLastError(ctxt.get());
    std::string msg = e && e->message ? e->message : "not well-formed XML";
    while (!msg.empty() && msg.back() == '\n') msg.pop_back();
    return Error::invalid(source + ":" + std::to_string(e ? e->line : 0) + ": " + msg);
  }
  if (doc->intSubset || doc->extSubset)
    return Error::invalid(source + ": a DOCTYPE is not allowed in domain XML (no DTDs, no entities)");
  const xmlNode* root = xmlDocGetRootElement(doc.get());
  if (!root) return Error::invalid(source + ": empty document");
  DomainParser parser(source);
  return parser.parse(root);
}

Result<Domain> load_domain(const std::string& path) {
  std::string xml = VL_TRY(sys::read_file(path, kMaxDomainBytes));
  return parse_domain(xml, path);
}

}  // namespace vl
