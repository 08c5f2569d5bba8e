// VNC over TLS ([vnc] tls): the server identity each VM's emulator presents, handed to that
// VM's uid alone.
//
// QEMU's tls-creds-x509 reads its files by path when the emulator starts, as the VM's uid, so
// the uid needs a directory of its own: RUNTIME/vnc-tls/NAME (HostConfig::vnc_tls_dir), root's
// with the VM's group, 0750, holding ca-cert.pem, server-cert.pem and server-key.pem owned by
// the VM's uid, 0600. No other VM's uid can read the key, and the VM cannot swap an entry (the
// directory is not writable to it). RUNTIME/vnc-tls is root 0711: traversable, not listable.
//
// Root reads the source from [vnc] tls_dir, or tls_dir/NAME/ when that directory exists (one
// identity per VM), and refuses it unless root alone can change the directory and the files
// (regular files with one link, opened without following symlinks) and the key is readable
// by root alone: a key others can read is no longer a secret, and a file others can change
// would let them choose what root hands to the emulator.
#pragma once

#include <sys/types.h>

#include <string>

#include "common/config.h"
#include "common/error.h"
#include "common/vm_name.h"

namespace vl::helper {

/// The three files, read from the source directory.
struct VncCredentials {
  std::string source_dir;  ///< where they were read, for messages
  std::string ca_cert, server_cert, server_key;
};

/// Reads and checks the source credentials for `vm`. A missing file is kNotFound naming it;
/// a file or directory others could change, or a key others could read, is kDenied.
Result<VncCredentials> read_vnc_credentials(const HostConfig& config, const VmName& vm);

/// Creates HostConfig::vnc_tls_dir(vm) afresh (a leftover is removed first) holding `creds`
/// for `uid`/`gid`. On failure removes what it created.
Result<void> install_vnc_credentials(const HostConfig& config, const VmName& vm, const VncCredentials& creds,
                                     uid_t uid, gid_t gid);

/// Removes the VM's credentials directory. Already gone is success.
Result<void> remove_vnc_credentials(const HostConfig& config, const VmName& vm);

}  // namespace vl::helper
