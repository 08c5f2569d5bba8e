// Who a control client is and what it may call: one model for every transport.
//
// Each connection gets an Identity when it is admitted, before a byte of it is read: a local
// peer from its socket credentials (its uid and groups), a TLS peer from its verified client
// certificate (its subject DN). The method handlers see only the identity, so the same checks
// hold whichever way the client came in. An SSH client reaches the daemon through
// `vmctl dial-stdio` on the far side, and is therefore the local peer the SSH login made it;
// dial-stdio names the SSH client in its socket's name (common/control_protocol.h), which the
// identity carries as `from`, for the log only.
//
// Roles, from least to most: none (every call refused, with a message saying what would let
// it in), read-only (List and Status), admin (everything but the root-only calls), root (also
// GetLaunchPlan, Launched, LaunchFailed and TakePassphrase, which the helper's launch makes as
// root).
#pragma once

#include <sys/types.h>

#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"

namespace vl {

enum class Role { kNone, kReadOnly, kAdmin, kRoot };

/// "none", "read-only", "admin", "root".
const char* role_name(Role role);

/// A control client as admitted.
struct Identity {
  Role role = Role::kNone;
  /// "local" (the control socket) or "tls" (the TCP listener).
  std::string transport = "local";
  /// For messages and the log: "uid 1000 (alice)" or the certificate's subject DN.
  std::string who;
  /// Where a remote peer connected from ("192.0.2.7:40112"); for a local peer that relays an
  /// SSH session, the SSH client as the relay names it (ssh_relay_claim); else "". Never a
  /// reason to permit anything: a relay's claim is only what the peer says.
  std::string from;
  /// The local peer's uid, for the per-uid connection caps; -1 for a TLS peer.
  uid_t uid = static_cast<uid_t>(-1);
  /// For role none: why, as the end of a sentence about `who` ("is neither root nor in group
  /// 'vmlaunch-admin'").
  std::string why_none;
  /// True for a peer that did not come through the local socket.
  bool remote() const { return transport != "local"; }
};

/// What decides the roles of local peers.
struct LocalRoles {
  gid_t admin_gid = static_cast<gid_t>(-1);
  gid_t readonly_gid = static_cast<gid_t>(-1);
  std::string admin_group;     ///< names, for the refusal message
  std::string readonly_group;  ///< "" when none is configured
};

/// The identity of a local peer with this uid and these groups: root, admin (in the admin
/// group), read-only (in the read-only group) or none.
Identity local_identity(uid_t uid, const std::vector<gid_t>& groups, const LocalRoles& roles);

/// The identity of a TLS peer whose verified certificate has this subject DN (RFC 2253 form,
/// "CN=alice,O=Example"): admin if a pattern of `admin_dns` matches it, else read-only if one
/// of `readonly_dns` does, else none.
Identity tls_identity(const std::string& dn, const std::vector<std::string>& admin_dns,
                      const std::vector<std::string>& readonly_dns);

/// libvirt's tls_allowed_dn_list matching: the whole DN against the pattern, where `*` matches
/// any run of characters (fnmatch without special meaning for '/', '\\', '[' or '?'), an escape
/// of the DN ("\," "\+" "\\" ...) counting as one character: a `*` never ends inside one, so
/// a comma inside a value never reads as the start of another RDN.
bool dn_matches(std::string_view pattern, std::string_view dn);

/// The role a method of org.vmlaunch.Manager1 needs: read-only for List and Status, root for
/// GetLaunchPlan, Launched, LaunchFailed and TakePassphrase, admin for everything else (so a method added
/// without thought here is an admin's).
Role role_needed(std::string_view method);

/// Whether `who` may call `method`; the error names who and what they lack.
Result<void> permit(const Identity& who, std::string_view method);

/// Whether a call of `method` by `who` goes to the event log: every call of a remote peer or
/// of a local one relaying an SSH session (`from` set), and every call that changes something
/// (anything beyond the read-only role).
bool is_audited(const Identity& who, std::string_view method);

/// What a local peer whose socket is bound to the abstract name `name` says it relays: for
/// kSshRelayName + "PID ADDRESS PORT" (common/control_protocol.h) "ssh client ADDRESS port
/// PORT"; "ssh client (unreadable address)" if the rest is not a pid, an IP address and a port;
/// "" for any other name.
std::string ssh_relay_claim(std::string_view name);

}  // namespace vl
