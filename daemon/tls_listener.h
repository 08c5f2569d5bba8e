// The TLS listener for remote clients ([tls] in vmlaunch.toml; off unless `listen` is set).
//
// It terminates TLS and hands the decrypted stream to the control server as if it were a
// local connection: each client gets a socketpair, one end relayed to its TLS stream here,
// the other admitted by ControlServer::admit with the Identity of its certificate. So the D-Bus
// session code, its limits and the authorization are the same for every transport.
//
// The client must present a certificate the configured CA signed, valid now (OpenSSL's chain
// verification, which also checks the dates), whose subject DN matches a pattern of
// tls.admin_dns or tls.readonly_dns (authorization.h); otherwise the handshake fails with
// OpenSSL's alert (no certificate, unknown CA, expired), or, for a DN that matches nothing, the
// session is admitted with no role and every call is refused saying so. Handshakes in progress
// count against control.max_connections and must finish within control.message_timeout, so an
// idle TCP peer cannot hold a slot for long; and one address (an IPv6 /64) may hold at most half
// of them, so a single peer that keeps reconnecting cannot hold them all and lock everyone else
// out.
#pragma once

#include "daemon/asio.h"
#include <boost/asio/ssl.hpp>
#include <map>
#include <memory>
#include <string>

#include "common/config.h"
#include "common/error.h"
#include "daemon/control_server.h"

namespace vl {

class TlsListener final {
 public:
  TlsListener(boost::asio::io_context& io, const HostConfig& config, ControlServer& server);
  ~TlsListener();
  TlsListener(const TlsListener&) = delete;
  TlsListener& operator=(const TlsListener&) = delete;

  /// Loads the certificate, key and CA and listens on tls.listen. Refuses a key file that
  /// others than its owner may read, naming it.
  Result<void> listen();
  void close();
  /// The port listened on.
  uint16_t port() const;

 private:
  void accept_next();
  void handshake(boost::asio::ip::tcp::socket socket);

  boost::asio::io_context& io_;
  const HostConfig& config_;
  ControlServer& server_;
  boost::asio::ssl::context ssl_;
  std::unique_ptr<boost::asio::ip::tcp::acceptor> acceptor_;
  boost::asio::steady_timer accept_backoff_;  ///< spaces accepts that failed (see accept_next)
  /// Handshakes in progress: capped at control.max_connections.
  std::shared_ptr<size_t> handshaking_ = std::make_shared<size_t>(0);
  /// ... and by peer address (handshake_source): capped at half of it.
  std::shared_ptr<std::map<std::string, size_t>> handshaking_from_ = std::make_shared<std::map<std::string, size_t>>();
  bool refusing_ = false;        ///< logged once per episode of refused handshakes
  bool accept_starved_ = false;  ///< logged once per episode of failed accepts
};

/// The part of a peer's address that the per-source handshake cap counts: an IPv4 address
/// whole (IPv4-mapped IPv6 addresses as IPv4), an IPv6 address by its /64 prefix (one host
/// usually has the whole /64).
std::string handshake_source(const boost::asio::ip::address& address);

/// Reads a certificate's subject as an RFC 2253 DN ("CN=alice,O=Example").
std::string subject_dn(X509* cert);

}  // namespace vl
