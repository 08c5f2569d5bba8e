#include "daemon/uefi_xml.h"

#include <libxml/parser.h>
#include <libxml/tree.h>

#include <memory>

namespace vl {

namespace {

struct XmlDocFree {
  void operator()(xmlDoc* d) const { xmlFreeDoc(d); }
};

const xmlChar* x(const char* s) { return reinterpret_cast<const xmlChar*>(s); }

bool is_element(const xmlNode* n, const char* name) {
  return n->type == XML_ELEMENT_NODE && !n->ns && xmlStrEqual(n->name, x(name));
}

void ignore_xml_error(void*, xmlError*) {}

}  // namespace

Result<std::string> uefi_xml_for_libvirt(std::string_view xml, const Uefi& uefi) {
  if (uefi.nvram.empty())
    return Error::make(ErrorCode::kInvalid, "UEFI needs a storage root for its variable store ([storage] roots is empty)");
  xmlSetStructuredErrorFunc(nullptr, ignore_xml_error);
  constexpr int kOptions = XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING;
  std::unique_ptr<xmlDoc, XmlDocFree> doc(
      xmlReadMemory(xml.data(), static_cast<int>(xml.size()), "domain.xml", nullptr, kOptions));
  if (!doc) return Error::invalid("domain XML is not well-formed");
  if (doc->intSubset || doc->extSubset) return Error::invalid("a DOCTYPE is not allowed in domain XML");
  xmlNode* root = xmlDocGetRootElement(doc.get());
  if (!root || !is_element(root, "domain")) return Error::invalid("domain XML has no <domain> root element");
  xmlNode* os = nullptr;
  for (xmlNode* n = root->children; n; n = n->next)
    if (is_element(n, "os")) os = n;
  if (!os) return Error::invalid("a UEFI domain has no <os>");
  xmlUnsetProp(os, x("firmware"));
  xmlNode* loader = nullptr;
  for (xmlNode* n = os->children; n;) {
    xmlNode* next = n->next;
    if (is_element(n, "loader")) loader = n;
    if (is_element(n, "firmware") || is_element(n, "nvram")) {
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
  xmlChar* out = nullptr;
  int size = 0;
  xmlDocDumpMemoryEnc(doc.get(), &out, &size, "UTF-8");
  if (!out) return Error::make(ErrorCode::kInternal, "cannot serialize domain XML");
  std::string result(reinterpret_cast<const char*>(out), static_cast<size_t>(size));
  xmlFree(out);
  return result;
}

}  // namespace vl
