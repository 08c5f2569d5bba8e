#include "daemon/domain_document.h"

#include <libxml/parser.h>

namespace vl {

namespace {

void ignore_xml_error(void*, xmlError*) {}

}  // namespace

Result<XmlDocument> read_domain_document(std::string_view xml) {
  xmlSetStructuredErrorFunc(nullptr, ignore_xml_error);
  constexpr int kOptions = XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING;
  XmlDocument doc(xmlReadMemory(xml.data(), static_cast<int>(xml.size()), "domain.xml", nullptr, kOptions));
  if (!doc) return Error::invalid("domain XML is not well-formed");
  if (doc->intSubset || doc->extSubset) return Error::invalid("a DOCTYPE is not allowed in domain XML");
  xmlNode* root = xmlDocGetRootElement(doc.get());
  if (!root || !is_domain_element(root, "domain")) return Error::invalid("domain XML has no <domain> root element");
  return doc;
}

Result<std::string> write_domain_document(xmlDoc* doc) {
  xmlChar* out = nullptr;
  int size = 0;
  xmlDocDumpMemoryEnc(doc, &out, &size, "UTF-8");
  if (!out) return Error::make(ErrorCode::kInternal, "cannot serialize domain XML");
  std::string result(reinterpret_cast<const char*>(out), static_cast<size_t>(size));
  xmlFree(out);
  return result;
}

bool is_domain_element(const xmlNode* n, const char* name) {
  return n->type == XML_ELEMENT_NODE && !n->ns && xmlStrEqual(n->name, reinterpret_cast<const xmlChar*>(name));
}

}  // namespace vl
