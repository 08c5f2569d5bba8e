#include "vmctl/tls_client.h"

#include <fcntl.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <thread>

namespace vl::ctl {

namespace {

std::string openssl_reason() {
  unsigned long e = ERR_peek_last_error();
  const char* reason = e ? ERR_reason_error_string(e) : nullptr;
  ERR_clear_error();
  if (!e) return "connection closed";
  return reason ? reason : "unknown error";
}

using Clock = std::chrono::steady_clock;

// Waits for `events` on `fd` until `until`; false once it passed.
bool wait_until(int fd, short events, Clock::time_point until) {
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now()).count();
    if (left <= 0) return false;
    pollfd p{fd, events, 0};
    int r = ::poll(&p, 1, static_cast<int>(std::min<long long>(left, 60'000)));
    if (r > 0) return true;
    if (r < 0 && errno != EINTR) return true;  // the next call reports the error
  }
}

// Non-blocking from here on: each address gets what is left of the deadline.
UniqueFd tcp_connect(const RemoteTarget& t, Clock::time_point until, std::string& error) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  int rc = ::getaddrinfo(t.host.c_str(), std::to_string(t.port).c_str(), &hints, &found);
  if (rc != 0) {
    error = "resolve " + t.host + ": " + ::gai_strerror(rc);
    return UniqueFd();
  }
  UniqueFd fd;
  for (addrinfo* a = found; a; a = a->ai_next) {
    fd.reset(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol));
    int err = !fd ? errno : ::connect(fd.get(), a->ai_addr, a->ai_addrlen) == 0 ? 0 : errno;
    if (err == EINPROGRESS) {
      socklen_t len = sizeof err;
      if (!wait_until(fd.get(), POLLOUT, until)) err = ETIMEDOUT;
      else if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
    }
    if (err == 0) break;
    error = "connect to " + t.host + " port " + std::to_string(t.port) + ": " + std::strerror(err);
    fd.reset();
  }
  ::freeaddrinfo(found);
  return fd;
}

// Writes all of `n` bytes through TLS on a non-blocking socket, waiting as OpenSSL asks.
bool tls_write_all(SSL* ssl, int sock, const char* data, size_t n) {
  while (n > 0) {
    size_t done = 0;
    if (SSL_write_ex(ssl, data, n, &done) == 1) {
      data += done;
      n -= done;
      continue;
    }
    int err = SSL_get_error(ssl, 0);
    if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) return false;
    pollfd p{sock, static_cast<short>(err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT), 0};
    ::poll(&p, 1, -1);
  }
  return true;
}

bool write_all(int fd, const char* data, size_t n) {
  while (n > 0) {
    ssize_t k = ::send(fd, data, n, MSG_NOSIGNAL);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0 && errno == EAGAIN) {
      pollfd p{fd, POLLOUT, 0};
      ::poll(&p, 1, -1);
      continue;
    }
    if (k <= 0) return false;
    data += k;
    n -= static_cast<size_t>(k);
  }
  return true;
}

// The relay: one thread, one poll loop over the TLS socket and our end of the socketpair, so
// the SSL object is only ever used from here. Ends when either side ends; a TLS error from the
// server (an alert) is kept for the client's messages.
void relay(SSL* ssl, UniqueFd sock, UniqueFd local, std::shared_ptr<TransportStatus> status) {
  char buf[16 * 1024];
  for (;;) {
    pollfd fds[2] = {{sock.get(), POLLIN, 0}, {local.get(), POLLIN, 0}};
    if (SSL_pending(ssl) == 0 && ::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (SSL_pending(ssl) > 0 || fds[0].revents) {
      size_t n = 0;
      if (SSL_read_ex(ssl, buf, sizeof buf, &n) == 1) {
        if (!write_all(local.get(), buf, n)) break;
      } else {
        int err = SSL_get_error(ssl, 0);
        if (err == SSL_ERROR_SSL) status->set("the daemon ended the TLS connection: " + openssl_reason());
        if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) break;
      }
    }
    if (fds[1].revents) {
      ssize_t n = ::recv(local.get(), buf, sizeof buf, 0);
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n <= 0 || !tls_write_all(ssl, sock.get(), buf, static_cast<size_t>(n))) break;
    }
  }
  SSL_free(ssl);
  // `local` closes here: sd-bus sees the end.
}

std::string home_pki(const char* file) {
  const char* home = std::getenv("HOME");
  return std::string(home ? home : "") + "/.pki/vmlaunch/" + file;
}

}  // namespace

void TransportStatus::set(std::string reason) {
  std::lock_guard lock(mutex_);
  if (reason_.empty()) reason_ = std::move(reason);
}

