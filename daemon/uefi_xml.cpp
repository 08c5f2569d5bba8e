#include "daemon/uefi_xml.h"

#include <libxml/tree.h>

#include "daemon/domain_document.h"

namespace vl {

namespace {

const xmlChar* x(const char* s) { return reinterpret_cast<const xmlChar*>(s); }

}  // namespace

Result<std::string> uefi_xml_for_libvirt(std::string_view xml, const Uefi& uefi) {
  if (uefi.nvram.empty())
    return Error::make(ErrorCode::kInvalid, "UEFI needs a storage root for its variable store ([storage] roots is empty)");
  XmlDocument doc = VL_TRY(read_domain_document(xml));
  xmlNode* root = xmlDocGetRootElement(doc.get());
  xmlNode* os = nullptr;
  for (xmlNode* n = root->children; n; n = n->next)
    if (is_domain_element(n, "os")) os = n;
  if (!os) return Error::invalid("a UEFI domain has no <os>");
  xmlUnsetProp(os, x("firmware"));
  xmlNode* loader = nullptr;
  for (xmlNode* n = os->children; n;) {
    xmlNode* next = n->next;
    if (is_domain_element(n, "loader")) loader = n;
    if (is_domain_element(n, "firmware") || is_domain_element(n, "nvram")) {
      xmlUnlinkNode(n);
      xmlFreeNode(n);
    }
    n = next;
  }
  if (loader) {
    xmlNodeSetContent(loader, nullptr);
    xmlNodeAddContent(loader, x(uefi.code.c_str()));
  } else {
    loader = xmlNewTextChild(os, nullptr, x("loader"), x(uefi.code.c_str()));
  }
  xmlSetProp(loader, x("readonly"), x("yes"));
  xmlSetProp(loader, x("type"), x("pflash"));
  xmlNode* nvram = xmlNewTextChild(os, nullptr, x("nvram"), x(uefi.nvram.c_str()));
  xmlSetProp(nvram, x("template"), x(uefi.vars_template.c_str()));
  return write_domain_document(doc.get());
}

}  // namespace vl
