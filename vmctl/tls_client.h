// vmctl -H tls://HOST[:PORT]: a TLS connection to a far vmlaunchd, with a client certificate.
//
// sd-bus speaks to a local socketpair; a thread relays its other end to the TLS connection.
// The server's certificate must be signed by the configured CA and name HOST (a DNS name or IP
// address in its subjectAltName). The files default to libvirt's layout: for root
// /etc/pki/vmlaunch/{cacert.pem,clientcert.pem,private/clientkey.pem}, for other users
// ~/.pki/vmlaunch/{cacert.pem,clientcert.pem,clientkey.pem}; --tls-ca, --tls-cert, --tls-key
// or VMCTL_TLS_CA, VMCTL_TLS_CERT, VMCTL_TLS_KEY override them.
#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <string>

#include "common/error.h"
#include "common/unique_fd.h"
#include "vmctl/remote.h"

namespace vl::ctl {

struct TlsFiles {
  std::string ca, cert, key;
};

/// The defaults above for the current user, each overridden by its environment variable.
TlsFiles default_tls_files();

/// Why the relay ended, if the far side ended it with a TLS error (the daemon's alert for a
/// certificate it refused): set by the relay thread, read by the client when a call fails.
class TransportStatus final {
 public:
  void set(std::string reason);
  std::string reason() const;

 private:
  mutable std::mutex mutex_;
  std::string reason_;
};

struct TlsConnection {
  UniqueFd bus_end;  ///< for sd-bus: the stream, decrypted
  std::shared_ptr<TransportStatus> status;
};

/// How long the TCP connect and the TLS handshake may take together: a far side that accepts
/// and then says nothing (or a host that drops the packets) must not hold vmctl forever.
inline constexpr std::chrono::milliseconds kTlsConnectDeadline{30'000};

/// Connects to `target`, checks the server's certificate, presents ours, and starts the relay.
/// The error names the step and OpenSSL's reason (a file that cannot be read, a server
/// certificate that does not verify or does not name the host, no answer within `deadline`).
Result<TlsConnection> tls_connect(const RemoteTarget& target, const TlsFiles& files,
                                  std::chrono::milliseconds deadline = kTlsConnectDeadline);

}  // namespace vl::ctl
