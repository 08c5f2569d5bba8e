// libvirt networks as vmlaunch zones: <interface type='network'><source network='dmz'/> is
// attached to zone dmz's bridge.
//
// The daemon and the helper both resolve a domain's networks this way, each from the
// configuration it read itself; the helper's copy is the root-owned file, so what a network
// name means is decided there, never by the daemon.
#pragma once

#include <map>
#include <string>

#include "common/config.h"
#include "common/domain.h"

namespace vl {

/// Fills the bridge of every interface of type 'network' with its zone's bridge. Fails, naming
/// the interface's line and the configuration file, if a network is no zone.
Result<void> resolve_networks(Domain& domain, const HostConfig& config);

/// Sets a UEFI domain's variable store to the path the configuration derives for it
/// (HostConfig::nvram_path), the only store a plan may name. Like the networks, resolved by
/// each side from the configuration it read itself.
void resolve_nvram(Domain& domain, const HostConfig& config);

/// Points a VNC domain at its socket (HostConfig::vnc_socket_path), the only address a plan's
/// -vnc may name, and, with [vnc] tls on, its TLS credentials at the directory the helper
/// fills for it (HostConfig::vnc_tls_dir), the only one a plan's tls-creds-x509 object may name.
void resolve_vnc(Domain& domain, const HostConfig& config);

/// Zone name -> bridge, for rewriting the XML libvirt converts (converter.h).
std::map<std::string, std::string> zone_bridges(const HostConfig& config);

}  // namespace vl
