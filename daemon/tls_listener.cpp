#include "daemon/tls_listener.h"

#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>

#include "daemon/authorization.h"

namespace vl {

namespace asio = boost::asio;
namespace ssl = boost::asio::ssl;
using tcp = asio::ip::tcp;

namespace {

using TlsStream = ssl::stream<tcp::socket>;

constexpr auto kAcceptBackoff = std::chrono::milliseconds(100);

// One admitted TLS client: its TLS stream and the daemon's end of the socketpair whose other
// end the control server serves. Two pumps, one per direction; when either side ends or
// fails, both are closed, so the session ends with the connection and vice versa.
class TlsRelay final : public std::enable_shared_from_this<TlsRelay> {
 public:
  TlsRelay(std::shared_ptr<TlsStream> tls, asio::posix::stream_descriptor pair)
      : tls_(std::move(tls)), pair_(std::move(pair)) {}

  void start() {
    from_client();
    to_client();
  }

 private:
  void from_client() {
    tls_->async_read_some(asio::buffer(in_), [self = shared_from_this()](boost::system::error_code ec, size_t n) {
      if (ec) return self->end();
      asio::async_write(self->pair_, asio::buffer(self->in_, n), [self](boost::system::error_code wec, size_t) {
        if (wec) return self->end();
        self->from_client();
      });
    });
  }

  void to_client() {
    pair_.async_read_some(asio::buffer(out_), [self = shared_from_this()](boost::system::error_code ec, size_t n) {
      if (ec) return self->end();
      asio::async_write(*self->tls_, asio::buffer(self->out_, n), [self](boost::system::error_code wec, size_t) {
        if (wec) return self->end();
        self->to_client();
      });
    });
  }

  // No TLS close_notify: a graceful shutdown would wait for a peer that may never answer.
  void end() {
    boost::system::error_code ignored;
    pair_.close(ignored);
    tls_->lowest_layer().close(ignored);
  }

  std::shared_ptr<TlsStream> tls_;
  asio::posix::stream_descriptor pair_;
  std::array<char, 16 * 1024> in_{}, out_{};
};

// The private key must be the daemon user's secret alone.
Result<void> check_key_mode(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return Error::from_errno("read the TLS key '" + path + "' (tls.key)");
  if (st.st_mode & 077) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return Error::make(ErrorCode::kInvalid, "the TLS key '" + path + "' (tls.key) has mode " + mode +
                                                ": others than its owner may read it; make it 0600 or 0400, owned by the daemon user");
  }
  return {};
}

}  // namespace

std::string subject_dn(X509* cert) {
  BIO* bio = BIO_new(BIO_s_mem());
  if (!bio) return "";
  // RFC 2253 order and escaping (most specific first, control characters escaped), as
  // libvirt shows DNs and as `openssl x509 -subject -nameopt RFC2253` prints them.
  X509_NAME_print_ex(bio, X509_get_subject_name(cert), 0, XN_FLAG_RFC2253);
  char* data = nullptr;
  long n = BIO_get_mem_data(bio, &data);
  std::string dn(data, n > 0 ? static_cast<size_t>(n) : 0);
  BIO_free(bio);
  return dn;
}

std::string handshake_source(const asio::ip::address& address) {
  if (address.is_v4()) return address.to_string();
  asio::ip::address_v6 v6 = address.to_v6();
  if (v6.is_v4_mapped()) return asio::ip::make_address_v4(asio::ip::v4_mapped, v6).to_string();
  asio::ip::address_v6::bytes_type bytes = v6.to_bytes();
  std::fill(bytes.begin() + 8, bytes.end(), 0);
  return asio::ip::address_v6(bytes).to_string() + "/64";
}

TlsListener::TlsListener(asio::io_context& io, const HostConfig& config, ControlServer& server)
    : io_(io), config_(config), server_(server), ssl_(ssl::context::tls_server), accept_backoff_(io) {}

TlsListener::~TlsListener() { close(); }

Result<void> TlsListener::listen() {
  const TlsConfig& tls = config_.tls;
  auto where = split_host_port(tls.listen, 0);
  if (!where) return Error::make(ErrorCode::kInvalid, "tls.listen '" + tls.listen + "' is not ADDRESS:PORT");
  VL_CHECK(check_key_mode(tls.key));
  boost::system::error_code ec;
  // TLS 1.2 at least; client certificates required and verified against the configured CA only.
  ssl_.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3 |
                       ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1 | ssl::context::single_dh_use,
                   ec);
  auto step = [&](const char* what, const std::string& path) -> Result<void> {
    if (!ec) return {};
    return Error::make(ErrorCode::kInvalid, std::string("load the TLS ") + what + " '" + path + "': " + ec.message());
  };
  ssl_.use_certificate_chain_file(tls.cert, ec);
  VL_CHECK(step("certificate (tls.cert)", tls.cert));
  ssl_.use_private_key_file(tls.key, ssl::context::pem, ec);
  VL_CHECK(step("key (tls.key)", tls.key));
  ssl_.load_verify_file(tls.ca, ec);
  VL_CHECK(step("CA certificate (tls.ca)", tls.ca));
  ssl_.set_verify_mode(ssl::verify_peer | ssl::verify_fail_if_no_peer_cert, ec);
  // Only the configured CA's certificates are trusted, and it alone names which clients
  // a handshake asks for.
  SSL_CTX_set_client_CA_list(ssl_.native_handle(), SSL_load_client_CA_file(tls.ca.c_str()));
  if (!SSL_CTX_check_private_key(ssl_.native_handle()))
    return Error::make(ErrorCode::kInvalid, "the TLS key '" + tls.key + "' does not belong to the certificate '" + tls.cert + "'");

  auto address = asio::ip::make_address(where->host, ec);
  if (ec) return Error::make(ErrorCode::kInvalid, "tls.listen '" + tls.listen + "': '" + where->host + "' is not an IP address");
  tcp::endpoint endpoint(address, where->port);
  acceptor_ = std::make_unique<tcp::acceptor>(io_);
  acceptor_->open(endpoint.protocol(), ec);
  if (!ec) acceptor_->set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) acceptor_->bind(endpoint, ec);
  if (!ec) acceptor_->listen(64, ec);
  if (ec) return Error::make(ErrorCode::kSystem, "listen for TLS clients on " + tls.listen + ": " + ec.message());
  accept_next();
  return {};
}

