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

/// An address of <interface><ip address=... family=... prefix=...>: one the VM may send from.
struct IpAddress {
  enum class Family : uint8_t { kIpv4, kIpv6 };
  Family family = Family::kIpv4;
  std::array<uint8_t, 16> bytes{};  ///< network byte order; IPv4 uses the first 4
  int prefix = -1;                  ///< <ip prefix=...>; -1 if not given. Not used for filtering.
  /// Parses "192.0.2.10" or "2001:db8::10" (nothing else: no zone index, no prefix suffix).
  /// `family` is libvirt's attribute: "ipv4", "ipv6", or empty to take it from the text.
  /// Rejects addresses no host may send from: unspecified, loopback, multicast, the IPv4
  /// broadcast and 0.0.0.0/8, and IPv4-mapped IPv6.
  static Result<IpAddress> parse(std::string_view text, std::string_view family = "");
  bool is_v6() const { return family == Family::kIpv6; }
  std::string str() const;  ///< canonical text (inet_ntop)
  friend bool operator==(const IpAddress& a, const IpAddress& b) {
    return a.family == b.family && a.bytes == b.bytes;
  }
};

/// The IPv6 link-local address a guest derives from `mac` by modified EUI-64 (RFC 4291
/// appendix A): fe80::XXXX:XXff:feXX:XXXX with the universal/local bit flipped.
IpAddress eui64_link_local(const MacAddress& mac);

/// <address type='pci' domain=... bus=... slot=... function=... multifunction=...>.
struct PciAddress {
  unsigned bus = 0;       ///< 0-255 (the PCI domain must be 0)
  unsigned slot = 0;      ///< 0-31
  unsigned function = 0;  ///< 0-7
  bool multifunction = false;
  friend bool operator==(const PciAddress&, const PciAddress&) = default;
};

/// One offload switch of <driver><host .../><guest .../></driver>, as the QEMU virtio-net
/// property it becomes ("csum", "host_tso4", "guest_ecn"...).
struct NicOffload {
  std::string property;
  bool on = true;
  friend bool operator==(const NicOffload&, const NicOffload&) = default;
};

/// <interface type='bridge'>, or <interface type='network'> naming a zone. libvirt's
/// domxml-to-native keeps only model and MAC of an interface; the daemon puts back every other
/// setting read here (daemon/qemu_argv.h), and the parser refuses, by name, every setting it
/// cannot put back.
struct Nic {
  MacAddress mac;
  /// <source bridge=...>; for type='network', the zone's bridge once resolve_networks() has
  /// looked it up in the host configuration (empty until then).
  std::string bridge;
  std::string network;              ///< <source network=...> of type='network'; empty for 'bridge'

  std::string model;                ///< <model type=...>, may be empty
  std::optional<PciAddress> pci;    ///< <address type='pci' .../>
  std::optional<int> boot_order;    ///< <boot order=.../>
  std::optional<int> rx_queue_size; ///< <driver rx_queue_size=.../> (virtio only)
  std::optional<int> tx_queue_size; ///< <driver tx_queue_size=.../> (virtio only)
  std::vector<NicOffload> offloads; ///< <driver><host/><guest/></driver> (virtio only)
  std::optional<bool> rom_bar;      ///< <rom bar='on|off'/>
  bool rom_disabled = false;        ///< <rom enabled='no'/>
  std::string alias;                ///< <alias name='ua-...'/>, "" if none
  /// <ip address=...>: if any are given, the only addresses the VM may send from on this
  /// interface (besides its EUI-64 link-local address); none: addresses are not filtered.
  std::vector<IpAddress> ips;
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
  /// <encryption format='luks'>: the image is LUKS-encrypted and QEMU's own LUKS driver opens
  /// it (a raw disk with a LUKS header, or a qcow2 image with LUKS encryption inside). The
  /// passphrase is never in the XML: the helper reads it for the launch (helper/disk_secret.h).
  bool luks = false;
  /// The declared backing chain, the layer right below the disk first. Empty: the image has
  /// no backing file, whatever its header says.
  std::vector<BackingLayer> backing;
  int line = 0;
};

