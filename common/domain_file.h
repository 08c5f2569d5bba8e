// Domain definitions, DOMAINS/NAME.xml: the root-owned files from which root decides what to
// do for a VM, and which hold its secrets (the VNC password).
//
// Root must be the only one able to change them, or whoever can write one decides what root
// launches; and only root and the daemon's group may read them, or any local uid (another VM's
// emulator included) reads every VM's console password. So a definition is used only when it
// is a regular file with one link, owned by root, writable by no one else, readable by no one
// but root and the daemon's group; and when the domains directory is one only root can
// change, so that no one can swap the file. (The directories above it are the operator's:
// /etc/vmlaunch on a real host.) The file is opened with
// O_NOFOLLOW and checked by fstat on the opened fd: what is checked is what is read.
//
// These checks are for the definitions the helper and the daemon act on. Parsing an arbitrary
// file (`vmlaunchd plan FILE.xml`, an operator's dry run) uses load_domain() in domain.h.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <string>

#include "common/config.h"
#include "common/domain.h"
#include "common/error.h"
#include "common/unique_fd.h"
#include "common/vm_name.h"

namespace vl {

/// Accepts a domain file's fstat when it is a regular file with one link, owned by root,
/// writable by no one but root, and readable by no one but root and (if group-readable) group
/// root or the daemon's group `daemon_gid`. Otherwise kDenied naming `path`, its owner and
/// mode, and the fix ("chown root:DAEMON_GROUP PATH; chmod 0640 PATH").
Result<void> check_domain_file(const struct stat& st, const std::string& path, const std::string& daemon_group,
                               gid_t daemon_gid);

/// Accepts the domains directory's fstat when it is a directory owned by root and writable by
/// no one but root; otherwise kDenied naming `path`, its owner and mode, and the fix.
Result<void> check_domains_dir(const struct stat& st, const std::string& path);

/// An opened, checked domain definition.
struct DomainFile {
  UniqueFd fd;            ///< open for reading
  struct stat st {};      ///< fstat of fd
  std::string path;       ///< DOMAINS/NAME.xml, for messages
};

/// Opens DOMAINS/NAME.xml after checking the domains directory (check_domains_dir), then the
/// file through its fd (check_domain_file). kNotFound when the VM is not defined; kDenied when
/// a check fails, the file is a symlink, or the caller may not read it.
Result<DomainFile> open_domain_definition(const HostConfig& config, const VmName& vm);

/// Reads a DomainFile opened by open_domain_definition (bounded like any domain XML).
Result<std::string> read_domain_file(const DomainFile& file);

/// open_domain_definition, read and parse; the document's <name> must be `vm`.
Result<Domain> load_domain_definition(const HostConfig& config, const VmName& vm);

}  // namespace vl
