#include "common/domain_file.h"

#include "common/zone_network.h"

#include <fcntl.h>
#include <grp.h>
#include <unistd.h>

#include <cstdio>
#include <vector>

#include "common/sys.h"

namespace vl {

namespace {

std::string owner_and_mode(const struct stat& st) {
  char mode[8];
  std::snprintf(mode, sizeof mode, "%04o", st.st_mode & 07777);
  return "owner " + std::to_string(st.st_uid) + ":" + std::to_string(st.st_gid) + ", mode " + mode;
}

bool writable_by_others(const struct stat& st) { return (st.st_mode & (S_IWGRP | S_IWOTH)) != 0; }

std::string fix_file(const std::string& path, const std::string& daemon_group) {
  return "chown root:" + daemon_group + " " + path + "; chmod 0640 " + path;
}

Result<gid_t> group_id(const std::string& name) {
  std::vector<char> buf(16384);
  group g {};
  group* found = nullptr;
  int rc = ::getgrnam_r(name.c_str(), &g, buf.data(), buf.size(), &found);
  if (rc != 0) return Error::from_errno(rc, "look up daemon group " + quote_for_message(name));
  if (!found) return Error::make(ErrorCode::kNotFound, "daemon group " + quote_for_message(name) + " does not exist");
  return found->gr_gid;
}

}  // namespace

Result<void> check_domain_file(const struct stat& st, const std::string& path, const std::string& daemon_group,
                               gid_t daemon_gid) {
  std::string problem;
  std::string fix = fix_file(path, daemon_group);
  if (!S_ISREG(st.st_mode)) {
    problem = "is not a regular file";
    fix = "replace it with a regular file, then " + fix;
  } else if (st.st_nlink != 1) {
    // Another name for the same inode, perhaps somewhere readable or writable by others.
    problem = "has " + std::to_string(st.st_nlink) + " hard links";
    fix = "replace it with a copy that has a single link, then " + fix;
  } else if (st.st_uid != 0) {
    problem = "is not owned by root";
  } else if (writable_by_others(st)) {
    problem = "is writable by group or others";
  } else if (st.st_mode & S_IROTH) {
    problem = "is readable by others";
  } else if ((st.st_mode & S_IRGRP) && st.st_gid != 0 && st.st_gid != daemon_gid) {
    problem = "is readable by group " + std::to_string(st.st_gid) + ", which is neither root nor the daemon's group '" +
              daemon_group + "'";
  } else {
    return {};
  }
  return Error::make(ErrorCode::kDenied,
                     "domain file " + quote_for_message(path, kQuotePathMax) + " " + problem + " (" + owner_and_mode(st) +
                         "): it decides what root runs and holds the VM's secrets (VNC password), so only root may "
                         "write it and only root and group " + quote_for_message(daemon_group) + " may read it: " + fix);
}

Result<void> check_domains_dir(const struct stat& st, const std::string& path) {
  if (!S_ISDIR(st.st_mode))
    return Error::make(ErrorCode::kDenied, "domains directory " + quote_for_message(path, kQuotePathMax) + " is not a directory");
  if (st.st_uid != 0 || writable_by_others(st))
    return Error::make(ErrorCode::kDenied,
                       "domains directory " + quote_for_message(path, kQuotePathMax) + " must be owned by root and writable by no one else, or "
                       "whoever can write to it can swap a VM's definition (" + owner_and_mode(st) +
                           "): chown root " + path + "; chmod go-w " + path);
  return {};
}

Result<DomainFile> open_domain_definition(const HostConfig& config, const VmName& vm) {
  gid_t daemon_gid = VL_TRY(group_id(config.daemon_group));
  const std::string& dir = config.domains_dir;
  UniqueFd dir_fd = VL_TRY(sys::check_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC),
                                         "open domains directory " + quote_for_message(dir, kQuotePathMax)));
  struct stat dst {};
  VL_TRY(sys::check(::fstat(dir_fd.get(), &dst), "stat domains directory " + quote_for_message(dir, kQuotePathMax)));
  VL_CHECK(check_domains_dir(dst, dir));

  DomainFile file;
  file.path = config.domain_xml_path(vm);
  std::string name = vm.str() + ".xml";
  // O_NOFOLLOW: a link would name a file whose directory we have not checked. O_NONBLOCK: a
  // FIFO must not block the open (fstat then refuses it).
  file.fd = UniqueFd(::openat(dir_fd.get(), name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC));
  if (!file.fd) {
    int err = errno;
    if (err == ENOENT)
      return Error::make(ErrorCode::kNotFound, "VM '" + vm.str() + "' is not defined (no " + file.path + ")");
    if (err == ELOOP)
      return Error::make(ErrorCode::kDenied, "domain file " + quote_for_message(file.path, kQuotePathMax) + " is a symbolic link: replace it with "
                                             "the file itself, then " + fix_file(file.path, config.daemon_group));
    if (err == EACCES)
      return Error::make(ErrorCode::kDenied, "domain file " + quote_for_message(file.path, kQuotePathMax) + " is not readable by the daemon's group '" +
                                             config.daemon_group + "': " + fix_file(file.path, config.daemon_group));
    return Error::from_errno(err, "open domain file " + quote_for_message(file.path, kQuotePathMax));
  }
  VL_TRY(sys::check(::fstat(file.fd.get(), &file.st), "stat domain file " + quote_for_message(file.path, kQuotePathMax)));
  VL_CHECK(check_domain_file(file.st, file.path, config.daemon_group, daemon_gid));
  return file;
}

Result<std::string> read_domain_file(const DomainFile& file) {
  auto text = sys::read_all(file.fd.get(), kMaxDomainBytes);
  if (!text) return text.error().wrap(quote_for_message(file.path, kQuotePathMax));
  return text;
}

Result<Domain> load_domain_definition(const HostConfig& config, const VmName& vm) {
  DomainFile file = VL_TRY(open_domain_definition(config, vm));
  std::string xml = VL_TRY(read_domain_file(file));
  Domain domain = VL_TRY(parse_domain(xml, file.path));
  if (domain.name != vm)
    return Error::invalid(file.path + ": <name> is " + quote_for_message(domain.name.str()) + ", expected '" + vm.str() + "'");
  if (auto resolved = resolve_networks(domain, config); !resolved) return resolved.error().wrap(file.path);
  resolve_nvram(domain, config);
  resolve_vnc(domain, config);
  return domain;
}

}  // namespace vl