std::string TransportStatus::reason() const {
  std::lock_guard lock(mutex_);
  return reason_;
}

TlsFiles default_tls_files() {
  TlsFiles f;
  if (::geteuid() == 0) {
    f = {"/etc/pki/vmlaunch/cacert.pem", "/etc/pki/vmlaunch/clientcert.pem", "/etc/pki/vmlaunch/private/clientkey.pem"};
  } else {
    f = {home_pki("cacert.pem"), home_pki("clientcert.pem"), home_pki("clientkey.pem")};
  }
  for (auto [var, field] : {std::pair{"VMCTL_TLS_CA", &f.ca}, {"VMCTL_TLS_CERT", &f.cert}, {"VMCTL_TLS_KEY", &f.key}})
    if (const char* v = std::getenv(var); v && *v) *field = v;
  return f;
}

Result<TlsConnection> tls_connect(const RemoteTarget& target, const TlsFiles& files, std::chrono::milliseconds deadline) {
  const std::string where = target.host + " port " + std::to_string(target.port);
  const Clock::time_point until = Clock::now() + deadline;
  // OpenSSL writes to the socket itself: its alert after a far side that closed unread (a
  // daemon refusing the connection), or a record after the daemon went away, meets a reset
  // socket. That is an error to report, not a SIGPIPE that ends vmctl without a word.
  ::signal(SIGPIPE, SIG_IGN);
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (!ctx) return Error::make(ErrorCode::kSystem, "TLS: " + openssl_reason());
  // Freed with the last SSL that uses it (SSL_new takes a reference).
  struct CtxRef {
    SSL_CTX* ctx;
    ~CtxRef() { SSL_CTX_free(ctx); }
  } ctx_ref{ctx};
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  if (SSL_CTX_load_verify_locations(ctx, files.ca.c_str(), nullptr) != 1)
    return Error::make(ErrorCode::kInvalid, "read the CA certificate " + files.ca + " (--tls-ca): " + openssl_reason());
  // An empty --tls-cert presents no certificate (the daemon then refuses the handshake).
  if (!files.cert.empty()) {
    if (SSL_CTX_use_certificate_chain_file(ctx, files.cert.c_str()) != 1)
      return Error::make(ErrorCode::kInvalid, "read the client certificate " + files.cert + " (--tls-cert): " + openssl_reason());
    if (SSL_CTX_use_PrivateKey_file(ctx, files.key.c_str(), SSL_FILETYPE_PEM) != 1)
      return Error::make(ErrorCode::kInvalid, "read the client key " + files.key + " (--tls-key): " + openssl_reason());
    if (SSL_CTX_check_private_key(ctx) != 1)
      return Error::make(ErrorCode::kInvalid, "the client key " + files.key + " does not belong to " + files.cert);
  }

  std::string error;
  UniqueFd sock = tcp_connect(target, until, error);
  if (!sock) return Error::make(ErrorCode::kSystem, error);
  SSL* ssl = SSL_new(ctx);
  if (!ssl) return Error::make(ErrorCode::kSystem, "TLS: " + openssl_reason());
  // The server's certificate must name the host we asked for: an IP address against its IP
  // subjectAltNames, a name against its DNS ones.
  X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
  if (X509_VERIFY_PARAM_set1_ip_asc(param, target.host.c_str()) != 1) {
    SSL_set_tlsext_host_name(ssl, target.host.c_str());
    X509_VERIFY_PARAM_set1_host(param, target.host.c_str(), 0);
  }
  SSL_set_fd(ssl, sock.get());
  int done = 0;
  bool timed_out = false;
  while ((done = SSL_connect(ssl)) != 1) {
    int err = SSL_get_error(ssl, done);
    if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) break;
    if (!wait_until(sock.get(), err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, until)) {
      timed_out = true;
      break;
    }
  }
  if (done != 1) {
    long verify = SSL_get_verify_result(ssl);
    std::string why = timed_out ? "no answer within " + std::to_string(deadline.count() / 1000) + " s"
                      : verify != X509_V_OK ? std::string("the server's certificate: ") + X509_verify_cert_error_string(verify)
                                            : openssl_reason();
    SSL_free(ssl);
    return Error::make(ErrorCode::kDenied, "TLS handshake with " + where + " failed: " + why);
  }
  int pair[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) < 0) {
    SSL_free(ssl);
    return Error::from_errno("create the TLS relay");
  }
  UniqueFd bus_end(pair[0]), relay_end(pair[1]);
  TlsConnection out{std::move(bus_end), std::make_shared<TransportStatus>()};
  // Detached: it ends with the connection, or with vmctl.
  std::thread(relay, ssl, std::move(sock), std::move(relay_end), out.status).detach();
  return out;
}

}  // namespace vl::ctl
