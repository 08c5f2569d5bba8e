// What the kernel says, read without any vmlaunch code: links (route netlink through libnl),
// the nftables table `bridge vmlaunch` (libnftables, JSON), and processes (/proc). The chaos
// suite compares this with what the daemon reports.
//
// Links and nftables are per network namespace: call from the thread that entered the test's
// namespace.
#pragma once

#include <dirent.h>
#include <net/if.h>
#include <netlink/netlink.h>
#include <netlink/route/link.h>
#include <nftables/libnftables.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace vl::chaos {

struct Link {
  std::string name;
  int ifindex = 0;
  int master = 0;     ///< ifindex of its bridge, 0 if none
  bool up = false;    ///< IFF_UP
  std::string kind;   ///< IFLA_INFO_KIND ("bridge", "tun", ...) or empty
};

/// Every link of the current network namespace, by name. `error` is set if netlink failed.
inline std::map<std::string, Link> read_links(std::string& error) {
  std::map<std::string, Link> links;
  nl_sock* sock = nl_socket_alloc();
  nl_cache* cache = nullptr;
  int rc = sock ? nl_connect(sock, NETLINK_ROUTE) : -NLE_NOMEM;
  if (rc == 0) rc = rtnl_link_alloc_cache(sock, AF_UNSPEC, &cache);
  if (rc < 0) {
    error = std::string("netlink: ") + nl_geterror(rc);
  } else {
    for (nl_object* o = nl_cache_get_first(cache); o; o = nl_cache_get_next(o)) {
      auto* l = reinterpret_cast<rtnl_link*>(o);
      Link link;
      link.name = rtnl_link_get_name(l) ? rtnl_link_get_name(l) : "";
      link.ifindex = rtnl_link_get_ifindex(l);
      link.master = rtnl_link_get_master(l);
      link.up = (rtnl_link_get_flags(l) & IFF_UP) != 0;
      link.kind = rtnl_link_get_type(l) ? rtnl_link_get_type(l) : "";
      links[link.name] = link;
    }
  }
  if (cache) nl_cache_free(cache);
  if (sock) nl_socket_free(sock);
  return links;
}

struct NftView {
  bool table = false;                          ///< `bridge vmlaunch` exists
  std::set<std::string> chains;                ///< its chains
  std::map<std::string, std::string> tap_map;  ///< elements of its map `taps`: tap -> jump target
};

/// The table `bridge vmlaunch`; `error` is set if libnftables failed other than by its absence.
inline NftView read_nft(std::string& error) {
  NftView view;
  nft_ctx* ctx = nft_ctx_new(NFT_CTX_DEFAULT);
  if (!ctx) {
    error = "nft_ctx_new failed";
    return view;
  }
  nft_ctx_output_set_flags(ctx, NFT_CTX_OUTPUT_JSON);
  nft_ctx_buffer_output(ctx);
  nft_ctx_buffer_error(ctx);
  int rc = nft_run_cmd_from_buffer(ctx, "list table bridge vmlaunch");
  // Each get hands over the buffer and starts a new one: call once.
  const char* out_buffer = nft_ctx_get_output_buffer(ctx);
  const char* err_buffer = nft_ctx_get_error_buffer(ctx);
  std::string out = out_buffer ? out_buffer : "", err = err_buffer ? err_buffer : "";
  nft_ctx_free(ctx);
  if (rc != 0) {
    if (err.find("No such file or directory") == std::string::npos) error = "nft: " + err;
    return view;
  }
  auto j = nlohmann::json::parse(out, nullptr, false);
  if (!j.is_object() || !j.contains("nftables")) {
    error = "nft: unparsable JSON: " + out.substr(0, 200);
    return view;
  }
  view.table = true;
  for (const auto& item : j["nftables"]) {
    if (item.contains("chain")) view.chains.insert(item["chain"].value("name", ""));
    if (item.contains("map") && item["map"].value("name", "") == "taps" && item["map"].contains("elem")) {
      for (const auto& e : item["map"]["elem"]) {
        // [key, verdict]; a key with a counter or comment is wrapped in {"elem": {"val": key}}.
        if (!e.is_array() || e.size() != 2) continue;
        const auto& key = e[0].is_object() && e[0].contains("elem") ? e[0]["elem"]["val"] : e[0];
        std::string target;
        for (const char* verdict : {"jump", "goto"})
          if (e[1].contains(verdict)) target = e[1][verdict].value("target", "");
        if (key.is_string()) view.tap_map[key.get<std::string>()] = target;
      }
    }
  }
  return view;
}

struct Proc {
  pid_t pid = 0;
  uid_t uid = 0;      ///< real uid
  char state = '?';   ///< /proc/PID/stat state: R, S, Z, ...
  int threads = 0;
  std::string exe;    ///< "" if unreadable (kernel threads, zombies)
  std::string cmdline;  ///< NULs shown as spaces
};

/// Every process on the host.
inline std::vector<Proc> read_procs() {
  std::vector<Proc> procs;
  DIR* d = ::opendir("/proc");
  if (!d) return procs;
  while (dirent* e = ::readdir(d)) {
    char* end = nullptr;
    long pid = std::strtol(e->d_name, &end, 10);
    if (*end != '\0' || pid <= 0) continue;
    std::string base = "/proc/" + std::string(e->d_name);
    std::ifstream status(base + "/status");
    if (!status) continue;
    Proc p;
    p.pid = static_cast<pid_t>(pid);
    std::string line;
    while (std::getline(status, line)) {
      if (line.rfind("Uid:", 0) == 0) p.uid = static_cast<uid_t>(std::stoul(line.substr(4)));
      else if (line.rfind("State:", 0) == 0 && line.size() > 7) p.state = line[line.find_first_not_of(" \t", 6)];
      else if (line.rfind("Threads:", 0) == 0) p.threads = std::stoi(line.substr(8));
    }
    char buf[4096];
    ssize_t n = ::readlink((base + "/exe").c_str(), buf, sizeof buf - 1);
    if (n > 0) p.exe.assign(buf, static_cast<size_t>(n));
    std::ifstream cmd(base + "/cmdline");
    std::stringstream ss;
    ss << cmd.rdbuf();
    p.cmdline = ss.str();
    for (char& c : p.cmdline)
      if (c == '\0') c = ' ';
    procs.push_back(std::move(p));
  }
  ::closedir(d);
  return procs;
}

}  // namespace vl::chaos
