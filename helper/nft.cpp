#include "helper/nft.h"

#include <nftables/libnftables.h>

#include <memory>

#include "helper/nft_filter.h"

namespace vl::helper::nft {

namespace {

struct NftFree {
  void operator()(nft_ctx* ctx) const { nft_ctx_free(ctx); }
};

}  // namespace

Result<std::string> run(const std::string& input) {
  std::unique_ptr<nft_ctx, NftFree> ctx(nft_ctx_new(NFT_CTX_DEFAULT));
  if (!ctx) return Error::make(ErrorCode::kSystem, "nftables: cannot create context");
  // libnftables 1.0.6 parses JSON input only while JSON output is on.
  nft_ctx_output_set_flags(ctx.get(), NFT_CTX_OUTPUT_JSON);
  nft_ctx_buffer_output(ctx.get());
  nft_ctx_buffer_error(ctx.get());
  if (nft_run_cmd_from_buffer(ctx.get(), input.c_str()) != 0) {
    std::string err = nft_ctx_get_error_buffer(ctx.get());
    while (!err.empty() && err.back() == '\n') err.pop_back();
    return Error::make(ErrorCode::kSystem, "nftables: " + err);
  }
  return std::string(nft_ctx_get_output_buffer(ctx.get()));
}

Result<std::optional<Json>> list_table(const char* family) {
  auto listed = run(std::string("list table ") + family + " " + kNftTable);
  if (!listed) {
    if (listed.error().context.find("No such file or directory") != std::string::npos) return std::optional<Json>();
    return std::move(listed).error();
  }
  Json j = Json::parse(*listed, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("nftables") || !j["nftables"].is_array())
    return Error::make(ErrorCode::kSystem, "nftables: unreadable listing");
  return std::optional<Json>(std::move(j["nftables"]));
}

std::string chain_name(const std::string& vm) { return "vm-" + vm; }

Json table_ref(const char* family) { return {{"family", family}, {"table", kNftTable}}; }

Json with(Json base, const Json& extra) {
  for (auto& [k, v] : extra.items()) base[k] = v;
  return base;
}

Json command(const char* verb, const char* kind, Json object) {
  Json inner = Json::object();
  inner[kind] = std::move(object);
  Json outer = Json::object();
  outer[verb] = std::move(inner);
  return outer;
}

Json match(Json left, const std::string& op, Json right) {
  return {{"match", {{"op", op}, {"left", std::move(left)}, {"right", std::move(right)}}}};
}

Json payload(const char* protocol, const char* field) {
  return {{"payload", {{"protocol", protocol}, {"field", field}}}};
}

Json meta(const char* key) { return {{"meta", {{"key", key}}}}; }

}  // namespace vl::helper::nft
