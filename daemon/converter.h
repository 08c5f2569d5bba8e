// Domain XML -> QEMU command line, by running vmlaunch-convert (libvirt's embedded QEMU
// driver in a private user and network namespace; see convert_main.cpp).
#pragma once

#include <chrono>
#include <functional>
#include <string>

#include "daemon/asio.h"

#include "common/error.h"

namespace vl {

/// Where vmlaunch-convert is: $VMLAUNCH_CONVERTER, else next to the running program, else
/// the installed one.
std::string converter_path();

/// Converts `xml` with the embed root `embed_root` (created if missing; the caller holds its
/// lock). Returns the native command line as libvirt prints it.
Result<std::string> convert_to_native(const std::string& xml, const std::string& embed_root,
                                      std::chrono::milliseconds timeout);

/// The same without blocking: the converter's output is read on `io`, `done` runs there.
void convert_to_native_async(boost::asio::io_context& io, const std::string& xml, const std::string& embed_root,
                             std::chrono::milliseconds timeout, std::function<void(Result<std::string>)> done);

/// What identifies the libvirt the converter uses (version, library file), for cache keys.
Result<std::string> libvirt_identity();

}  // namespace vl
