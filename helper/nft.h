// libnftables, spoken in its JSON dialect: the one runner and the expression builders that the
// bridge filter (nft_filter.h) and the console rule (console_filter.h) share.
#pragma once

#include <optional>

#include <nlohmann/json.hpp>
#include <string>

#include "common/error.h"

namespace vl::helper::nft {

using Json = nlohmann::json;

/// Runs one JSON batch (atomic) or one text command; returns the (JSON) output.
Result<std::string> run(const std::string& input);

/// The items of vmlaunch's table in `family` ("nftables" of `list table`, an array), or nullopt
/// if the table does not exist.
Result<std::optional<Json>> list_table(const char* family);

/// The chain that holds VM `vm`'s rules, in either table.
std::string chain_name(const std::string& vm);

/// {"family": FAMILY, "table": "vmlaunch"}: the start of every object of vmlaunch's table.
Json table_ref(const char* family);
/// `base` with the members of `extra` added (or replaced).
Json with(Json base, const Json& extra);
/// {"VERB": {"KIND": OBJECT}}: one command of a batch.
Json command(const char* verb, const char* kind, Json object);
/// The match expression LEFT OP RIGHT.
Json match(Json left, const std::string& op, Json right);
/// A header field: {"payload": {"protocol": PROTOCOL, "field": FIELD}}.
Json payload(const char* protocol, const char* field);
/// A meta key: {"meta": {"key": KEY}}.
Json meta(const char* key);

}  // namespace vl::helper::nft