/// Whether any disk of `disks` is encrypted (Disk::luks).
bool has_encrypted_disk(const std::vector<Disk>& disks);

/// <graphics type='vnc'>.
/// The emulator runs in a network namespace of its own (helper/net_namespace.h), so VNC is
/// never on TCP: QEMU listens on a Unix socket that only root and the daemon's group reach,
/// and operators use `vmctl vnc`. The XML may say where libvirt would have listened only if
/// that was the loopback or a socket; a fixed port or any other address is refused by name.
struct Vnc {
  std::string password;     ///< empty: none
  /// The socket QEMU binds (HostConfig::vnc_socket_path). Never from the XML: set from the
  /// configuration by resolve_vnc (zone_network.h).
  std::string socket;
  /// VNC over TLS: the VM's credentials directory (HostConfig::vnc_tls_dir), empty for none.
  /// Never from the XML: set from the configuration by resolve_vnc (zone_network.h).
  std::string tls_dir;
  bool tls_verify_client = false;
};

/// vmlaunch's own settings in <metadata><vmlaunch:vm xmlns:vmlaunch="urn:vmlaunch:domain:1">.
struct VmlaunchMeta {
  std::string zone;      ///< if set, every NIC's bridge must be this zone's bridge
  bool autostart = false;
  int start_order = 0;   ///< batch starts go in ascending order
};

/// A parsed domain.
/// UEFI firmware: QEMU's pflash pair. The code image is mapped read-only; the variable store
/// (NVRAM) is a per-VM file that the helper creates from the template and owns by the VM's uid.
/// Its path is vmlaunch's (Config::nvram_path), never the XML's <nvram> text.
struct Uefi {
  std::string code;           ///< pflash0: <loader type='pflash'>, or OVMF_CODE_4M.fd when autoselected
  std::string vars_template;  ///< <nvram template=...>, or the code image's Debian pair
  std::string nvram;          ///< the per-VM store; empty until set from the config (set_nvram_path)
};

/// The Debian `ovmf` images firmware autoselection picks (no Secure Boot, 4 MiB flash).
inline constexpr std::string_view kOvmfCode = "/usr/share/OVMF/OVMF_CODE_4M.fd";
inline constexpr std::string_view kOvmfVars = "/usr/share/OVMF/OVMF_VARS_4M.fd";

struct Domain {
  VmName name;
  std::string uuid;
  std::string type;      ///< "kvm" or "qemu" (TCG)
  std::string emulator;  ///< absolute path from <devices><emulator>
  std::vector<Nic> nics;
  std::vector<Disk> disks;
  std::optional<Vnc> vnc;
  /// <serial type='pty'> devices; 1 for a domain with none but a pty <console> on a serial
  /// target (libvirt's serial port 0).
  int serial_ptys = 0;
  /// Files named in <os> (<loader>, <kernel>, <initrd>, <dtb>): the only boot files besides
  /// QEMU's own firmware directories that a plan may name.
  std::vector<std::string> boot_files;
  VmlaunchMeta meta;
  /// <channel type='unix'> with <target type='virtio' name='org.qemu.guest_agent.0'/>: QEMU's
  /// guest agent. Its host end is RUNTIME/vms/NAME/agent.sock, bound by the helper, whatever
  /// <source path> says (libvirt's own location for it).
  bool guest_agent = false;
  /// <os firmware='efi'> or <loader type='pflash'>: boots UEFI with a per-VM NVRAM file.
  std::optional<Uefi> uefi;
};

/// The virtio-serial port name of QEMU's guest agent.
inline constexpr std::string_view kGuestAgentChannel = "org.qemu.guest_agent.0";

inline constexpr std::string_view kVmlaunchXmlns = "urn:vmlaunch:domain:1";
/// The most <ip> addresses one interface may declare.
inline constexpr size_t kMaxIpsPerNic = 64;
/// The largest domain XML document accepted.
inline constexpr size_t kMaxDomainBytes = 1 << 20;

/// Parses a domain XML document; `source` names it in messages ("file:line: problem").
Result<Domain> parse_domain(std::string_view xml, const std::string& source);
/// Reads and parses the file at path.
Result<Domain> load_domain(const std::string& path);

}  // namespace vl
