// Domain XML -> QEMU command line, by running vmlaunch-convert (libvirt's embedded QEMU
// driver in a private user and network namespace; see convert_main.cpp).
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <string>

#include "daemon/asio.h"

#include "common/error.h"

namespace vl {

/// Where vmlaunch-convert is: $VMLAUNCH_CONVERTER, else next to the running program, else
/// the installed one.
std::string converter_path();

/// The domain XML as libvirt is given it: `xml` without the elements only vmlaunch reads, which
/// are the <ip> children of <devices><interface> (libvirt refuses them for QEMU guests: "not
/// supported by QEMU"; vmlaunch reads them as the addresses a VM may send from) and the
/// <encryption> of <devices><disk> (libvirt would need the secret from its own store; the
/// rewrite adds the LUKS layer, daemon/qemu_argv.h). The document
/// is parsed and written back with libxml2, never edited as text; without such elements it is
/// returned unchanged. Plans are still keyed by the original XML (plan_cache.h).
/// An <interface type='network'> becomes type='bridge' on its zone's bridge from `zone_bridges`
/// (zone_network.h): the embedded driver has no networks. The bridge's name never reaches the
/// command line (taps are passed as fds), so the cache key need not cover it.
Result<std::string> xml_for_libvirt(std::string_view xml, const std::map<std::string, std::string>& zone_bridges = {});

/// Converts `xml` (after xml_for_libvirt) with the embed root `embed_root` (created if missing; the caller holds its
/// lock). Returns the native command line as libvirt prints it.
Result<std::string> convert_to_native(const std::string& xml, const std::string& embed_root,
                                      std::chrono::milliseconds timeout,
                                      const std::map<std::string, std::string>& zone_bridges = {});

/// kBackground: the converter runs at the lowest CPU priority (nice 19), for conversions no
/// one waits for yet (pre-plans), so that they never slow the VMs or a start.
enum class ConvertPriority { kNormal, kBackground };

/// The same without blocking: the converter's output is read on `io`, `done` runs there.
void convert_to_native_async(boost::asio::io_context& io, const std::string& xml, const std::string& embed_root,
                             std::chrono::milliseconds timeout, std::function<void(Result<std::string>)> done,
                             const std::map<std::string, std::string>& zone_bridges = {},
                             ConvertPriority priority = ConvertPriority::kNormal);

/// What identifies the libvirt the converter uses (version, library file), for cache keys.
Result<std::string> libvirt_identity();

}  // namespace vl
