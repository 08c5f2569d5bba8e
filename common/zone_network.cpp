#include "common/zone_network.h"

namespace vl {

Result<void> resolve_networks(Domain& domain, const HostConfig& config) {
  for (Nic& nic : domain.nics) {
    if (nic.network.empty()) continue;
    const Zone* zone = config.zone_named(nic.network);
    if (!zone)
      return Error::make(ErrorCode::kNotFound, "line " + std::to_string(nic.line) + ": <source network=" +
                                                   quote_for_message(nic.network) + "> is not a zone of " +
                                                   config.source + " (vmlaunch's networks are its zones)");
    nic.bridge = zone->bridge;
  }
  return {};
}

std::map<std::string, std::string> zone_bridges(const HostConfig& config) {
  std::map<std::string, std::string> bridges;
  for (const Zone& zone : config.zones) bridges[zone.name] = zone.bridge;
  return bridges;
}

void resolve_nvram(Domain& domain, const HostConfig& config) {
  if (domain.uefi) domain.uefi->nvram = config.nvram_path(domain.name);
}

void resolve_vnc(Domain& domain, const HostConfig& config) {
  if (!domain.vnc) return;
  domain.vnc->socket = config.vnc_socket_path(domain.name);
  if (!config.vnc.tls) return;
  domain.vnc->tls_dir = config.vnc_tls_dir(domain.name);
  domain.vnc->tls_verify_client = config.vnc.verify_client;
}

}  // namespace vl
