// The part of a libvirt domain XML that vmlaunch understands, read with libxml2.
//
// The XML is root-owned (/etc/vmlaunch/domains/NAME.xml) and is the same format as
// /etc/libvirt/qemu/NAME.xml. Anything vmlaunch cannot honour is an error naming the line, not
// silently dropped: a VM must never start weaker than its definition says. Parsing never loads
// external entities or DTDs; a document with a DOCTYPE is refused outright.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/vm_name.h"

namespace vl {

/// A unicast Ethernet address.
struct MacAddress {
  std::array<uint8_t, 6> bytes{};
  /// Accepts "aa:bb:cc:dd:ee:ff" (hex, either case); rejects multicast and all-zero addresses.
  static Result<MacAddress> parse(std::string_view text);
  std::string str() const;  ///< lower-case "aa:bb:cc:dd:ee:ff"
  friend bool operator==(const MacAddress&, const MacAddress&) = default;
};

/// <interface type='bridge'>.
struct Nic {
  MacAddress mac;
  std::string bridge;               ///< <source bridge=...>
  std::string model;                ///< <model type=...>, may be empty
  std::vector<std::string> ips;     ///< <ip address=...>: the only source IPs the VM may use
  int line = 0;
};

/// One read-only layer of a disk's declared <backingStore> chain.
struct BackingLayer {
  bool block = false;   ///< <backingStore type='block'>
  std::string source;   ///< absolute path
  std::string format;   ///< raw or qcow2
  friend bool operator==(const BackingLayer&, const BackingLayer&) = default;
};

/// <disk type='file'|'block'>.
struct Disk {
  enum class Kind { kFile, kBlock };
  Kind kind = Kind::kFile;
  std::string device = "disk";  ///< disk or cdrom
  std::string source;           ///< absolute path; empty for an empty cdrom drive
  std::string format;           ///< <driver type=...>
  std::string target;           ///< <target dev=...>
  bool read_only = false;
  bool shareable = false;
  /// The declared backing chain, the layer right below the disk first. Empty: the image has
  /// no backing file, whatever its header says.
  std::vector<BackingLayer> backing;
  int line = 0;
};

/// <graphics type='vnc'>.
struct Vnc {
  std::string listen = "127.0.0.1";
  std::optional<int> port;  ///< fixed port (autoport='no'); otherwise a free display is chosen
  std::string password;     ///< empty: none
};

/// vmlaunch's own settings in <metadata><vmlaunch:vm xmlns:vmlaunch="urn:vmlaunch:domain:1">.
struct VmlaunchMeta {
  std::string zone;      ///< if set, every NIC's bridge must be this zone's bridge
  bool autostart = false;
  int start_order = 0;   ///< batch starts go in ascending order
};

/// A parsed domain.
struct Domain {
  VmName name;
  std::string uuid;
  std::string type;      ///< "kvm" or "qemu" (TCG)
  std::string emulator;  ///< absolute path from <devices><emulator>
  std::vector<Nic> nics;
  std::vector<Disk> disks;
  std::optional<Vnc> vnc;
  int serial_ptys = 0;
  /// Files named in <os> (<loader>, <kernel>, <initrd>, <dtb>): the only boot files besides
  /// QEMU's own firmware directories that a plan may name.
  std::vector<std::string> boot_files;
  VmlaunchMeta meta;
};

inline constexpr std::string_view kVmlaunchXmlns = "urn:vmlaunch:domain:1";
/// The largest domain XML document accepted.
inline constexpr size_t kMaxDomainBytes = 1 << 20;

/// Parses a domain XML document; `source` names it in messages ("file:line: problem").
Result<Domain> parse_domain(std::string_view xml, const std::string& source);
/// Reads and parses the file at path.
Result<Domain> load_domain(const std::string& path);

}  // namespace vl
