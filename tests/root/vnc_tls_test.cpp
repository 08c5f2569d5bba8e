// VNC over TLS ([vnc] tls), end to end with the real planner, helper and qemu: the VM's VNC
// server offers VeNCrypt (security type 19) with the x509 sub-type, and completes a TLS
// handshake that verifies against the operator's CA, also through `vmctl vnc`; the copy of the key the helper made is
// the VM uid's alone and goes with cleanup; bad credentials refuse the launch and change
// nothing.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <csignal>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <memory>
#include <thread>

#include "tests/support/live_vmctl.h"

using vl::test::HelperEnv;
using vl::test::LiveVmctl;
using vl::test::SystemEnv;
using namespace std::chrono_literals;

namespace {

#ifdef VMLAUNCH_FAULT_INJECTION
constexpr bool kFaultInjection = true;
#else
constexpr bool kFaultInjection = false;  // a release build has no VMLAUNCH_FAIL_AT
#endif
constexpr uint8_t kVencrypt = 19;
constexpr uint32_t kX509None = 260;  // VeNCrypt sub-type: x509 TLS, no VNC password
constexpr uint32_t kX509Vnc = 261;   // x509 TLS, then the VNC password

void openssl(std::vector<std::string> args) {
  args.insert(args.begin(), "openssl");
  auto r = vl::test::run_program("/usr/bin/openssl", std::move(args));
  REQUIRE_MESSAGE(r.exit_code == 0, r.out);
}

// A CA and a server certificate for 127.0.0.1 in `dir`, laid out as [vnc] tls_dir wants it
// (ca-cert.pem, server-cert.pem, server-key.pem: root's, the key 0600), plus another CA.
class VncPki final {
 public:
  explicit VncPki(const std::string& dir) : dir_(dir) {
    std::filesystem::create_directories(dir_ + "/work");
    ::chmod(dir_.c_str(), 0755);
    ca("ca", "/CN=vmlaunch VNC test CA");
    ca("otherca", "/CN=another CA");
    openssl({"req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
             dir_ + "/server-key.pem", "-out", work("server.csr"), "-subj", "/CN=127.0.0.1", "-addext",
             "subjectAltName=IP:127.0.0.1"});
    openssl({"x509", "-req", "-in", work("server.csr"), "-CA", work("ca.pem"), "-CAkey", work("ca.key"),
             "-CAcreateserial", "-days", "2", "-copy_extensions", "copy", "-out", dir_ + "/server-cert.pem"});
    std::filesystem::copy_file(work("ca.pem"), dir_ + "/ca-cert.pem");
    // A viewer's certificate from the same CA, for tls_verify_client.
    openssl({"req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
             work("client.key"), "-out", work("client.csr"), "-subj", "/CN=viewer"});
    openssl({"x509", "-req", "-in", work("client.csr"), "-CA", work("ca.pem"), "-CAkey", work("ca.key"),
             "-CAcreateserial", "-days", "2", "-out", work("client.pem")});
    ::chmod((dir_ + "/server-key.pem").c_str(), 0600);
  }
  /// A server identity of its own for VM `vm` in dir()/vm/, issued by the other CA.
  void own_identity(const std::string& vm) {
    std::string own = dir_ + "/" + vm;
    std::filesystem::create_directory(own);
    ::chmod(own.c_str(), 0755);
    openssl({"req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
             own + "/server-key.pem", "-out", work(vm + ".csr"), "-subj", "/CN=127.0.0.1", "-addext",
             "subjectAltName=IP:127.0.0.1"});
    openssl({"x509", "-req", "-in", work(vm + ".csr"), "-CA", work("otherca.pem"), "-CAkey", work("otherca.key"),
             "-CAcreateserial", "-days", "2", "-copy_extensions", "copy", "-out", own + "/server-cert.pem"});
    std::filesystem::copy_file(work("otherca.pem"), own + "/ca-cert.pem");
    ::chmod((own + "/server-key.pem").c_str(), 0600);
  }
  const std::string& dir() const { return dir_; }
  std::string work(const std::string& name) const { return dir_ + "/work/" + name; }

