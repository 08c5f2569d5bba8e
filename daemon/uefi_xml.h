// A UEFI domain's <os> as libvirt is given it: the firmware vmlaunch resolved (common/domain.h
// Uefi), with the variable store at vmlaunch's own path.
#pragma once

#include <string>
#include <string_view>

#include "common/domain.h"
#include "common/error.h"

namespace vl {

/// Rewrites <os> of `xml` for `uefi`: no firmware='efi' and no <firmware> (so libvirt does not
/// autoselect: it would pick Secure Boot firmware with SMM where vmlaunch resolved the plain
/// image), <loader readonly='yes' type='pflash'>CODE</loader> (other <loader> attributes such as
/// secure= kept) and <nvram template='TEMPLATE'>NVRAM</nvram>. libvirt's dry run then names
/// the store at uefi.nvram, which the argv policy accepts as pflash1. Parsed and written back
/// with libxml2, never edited as text. The plan cache key is computed over the result, so a
/// changed store path is a new conversion.
Result<std::string> uefi_xml_for_libvirt(std::string_view xml, const Uefi& uefi);

}  // namespace vl
