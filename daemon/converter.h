// Domain XML -> QEMU command line, by libvirt's embedded QEMU driver.
//
// libvirt 9 insists on creating a tap device for every <interface> even in a dry run, so the
// conversion runs in a forked child inside a private user and network namespace, where it
// may create (and immediately lose) taps without any host privilege. The kernel refuses
// unshare(CLONE_NEWUSER) in a multithreaded process, and libvirt starts threads, so libvirt
// is only ever loaded in that child; the caller stays single-threaded and libvirt-free.
#pragma once

#include <chrono>
#include <string>

#include "common/error.h"

namespace vl {

/// Runs virConnectDomainXMLToNative("qemu-argv") on `xml` with the embed root `embed_root`
/// (created if missing; it must not be used by another conversion at the same time, the
/// caller holds its lock). Returns the native command line as libvirt prints it.
Result<std::string> convert_to_native(const std::string& xml, const std::string& embed_root,
                                      std::chrono::milliseconds timeout);

/// Identifies the libvirt library in use (path, inode, size, mtime), for plan cache keys:
/// a libvirt upgrade changes it without anyone calling into libvirt.
std::string libvirt_identity();

}  // namespace vl
