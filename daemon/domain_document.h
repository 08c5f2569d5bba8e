// The domain XML as a libxml2 document, for the daemon's rewrites of what libvirt is given
// (daemon/converter.h, daemon/uefi_xml.h): read with the same safe options everywhere, changed
// as a tree, never as text, and written back.
#pragma once

#include <libxml/tree.h>

#include <memory>
#include <string>
#include <string_view>

#include "common/error.h"

namespace vl {

struct XmlDocFree {
  void operator()(xmlDoc* d) const { xmlFreeDoc(d); }
};
using XmlDocument = std::unique_ptr<xmlDoc, XmlDocFree>;

/// Parses `xml` as the domain parser reads it: nothing outside the document is loaded (no
/// network, no DOCTYPE: refused), libxml2 prints nothing, and the root must be <domain>.
Result<XmlDocument> read_domain_document(std::string_view xml);

/// The document serialized as UTF-8.
Result<std::string> write_domain_document(xmlDoc* doc);

/// True if `n` is the element `name` in no namespace.
bool is_domain_element(const xmlNode* n, const char* name);

}  // namespace vl
