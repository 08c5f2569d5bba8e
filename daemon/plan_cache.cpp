#include "daemon/plan_cache.h"

#include <nettle/sha2.h>
#include <sys/stat.h>

#include <cstdio>

#include "common/sys.h"
#include "daemon/qemu_argv.h"

namespace vl {

namespace {

void hash_field(sha256_ctx& ctx, std::string_view field) {
  // Length-prefixed, so that no two different field sequences hash the same bytes.
  uint64_t len = field.size();
  sha256_update(&ctx, sizeof len, reinterpret_cast<const uint8_t*>(&len));
  sha256_update(&ctx, field.size(), reinterpret_cast<const uint8_t*>(field.data()));
}

}  // namespace

Result<std::string> plan_cache_key(std::string_view xml, const std::string& emulator,
                                   const std::string& libvirt_id) {
  struct stat st {};
  if (::stat(emulator.c_str(), &st) < 0) return Error::from_errno("emulator '" + emulator + "'");
  std::string emulator_id = emulator + " " + std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino) +
                            " " + std::to_string(st.st_size) + " " + std::to_string(st.st_mtim.tv_sec) +
                            "." + std::to_string(st.st_mtim.tv_nsec);
  sha256_ctx ctx;
  sha256_init(&ctx);
  hash_field(ctx, xml);
  hash_field(ctx, emulator_id);
  hash_field(ctx, libvirt_id);
  hash_field(ctx, std::to_string(kRewriteVersion));
  uint8_t digest[SHA256_DIGEST_SIZE];
  sha256_digest(&ctx, sizeof digest, digest);
  std::string hex;
  for (uint8_t b : digest) {
    char buf[3];
    std::snprintf(buf, sizeof buf, "%02x", b);
    hex += buf;
  }
  return hex;
}

Result<std::optional<std::string>> PlanCache::find(const std::string& key) const {
  std::string path = dir_ + "/" + key + ".argv";
  auto text = sys::read_file(path, 1 << 20);
  if (text) return std::optional<std::string>(std::move(text).value());
  if (text.error().sys_errno == ENOENT) return std::optional<std::string>();
  return text.error().wrap("read plan cache entry '" + path + "'");
}

Result<void> PlanCache::store(const std::string& key, std::string_view native) const {
  if (::mkdir(dir_.c_str(), 0700) < 0 && errno != EEXIST)
    return Error::from_errno("create plan cache '" + dir_ + "'");
  return sys::write_file_atomic(dir_ + "/" + key + ".argv", native, 0600);
}

}  // namespace vl
