#include "helper/console_filter.h"

#include <nlohmann/json.hpp>

#include "helper/nft.h"
#include "helper/nft_filter.h"

namespace vl::helper {

namespace {

using Json = nlohmann::json;

constexpr char kFamily[] = "inet";
constexpr char kPortMap[] = "consoles";

using nft::chain_name;
using nft::command;
using nft::with;

Json table_ref() { return nft::table_ref(kFamily); }

struct VmObjects {
  bool table = false;
  bool others = false;  // other VMs' chains or map elements
  bool chain = false;
  std::vector<int> ports;  // map keys that jump to the VM's chain
};

Result<VmObjects> find_vm_objects(const std::string& vm) {
  VmObjects found;
  auto items = VL_TRY(nft::list_table(kFamily));
  if (!items) return found;
  found.table = true;
  for (const Json& item : *items) {
    if (item.contains("chain")) {
      std::string name = item["chain"].value("name", "");
      if (name == chain_name(vm)) found.chain = true;
      else if (name.rfind("vm-", 0) == 0) found.others = true;
    }
    if (item.contains("map") && item["map"].value("name", "") == kPortMap && item["map"].contains("elem")) {
      for (const Json& elem : item["map"]["elem"]) {
        if (!elem.is_array() || elem.size() != 2 || !elem[0].is_number_integer()) continue;
        const Json& verdict = elem[1];
        std::string target = verdict.contains("jump") ? verdict["jump"].value("target", "") : "";
        if (target == chain_name(vm)) found.ports.push_back(elem[0].get<int>());
        else found.others = true;
      }
    }
  }
  return found;
}

void add_removal(Json& batch, const std::string& vm, const VmObjects& objects) {
  if (!objects.ports.empty())
    batch.push_back(command("delete", "element", with(table_ref(), {{"name", kPortMap}, {"elem", objects.ports}})));
  if (objects.chain) {
    batch.push_back(command("flush", "chain", with(table_ref(), {{"name", chain_name(vm)}})));
    batch.push_back(command("delete", "chain", with(table_ref(), {{"name", chain_name(vm)}})));
  }
}

}  // namespace

Result<void> remove_console_filter(const std::string& vm) {
  VmObjects existing = VL_TRY(find_vm_objects(vm));
  if (!existing.table) return {};
  Json batch = Json::array();
  if (existing.others) {
    if (!existing.chain && existing.ports.empty()) return {};
    add_removal(batch, vm, existing);
  } else {
    // The last VM is gone: leave no vmlaunch table behind.
    batch.push_back(command("delete", "table", {{"family", kFamily}, {"name", kNftTable}}));
  }
  Json doc = {{"nftables", batch}};
  auto ran = nft::run(doc.dump());
  if (!ran) return ran.error().wrap("remove console rule of '" + vm + "'");
  return {};
}

}  // namespace vl::helper
