// The host configuration, /etc/vmlaunch/vmlaunch.toml.
//
// Root-owned and authoritative: the helper re-reads it for every privileged decision (which
// bridges are zones, which uids VMs get, where disks may live, which emulators may run).
// Parsing is strict: an unknown key, a wrong type, a relative path or an overlapping range is
// an error naming the file, the line and the key.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/vm_name.h"

namespace vl {

/// A security zone: a name operators use and the bridge its VMs are attached to.
struct Zone {
  std::string name;
  std::string bridge;
};

/// The uids handed out to VMs: [first, first + count).
struct UidRange {
  uint32_t first = 70000;
  uint32_t count = 10000;
  bool contains(uint32_t uid) const { return uid >= first && uid - first < count; }
};

/// What clients of the daemon's control socket may cost it ([control] in vmlaunch.toml). Root
/// is never refused: the helper's launch asks for plans as root.
struct ControlLimits {
  uint32_t max_connections = 64;          ///< connections of admitted non-root clients at once
  uint32_t max_connections_per_uid = 16;  ///< of those, per uid
  uint32_t max_message_kib = 1024;        ///< the largest message a client may send
  uint32_t message_timeout = 10;          ///< seconds for the handshake, and for each message once begun
};

/// The TLS listener for remote clients ([tls] in vmlaunch.toml); off while `listen` is empty.
struct TlsConfig {
  std::string listen;  ///< "ADDRESS:PORT", e.g. "0.0.0.0:16514" or "[::1]:16514"
  std::string cert = "/etc/pki/vmlaunch/servercert.pem";
  std::string key = "/etc/pki/vmlaunch/private/serverkey.pem";
  std::string ca = "/etc/pki/vmlaunch/cacert.pem";
  /// Client certificate subject DNs (RFC 2253, `*` wildcards) granted each role.
  std::vector<std::string> admin_dns, readonly_dns;
};

/// VNC over TLS ([vnc] in vmlaunch.toml), libvirt's vnc_tls: off unless `tls` is true, and
/// then for every VM with <graphics type='vnc'>. The server identity is read by root from
/// `tls_dir` (or `tls_dir/NAME/` if that directory exists): ca-cert.pem, server-cert.pem and
/// server-key.pem, the names QEMU's tls-creds-x509 reads. The helper copies them for each
/// launch into HostConfig::vnc_tls_dir, readable by the VM's uid alone.
struct VncTlsConfig {
  bool tls = false;
  std::string tls_dir = "/etc/pki/vmlaunch-vnc";
  bool verify_client = false;  ///< tls_verify_client: clients need a certificate from the CA
};

/// A host and port parsed from "HOST:PORT" or "[V6ADDR]:PORT"; nullopt if malformed (a host
/// of other than letters, digits, '.', '-', '_' and ':', or starting with '-'). A missing
/// ":PORT" gives `default_port` (0: the port is required).
struct HostPort {
  std::string host;
  uint16_t port = 0;
};
std::optional<HostPort> split_host_port(std::string_view text, uint16_t default_port);
/// The size of each of the serial log's two parts (helper/serial_log.h).
inline constexpr size_t kSerialLogPartBytes = size_t{1} << 20;

/// Everything vmlaunch.toml can say, with the documented defaults filled in.
struct HostConfig {
  std::string source;  ///< the file it was read from, for messages

  std::string domains_dir = "/etc/vmlaunch/domains";
  std::string keys_dir = "/etc/vmlaunch/keys";  ///< [paths] keys: KEYS/NAME.key, encrypted disks' passphrases
  std::string runtime_dir = "/run/vmlaunch";
  std::string state_dir = "/var/lib/vmlaunch";
  std::string cache_dir = "/var/cache/vmlaunch";
  std::string log_dir = "/var/log/vmlaunch";
  std::string udev_rules_dir = "/run/udev/rules.d";
  std::string userdb_dir = "/run/userdb";

  std::string daemon_user = "vmlaunch";
  std::string daemon_group = "vmlaunch";
  std::string admin_group = "vmlaunch-admin";
  std::string readonly_group;  ///< [control] readonly_group: may List and Status; "" for none
  std::string vm_group = "kvm";

  UidRange uids;
  std::vector<std::string> storage_roots = {"/var/lib/vmlaunch/images"};
  std::vector<std::string> emulators = {"/usr/bin/qemu-system-x86_64"};
  std::vector<Zone> zones;
  ControlLimits control;
  TlsConfig tls;
  VncTlsConfig vnc;

  const Zone* zone_named(std::string_view name) const;
  const Zone* zone_of_bridge(std::string_view bridge) const;
  bool emulator_allowed(std::string_view path) const;

  std::string domain_xml_path(const VmName& vm) const { return domains_dir + "/" + vm.str() + ".xml"; }
  std::string key_file_path(const VmName& vm) const { return keys_dir + "/" + vm.str() + ".key"; }
  std::string control_socket() const { return runtime_dir + "/control.sock"; }
  std::string helper_socket() const { return runtime_dir + "/helper.sock"; }
  std::string vm_runtime_dir(const VmName& vm) const { return runtime_dir + "/vms/" + vm.str(); }
  /// The first serial port's output, from the first byte (helper/serial_log.h); the previous
  /// part, once it filled, is serial_log_path(vm) + ".1".
  std::string serial_log_path(const VmName& vm) const { return log_dir + "/" + vm.str() + ".serial.log"; }
  std::string uid_map_path() const { return state_dir + "/uids"; }
  std::string disk_journal_path(const VmName& vm) const { return state_dir + "/disks/" + vm.str() + ".json"; }
  /// A UEFI VM's variable store: created by the helper from the firmware's template, owned by
  /// the VM's uid, kept across starts. Never taken from the domain XML or the plan. It lives
  /// under the first storage root because the emulator opens it by path as the VM's uid, and
  /// state_dir is root's alone (0700). Empty when no storage root is configured.
  std::string nvram_dir() const { return storage_roots.empty() ? std::string() : storage_roots.front() + "/nvram"; }
  std::string nvram_path(const VmName& vm) const {
    return storage_roots.empty() ? std::string() : nvram_dir() + "/" + vm.str() + "_VARS.fd";
  }
  /// A launched VM's copy of the VNC TLS credentials (helper/vnc_tls.h): the directory its
  /// plan's tls-creds-x509 object must name. Outside vms/NAME, which the VM's uid cannot enter.
  std::string vnc_tls_dir(const VmName& vm) const { return runtime_dir + "/vnc-tls/" + vm.str(); }
  /// The directory in which a VM's emulator binds its VNC socket (helper/vnc_socket.h): the
  /// VM's uid must create the socket there, so it cannot be vms/NAME, which that uid cannot
  /// enter. vnc_socket_path is the one -vnc address a plan may have.
  std::string vnc_socket_dir(const VmName& vm) const { return runtime_dir + "/vnc/" + vm.str(); }
  std::string vnc_socket_path(const VmName& vm) const { return vnc_socket_dir(vm) + "/vnc.sock"; }
  std::string udev_rule_path(const VmName& vm) const {
    return udev_rules_dir + "/90-vmlaunch-" + vm.str() + ".rules";
  }
};

/// Parses TOML text; `source` names the file in messages.
Result<HostConfig> parse_config(std::string_view text, const std::string& source);
/// Reads and parses the file at path.
Result<HostConfig> load_config(const std::string& path);

/// True for a network interface name the kernel accepts: 1-15 bytes of [A-Za-z0-9_.-],
/// not "." or "..".
bool is_valid_ifname(std::string_view name);

}  // namespace vl