 private:
  void ca(const std::string& name, const std::string& subject) {
    openssl({"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
             work(name + ".key"), "-out", work(name + ".pem"), "-subj", subject, "-days", "2"});
  }
  std::string dir_;
};

// Connects to a VNC server at `sa` (the VM's Unix socket, or the port vmctl vnc listens on).
template <typename Address>
vl::UniqueFd connect_vnc_at(int family, const Address& sa) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  for (;;) {
    vl::UniqueFd s(::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    REQUIRE(s);
    timeval timeout{30, 0};
    ::setsockopt(s.get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    if (::connect(s.get(), reinterpret_cast<const sockaddr*>(&sa), sizeof sa) == 0) return s;
    // The emulator may not be listening yet when the helper has become it.
    REQUIRE_MESSAGE(((errno == ECONNREFUSED || errno == ENOENT) && std::chrono::steady_clock::now() < deadline), std::strerror(errno));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

// A viewer the server turns away (a failed handshake, a refused certificate) may still be
// writing when the server closes. On the VM's Unix socket that write fails at once with EPIPE,
// which the test checks by its results; the signal would kill the test process instead.
class IgnoreSigpipe final {
 public:
  IgnoreSigpipe() { old_ = ::signal(SIGPIPE, SIG_IGN); }
  ~IgnoreSigpipe() { ::signal(SIGPIPE, old_); }
  IgnoreSigpipe(const IgnoreSigpipe&) = delete;
  IgnoreSigpipe& operator=(const IgnoreSigpipe&) = delete;

 private:
  sighandler_t old_;
};

// The VM's VNC socket (its emulator has a network namespace of its own).
vl::UniqueFd connect_vnc(HelperEnv& env, const std::string& vm = "tls1") {
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  env.config().vnc_socket_path(vl::VmName::parse(vm).value()).copy(sa.sun_path, sizeof sa.sun_path - 1);
  return connect_vnc_at(AF_UNIX, sa);
}

vl::UniqueFd connect_tcp(uint16_t port) {
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return connect_vnc_at(AF_INET, sa);
}

std::string read_exactly(int fd, size_t n) {
  std::string out(n, '\0');
  size_t got = 0;
  while (got < n) {
    ssize_t r = ::read(fd, out.data() + got, n - got);
    REQUIRE_MESSAGE(r > 0, (r == 0 ? "EOF" : std::strerror(errno)) << " after " << got << " of " << n << " bytes");
    got += static_cast<size_t>(r);
  }
  return out;
}

void write_all(int fd, const std::string& data) { REQUIRE(vl::sys::write_all(fd, data).ok()); }

uint32_t be32(const std::string& s, size_t at) {
  uint32_t v = 0;
  for (size_t i = 0; i < 4; ++i) v = (v << 8) | static_cast<uint8_t>(s[at + i]);
  return v;
}

std::string u32(uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8), static_cast<char>(v)};
}

// RFB 3.8 up to the start of TLS: the security types offered, VeNCrypt 0.2 and its sub-types.
// Returns the sub-types the server offered, having chosen `choose` if it is among them.
std::vector<uint32_t> vencrypt_until_tls(int fd, uint32_t choose) {
  REQUIRE(read_exactly(fd, 12) == "RFB 003.008\n");
  write_all(fd, "RFB 003.008\n");
  auto count = static_cast<uint8_t>(read_exactly(fd, 1)[0]);
  REQUIRE(count > 0);
  std::string types = read_exactly(fd, count);
  REQUIRE_MESSAGE(types == std::string(1, static_cast<char>(kVencrypt)), "security types offered: " << types.size());
  write_all(fd, std::string(1, static_cast<char>(kVencrypt)));
  REQUIRE(read_exactly(fd, 2) == std::string("\0\2", 2));  // VeNCrypt 0.2
  write_all(fd, std::string("\0\2", 2));
  REQUIRE(read_exactly(fd, 1) == std::string(1, '\0'));    // version accepted
  auto subtypes = static_cast<uint8_t>(read_exactly(fd, 1)[0]);
  std::string list = read_exactly(fd, 4u * subtypes);
  std::vector<uint32_t> offered;
  for (size_t i = 0; i < subtypes; ++i) offered.push_back(be32(list, 4 * i));
  if (std::find(offered.begin(), offered.end(), choose) == offered.end()) return offered;
  write_all(fd, u32(choose));
  REQUIRE(read_exactly(fd, 1) == std::string(1, '\1'));  // sub-type accepted: TLS starts
  return offered;
}

struct SslCtxFree {
  void operator()(SSL_CTX* c) const { SSL_CTX_free(c); }
};
struct SslFree {
  void operator()(SSL* s) const { SSL_free(s); }
};

// A TLS client on `fd` that trusts `ca` and expects the server to be 127.0.0.1.
struct TlsClient {
  std::unique_ptr<SSL_CTX, SslCtxFree> ctx;
  std::unique_ptr<SSL, SslFree> ssl;
  int connected = 0;
  long verify = X509_V_OK;
};

// With `cert`, the client presents it (its key is `cert` with .pem replaced by .key).
TlsClient tls_handshake(int fd, const std::string& ca, const std::string& cert = "") {
  TlsClient c;
  c.ctx.reset(SSL_CTX_new(TLS_client_method()));
  REQUIRE(c.ctx);
  REQUIRE(SSL_CTX_load_verify_locations(c.ctx.get(), ca.c_str(), nullptr) == 1);
  if (!cert.empty()) {
    std::string key = cert.substr(0, cert.size() - 4) + ".key";
    REQUIRE(SSL_CTX_use_certificate_file(c.ctx.get(), cert.c_str(), SSL_FILETYPE_PEM) == 1);
    REQUIRE(SSL_CTX_use_PrivateKey_file(c.ctx.get(), key.c_str(), SSL_FILETYPE_PEM) == 1);
  }
  SSL_CTX_set_verify(c.ctx.get(), SSL_VERIFY_PEER, nullptr);
  c.ssl.reset(SSL_new(c.ctx.get()));
  REQUIRE(c.ssl);
  REQUIRE(X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c.ssl.get()), "127.0.0.1") == 1);
  REQUIRE(SSL_set_fd(c.ssl.get(), fd) == 1);
  c.connected = SSL_connect(c.ssl.get());
  c.verify = SSL_get_verify_result(c.ssl.get());
  ERR_clear_error();
  return c;
}