uint16_t TlsListener::port() const {
  boost::system::error_code ec;
  return acceptor_ ? acceptor_->local_endpoint(ec).port() : 0;
}

void TlsListener::close() {
  if (!acceptor_) return;
  boost::system::error_code ignored;
  acceptor_->close(ignored);
  acceptor_.reset();
  accept_backoff_.cancel();
}

void TlsListener::accept_next() {
  acceptor_->async_accept([this](boost::system::error_code ec, tcp::socket socket) {
    if (ec == asio::error::operation_aborted || !acceptor_) return;
    if (!ec) {
      if (std::exchange(accept_starved_, false)) std::fprintf(stderr, "vmlaunchd: accepting TLS connections again\n");
      handshake(std::move(socket));
      return accept_next();
    }
    // Out of descriptors (or another failure) the connection stays in the backlog and the
    // listener readable: accepting again at once would spin. Retry after a pause instead.
    if (!std::exchange(accept_starved_, true))
      std::fprintf(stderr, "vmlaunchd: Failed to accept a TLS connection: %s; retrying every %lld ms\n",
                   ec.message().c_str(), static_cast<long long>(kAcceptBackoff.count()));
    accept_backoff_.expires_after(kAcceptBackoff);
    accept_backoff_.async_wait([this](boost::system::error_code wait_ec) {
      if (!wait_ec && acceptor_) accept_next();
    });
  });
}

// A handshake costs a slot until it ends; a peer that stalls it is cut off at the deadline.
void TlsListener::handshake(tcp::socket socket) {
  const ControlLimits& caps = config_.control;
  boost::system::error_code ec;
  auto endpoint = socket.remote_endpoint(ec);
  if (ec) return;  // already gone
  const std::string peer = endpoint.address().to_string() + ":" + std::to_string(endpoint.port());
  const std::string source = handshake_source(endpoint.address());
  const size_t per_source = std::max<size_t>(1, caps.max_connections / 2);
  size_t& from_source = (*handshaking_from_)[source];
  std::string refused;
  if (*handshaking_ >= caps.max_connections)
    refused = std::to_string(*handshaking_) + " handshakes in progress (control.max_connections)";
  else if (from_source >= per_source)
    refused = std::to_string(from_source) + " handshakes in progress from " + source +
              " (half of control.max_connections)";
  if (!refused.empty()) {
    if (from_source == 0) handshaking_from_->erase(source);
    if (!std::exchange(refusing_, true)) std::fprintf(stderr, "vmlaunchd: Refusing TLS connections: %s\n", refused.c_str());
    return;  // closed unread
  }
  refusing_ = false;
  ++*handshaking_;
  ++from_source;
  auto tls = std::make_shared<TlsStream>(std::move(socket), ssl_);
  auto timer = std::make_shared<asio::steady_timer>(io_, std::chrono::seconds(caps.message_timeout));
  timer->async_wait([weak = std::weak_ptr<TlsStream>(tls)](boost::system::error_code wait_ec) {
    boost::system::error_code ignored;
    if (auto stream = weak.lock(); stream && !wait_ec) stream->lowest_layer().close(ignored);  // the handshake fails
  });
  auto counter = handshaking_;
  auto by_source = handshaking_from_;
  tls->async_handshake(ssl::stream_base::server, [this, tls, timer, counter, by_source, source,
                                                  peer](boost::system::error_code hs_ec) {
    --*counter;
    if (auto it = by_source->find(source); it != by_source->end() && --it->second == 0) by_source->erase(it);
    timer->cancel();
    if (hs_ec) {
      std::fprintf(stderr, "vmlaunchd: TLS handshake with %s failed: %s\n", peer.c_str(), hs_ec.message().c_str());
      return;
    }
    X509* cert = SSL_get1_peer_certificate(tls->native_handle());
    if (!cert) return;  // verify_fail_if_no_peer_cert makes this unreachable
    std::string dn = subject_dn(cert);
    X509_free(cert);
    Identity who = tls_identity(dn, config_.tls.admin_dns, config_.tls.readonly_dns);
    who.from = peer;
    int pair[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, pair) < 0) {
      std::fprintf(stderr, "vmlaunchd: Failed to serve the TLS client %s: socketpair: %m, ignoring\n", peer.c_str());
      return;
    }
    UniqueFd session(pair[0]), relay_end(pair[1]);
    asio::posix::stream_descriptor relay_side(io_);
    boost::system::error_code assign_ec;
    relay_side.assign(relay_end.get(), assign_ec);
    if (assign_ec) return;
    (void)relay_end.release();  // relay_side owns it now
    auto relay = std::make_shared<TlsRelay>(tls, std::move(relay_side));
    server_.admit(std::move(session), std::move(who));
    relay->start();
  });
}

}  // namespace vl
