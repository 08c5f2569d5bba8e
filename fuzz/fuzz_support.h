// What the fuzz targets share: a property check that stops the run, and the fixed domain the
// command-line targets check their fuzzed argv against.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "common/domain.h"

/// A property every input must keep. A violation is a finding like a crash: it aborts, so
/// libFuzzer saves the input.
#define FUZZ_CHECK(cond)                                                              \
  do {                                                                                \
    if (!(cond)) {                                                                    \
      std::fprintf(stderr, "%s:%d: property violated: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                   \
    }                                                                                 \
  } while (0)

namespace vl::fuzz {

inline std::string_view as_text(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

/// A domain shaped like the ones the tests use: a qcow2 disk, a cdrom, one NIC, VNC with a
/// password, one serial pty. Fuzzed command lines are checked against it.
inline const Domain& sample_domain() {
  static const Domain domain = [] {
    auto d = parse_domain(
        "<domain type='qemu'><name>web1</name><uuid>6a3c5e1e-1111-2222-3333-444455556666</uuid><devices>"
        "<emulator>/usr/bin/qemu-system-x86_64</emulator>"
        "<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/srv/vm/web1.qcow2'/>"
        "<target dev='vda' bus='virtio'/></disk>"
        "<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='/srv/iso/inst.iso'/>"
        "<target dev='hdc' bus='ide'/><readonly/></disk>"
        "<interface type='bridge'><mac address='52:54:00:00:00:01'/><source bridge='br-dmz'/></interface>"
        "<graphics type='vnc' passwd='secret'/><serial type='pty'/></devices></domain>",
        "sample.xml");
    if (!d) {
      std::fprintf(stderr, "fuzz: sample domain does not parse: %s\n", d.error().message().c_str());
      std::abort();
    }
    // What resolve_vnc gives it from the default configuration.
    d->vnc->socket = "/run/vmlaunch/vnc/web1/vnc.sock";
    return std::move(d).value();
  }();
  return domain;
}

}  // namespace vl::fuzz