// The first bytes inside TLS: RFB's SecurityResult, or "" if the server ended the session.
std::string security_result(SSL* ssl) {
  std::string out(4, '\0');
  size_t got = 0;
  while (got < out.size()) {
    int r = SSL_read(ssl, out.data() + got, static_cast<int>(out.size() - got));
    if (r <= 0) {
      ERR_clear_error();
      return "";
    }
    got += static_cast<size_t>(r);
  }
  return out;
}

std::string tls_read_exactly(SSL* ssl, size_t n) {
  std::string out(n, '\0');
  size_t got = 0;
  while (got < n) {
    int r = SSL_read(ssl, out.data() + got, static_cast<int>(n - got));
    REQUIRE_MESSAGE(r > 0, "TLS read failed after " << got << " of " << n << " bytes");
    got += static_cast<size_t>(r);
  }
  return out;
}

std::string vm_tls_dir(HelperEnv& env, const std::string& vm) { return env.root() + "/run/vnc-tls/" + vm; }

// A VM with an interface on br-lan, VNC (on its socket) and the configuration's [vnc] tls on.
void define_tls_vm(HelperEnv& env, const VncPki& pki, const std::string& password = "", bool verify_client = false) {
  env.write_config("[vnc]\ntls = true\ntls_dir = \"" + pki.dir() + "\"\n" +
                   (verify_client ? "tls_verify_client = true\n" : ""));
  std::string passwd = password.empty() ? "" : " passwd='" + password + "'";
  env.define({.name = "tls1", .mac = "52:54:00:00:41:01", .bridge = "br-lan",
              .devices = "    <graphics type='vnc' listen='127.0.0.1'" + passwd + "/>\n"});
}

}  // namespace

TEST_SUITE("root/vnc_tls") {
  TEST_CASE("VNC over TLS: VeNCrypt x509 with a certificate the CA verifies; the key copy is the VM's alone and goes with cleanup") {
    IgnoreSigpipe quiet;
    HelperEnv env;
    VncPki pki(env.root() + "/pki");
    define_tls_vm(env, pki);
    auto launched = env.launch("tls1");
    REQUIRE_MESSAGE(launched.running(), launched.log);

    // The copy the emulator reads: its uid's, 0600, in a directory only root and that uid enter.
    struct stat emulator {};
    REQUIRE(::stat(("/proc/" + std::to_string(launched.pid)).c_str(), &emulator) == 0);
    const std::string uid = std::to_string(emulator.st_uid);
    REQUIRE(emulator.st_uid != 0);
    const std::string dir = vm_tls_dir(env, "tls1");
    CHECK(vl::test::owner_and_mode(dir + "/server-key.pem") == uid + ":" + uid + " 0600");
    CHECK(vl::test::owner_and_mode(dir + "/server-cert.pem") == uid + ":" + uid + " 0600");
    CHECK(vl::test::owner_and_mode(dir + "/ca-cert.pem") == uid + ":" + uid + " 0600");
    CHECK(vl::test::owner_and_mode(dir) == "0:" + uid + " 0750");
    CHECK(vl::sys::read_file(dir + "/server-key.pem", 1 << 16).value() ==
          vl::sys::read_file(pki.dir() + "/server-key.pem", 1 << 16).value());

    {
      // No VNC password in the XML: x509 without the VNC challenge.
      vl::UniqueFd s = connect_vnc(env);
      std::vector<uint32_t> offered = vencrypt_until_tls(s.get(), kX509None);
      CHECK(offered == std::vector<uint32_t>{kX509None});
      TlsClient tls = tls_handshake(s.get(), pki.work("ca.pem"));
      REQUIRE_MESSAGE(tls.connected == 1, X509_verify_cert_error_string(tls.verify));
      CHECK(tls.verify == X509_V_OK);
      // Inside TLS, RFB goes on: SecurityResult OK, ClientInit (shared), ServerInit.
      CHECK(be32(tls_read_exactly(tls.ssl.get(), 4), 0) == 0);
      REQUIRE(SSL_write(tls.ssl.get(), "\1", 1) == 1);
      std::string init = tls_read_exactly(tls.ssl.get(), 24);
      uint32_t name_length = be32(init, 20);
      REQUIRE(name_length < 1024);
      CHECK(tls_read_exactly(tls.ssl.get(), name_length) == "QEMU (tls1)");  // the desktop, after -name
    }
    {
      // A client that trusts another CA does not accept the server.
      vl::UniqueFd s = connect_vnc(env);
      vencrypt_until_tls(s.get(), kX509None);
      TlsClient tls = tls_handshake(s.get(), pki.work("otherca.pem"));
      CHECK(tls.connected != 1);
      CHECK(tls.verify != X509_V_OK);
    }

    env.kill_vm(launched.pid);
    auto cleaned = env.helper({"cleanup", "tls1"});
    CHECK_MESSAGE(cleaned.status == 0, cleaned.log);
    CHECK_FALSE(std::filesystem::exists(dir));
    CHECK(std::filesystem::exists(pki.dir() + "/server-key.pem"));  // the operator's source stays
  }

  TEST_CASE("a VM with a directory of its own in tls_dir presents that identity, not the shared one") {
    IgnoreSigpipe quiet;
    HelperEnv env;
    VncPki pki(env.root() + "/pki");
    pki.own_identity("tls1");
    define_tls_vm(env, pki);
    auto launched = env.launch("tls1");
    REQUIRE_MESSAGE(launched.running(), launched.log);
    CHECK(vl::sys::read_file(vm_tls_dir(env, "tls1") + "/server-key.pem", 1 << 16).value() ==
          vl::sys::read_file(pki.dir() + "/tls1/server-key.pem", 1 << 16).value());
    for (auto [ca, accepted] : {std::pair{"otherca.pem", true}, std::pair{"ca.pem", false}}) {
      CAPTURE(ca);
      vl::UniqueFd s = connect_vnc(env);
      vencrypt_until_tls(s.get(), kX509None);
      TlsClient tls = tls_handshake(s.get(), pki.work(ca));
      CHECK((tls.connected == 1) == accepted);
    }
    env.kill_vm(launched.pid);
    CHECK(env.helper({"cleanup", "tls1"}).status == 0);
  }

  TEST_CASE("VNC over TLS with a password: VeNCrypt x509 then the VNC challenge") {
    IgnoreSigpipe quiet;
    HelperEnv env;
    VncPki pki(env.root() + "/pki");
    define_tls_vm(env, pki, "secret");
    auto launched = env.launch("tls1");
    REQUIRE_MESSAGE(launched.running(), launched.log);
    vl::UniqueFd s = connect_vnc(env);
    CHECK(vencrypt_until_tls(s.get(), kX509Vnc) == std::vector<uint32_t>{kX509Vnc});
    TlsClient tls = tls_handshake(s.get(), pki.work("ca.pem"));
    REQUIRE_MESSAGE(tls.connected == 1, X509_verify_cert_error_string(tls.verify));
    CHECK(tls_read_exactly(tls.ssl.get(), 16).size() == 16);  // the VNC authentication challenge
    env.kill_vm(launched.pid);
    auto cleaned = env.helper({"cleanup", "tls1"});
    CHECK_MESSAGE(cleaned.status == 0, cleaned.log);
  }

  TEST_CASE("with tls_verify_client, a viewer without a certificate from the CA is turned away, one with it is served") {
    IgnoreSigpipe quiet;
    HelperEnv env;
    VncPki pki(env.root() + "/pki");
    define_tls_vm(env, pki, "", /*verify_client=*/true);
    auto launched = env.launch("tls1");
    REQUIRE_MESSAGE(launched.running(), launched.log);
    {
      vl::UniqueFd s = connect_vnc(env);
      vencrypt_until_tls(s.get(), kX509None);
      TlsClient tls = tls_handshake(s.get(), pki.work("ca.pem"));
      // Under TLS 1.3 the client's handshake may complete before the server refuses it.
      CHECK((tls.connected != 1 || security_result(tls.ssl.get()).empty()));
    }
    {
      vl::UniqueFd s = connect_vnc(env);
      vencrypt_until_tls(s.get(), kX509None);
      TlsClient tls = tls_handshake(s.get(), pki.work("ca.pem"), pki.work("client.pem"));
      REQUIRE_MESSAGE(tls.connected == 1, X509_verify_cert_error_string(tls.verify));
      CHECK(security_result(tls.ssl.get()) == std::string(4, '\0'));
    }
    env.kill_vm(launched.pid);
    CHECK(env.helper({"cleanup", "tls1"}).status == 0);
  }

  TEST_CASE("VNC over TLS through vmctl vnc: the daemon plans it, and the channel relays the TLS session unchanged") {
    IgnoreSigpipe quiet;
    SystemEnv env;
    VncPki pki(env.root() + "/pki");
    env.write_config("[vnc]\ntls = true\ntls_dir = \"" + pki.dir() + "\"\n");
    env.stop_daemon();  // the daemon reads [vnc] at start
    env.start_daemon();
    env.define({.name = "tls1", .nic = false,
                .devices = "    <graphics type='vnc' listen='127.0.0.1'/>\n"});
    auto started = env.vmctl({"start", "tls1"});
    REQUIRE_MESSAGE(started.exit_code == 0, started.out << env.log());
    LiveVmctl vnc(env, {"vnc", "tls1", "--listen", "127.0.0.1:0"});
    REQUIRE_MESSAGE(vnc.wait_for("; connect a VNC viewer", 60s), vnc.output());
    size_t at = vnc.output().find("127.0.0.1:");
    REQUIRE(at != std::string::npos);
    vl::UniqueFd viewer = connect_tcp(static_cast<uint16_t>(std::stoi(vnc.output().substr(at + 10))));
    CHECK(vencrypt_until_tls(viewer.get(), kX509None) == std::vector<uint32_t>{kX509None});
    // The certificate names the VM's host (127.0.0.1 here), which the local forward also is.
    TlsClient tls = tls_handshake(viewer.get(), pki.work("ca.pem"));
    REQUIRE_MESSAGE(tls.connected == 1, X509_verify_cert_error_string(tls.verify));
    CHECK(be32(tls_read_exactly(tls.ssl.get(), 4), 0) == 0);
    vnc.terminate();
    CHECK(vnc.wait_exit(60s) == 0);
    auto stopped = env.vmctl({"stop", "--force", "tls1"});
    CHECK_MESSAGE(stopped.exit_code == 0, stopped.out);
    // The daemon runs cleanup once the emulator has gone, which takes the copy with it.
    auto deadline = std::chrono::steady_clock::now() + 60s;
    while (std::filesystem::exists(vm_tls_dir(env, "tls1")) && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    CHECK_FALSE(std::filesystem::exists(vm_tls_dir(env, "tls1")));
  }

  TEST_CASE("a launch that fails at or after the vnc-tls step leaves no copy of the credentials") {
    if (!kFaultInjection) return;
    HelperEnv env;
    VncPki pki(env.root() + "/pki");
    define_tls_vm(env, pki);
    for (const char* step : {"vnc-tls", "disk-owner", "vnc-socket", "tap", "bridge-attach", "monitor-socket", "exec"}) {
      CAPTURE(step);
      auto r = env.launch("tls1", {std::string("VMLAUNCH_FAIL_AT=") + step});
      REQUIRE_FALSE(r.running());
      CHECK(WEXITSTATUS(r.status) == 1);
      if (std::string(step) != "vnc-tls")  // the copy was made, and went
        CHECK_MESSAGE(r.log.find("rolling back step 'vnc-tls'") != std::string::npos, r.log);
      CHECK_FALSE(std::filesystem::exists(vm_tls_dir(env, "tls1")));
      CHECK_FALSE(std::filesystem::exists(env.root() + "/run/vms/tls1"));
    }
  }

  TEST_CASE("missing or unsafe VNC TLS credentials refuse the launch, naming the file, and change nothing") {
    HelperEnv env;
    VncPki pki(env.root() + "/pki");
    define_tls_vm(env, pki);
    const std::string key = pki.dir() + "/server-key.pem";
    const std::string kept = pki.work("server-key.pem");
    std::filesystem::rename(key, kept);

    SUBCASE("a missing key") {
      vl::test::check_launch_refused(env, "tls1", "'" + key + "' is missing");
    }
    SUBCASE("a key others can read") {
      std::filesystem::copy_file(kept, key);
      ::chmod(key.c_str(), 0640);
      vl::test::check_launch_refused(env, "tls1", "'" + key + "' is readable by users other than root");
    }
    SUBCASE("a key that is a symlink") {
      std::filesystem::create_symlink(kept, key);
      vl::test::check_launch_refused(env, "tls1", "'" + key + "' is a symlink");
    }
    SUBCASE("a certificate someone else owns") {
      std::filesystem::copy_file(kept, key);
      ::chmod(key.c_str(), 0600);
      REQUIRE(::chown((pki.dir() + "/server-cert.pem").c_str(), 65534, 65534) == 0);
      vl::test::check_launch_refused(env, "tls1", "'" + pki.dir() + "/server-cert.pem' must be a regular file");
    }
    SUBCASE("no credentials directory") {
      env.write_config("[vnc]\ntls = true\ntls_dir = \"" + env.root() + "/nowhere\"\n");
      vl::test::check_launch_refused(env, "tls1", "its directory '" + env.root() + "/nowhere' is missing");
    }
    CHECK_FALSE(std::filesystem::exists(vm_tls_dir(env, "tls1")));
  }
}
