// Remote administration against the real daemon: the roles of local callers, and vmctl -H
// ssh:// through a real OpenSSH server (Debian's openssh-server) that the test runs on loopback
// in its own network namespace, with test-made host and user keys.
#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <grp.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/spawn.h"
#include "common/sys.h"
#include "tests/support/system_env.h"

namespace {

using vl::test::CommandResult;
using vl::test::SystemEnv;

constexpr uid_t kAdminUid = 4243, kStrangerUid = 4242, kReaderUid = 4244;
constexpr gid_t kAdminGid = 100;   // Debian's "users": the test's admin group
constexpr gid_t kReaderGid = 50;   // Debian's "staff": the test's read-only group
constexpr int kSshPort = 2222;

sockaddr_in loopback(int port) {
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(port));
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return sa;
}

std::string group_name(gid_t gid) {
  const group* g = ::getgrgid(gid);
  REQUIRE(g != nullptr);
  return g->gr_name;
}

// The system with "users" as the admin group and "staff" as the read-only group.
class RolesEnv : public SystemEnv {
 public:
  RolesEnv() {
    users_ = "[users]\ndaemon_user = \"nobody\"\ndaemon_group = \"nogroup\"\nadmin_group = \"" + group_name(kAdminGid) +
             "\"\n" + vl::test::test_uid_range();
    write_config("[control]\nreadonly_group = \"" + group_name(kReaderGid) + "\"\n");
    stop_daemon();
    start_daemon();
  }
};

// vmctl as `uid` with exactly `groups` (setpriv), on the environment's daemon.
CommandResult vmctl_as(SystemEnv& env, uid_t uid, std::vector<gid_t> groups, std::vector<std::string> args) {
  std::string gid = std::to_string(groups.empty() ? uid : groups[0]);
  std::string list;
  for (gid_t g : groups) list += (list.empty() ? "" : ",") + std::to_string(g);
  std::vector<std::string> argv = {"setpriv", "--reuid=" + std::to_string(uid), "--regid=" + gid,
                                   groups.empty() ? "--clear-groups" : "--groups=" + list,
                                   vl::test::build_path("VMLAUNCH_VMCTL"), "--config", env.config_path()};
  argv.insert(argv.end(), args.begin(), args.end());
  return vl::test::run_program("/usr/bin/setpriv", argv);
}

std::string run_checked(const std::string& path, std::vector<std::string> argv) {
  auto r = vl::test::run_program(path, std::move(argv));
  REQUIRE_MESSAGE(r.exit_code == 0, r.out);
  return r.out;
}

std::string state_of(SystemEnv& env, const std::string& vm) {
  auto r = env.vmctl({"list", "--json"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.out);
  for (const auto& row : nlohmann::json::parse(r.out, nullptr, false))
    if (row["name"] == vm) return row["state"];
  return "";
}

// A real sshd on 127.0.0.1:kSshPort in the environment's network namespace. It runs in a mount
// namespace of its own where /etc/passwd and /etc/group also list the test's users (so the
// host's files are never changed) and /run is a private tmpfs (sshd's privilege separation
// directory). Each user's key is forced to run the far side of vmctl -H ssh://, after checking
// that vmctl asked for exactly `vmctl dial-stdio`.
class SshServer final {
 public:
  explicit SshServer(SystemEnv& env) : dir_(env.root() + "/ssh") {
    std::filesystem::create_directories(dir_ + "/keys");
    ::chmod(dir_.c_str(), 0755);
    for (const char* key : {"host_key", "user_key"})
      run_checked("/usr/bin/ssh-keygen", {"ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", dir_ + "/" + key});
    write_accounts();
    const std::string user_key = read(dir_ + "/user_key.pub");
    // Inside authorized_keys' command="...", a double quote is written \".
    const std::string bridge = "test \\\"$SSH_ORIGINAL_COMMAND\\\" = 'vmctl dial-stdio' && exec " +
                               vl::test::build_path("VMLAUNCH_VMCTL") + " --socket " + env.config().control_socket() +
                               " dial-stdio";
    for (const char* user : {"vladmin", "vlstranger", "vlreader"})
      std::ofstream(dir_ + "/keys/" + user) << "restrict,command=\"" << bridge << "\" " << user_key;
    std::ofstream(dir_ + "/sshd_config") << "Port " << kSshPort << "\nListenAddress 127.0.0.1\n"
                                         << "HostKey " << dir_ << "/host_key\nPidFile none\nUsePAM no\n"
                                         << "StrictModes no\nAuthorizedKeysFile " << dir_ << "/keys/%u\n"
                                         << "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                                         << "PermitRootLogin no\nAllowUsers vladmin vlstranger vlreader\n";
    std::ofstream(dir_ + "/known_hosts") << "[127.0.0.1]:" << kSshPort << " " << read(dir_ + "/host_key.pub");
    std::ofstream(dir_ + "/ssh_config") << "Host *\n  IdentityFile " << dir_ << "/user_key\n  IdentitiesOnly yes\n"
                                        << "  UserKnownHostsFile " << dir_ << "/known_hosts\n"
                                        << "  GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n"
                                        << "  BatchMode yes\n  ConnectTimeout 60\n";
    // What VMCTL_SSH names: ssh with the test's client configuration.
    std::ofstream(dir_ + "/ssh") << "#!/bin/sh\nexec /usr/bin/ssh -F " << dir_ << "/ssh_config \"$@\"\n";
    ::chmod((dir_ + "/ssh").c_str(), 0755);
    const std::string script = "mount --make-rprivate / && mount --bind " + dir_ + "/passwd /etc/passwd && mount --bind " +
                               dir_ + "/group /etc/group && mount -t tmpfs -o mode=0755 tmpfs /run && mkdir /run/sshd && " +
                               "exec /usr/sbin/sshd -D -e -f " + dir_ + "/sshd_config";
    log_.reset(::open((dir_ + "/sshd.log").c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
    auto pid = vl::spawn({"/usr/bin/unshare", {"unshare", "--mount", "--", "/bin/sh", "-c", script},
                          {"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, {{log_.get(), 1}, {log_.get(), 2}}});
    REQUIRE(pid.ok());
    pid_ = *pid;
    wait_listening();
  }
  ~SshServer() {
    ::kill(pid_, SIGTERM);
    (void)vl::wait_for(pid_);
  }
  SshServer(const SshServer&) = delete;
  SshServer& operator=(const SshServer&) = delete;

  /// vmctl -H ssh://USER@127.0.0.1:2222 ARGS, as root on the near side.
  CommandResult vmctl(const std::string& user, std::vector<std::string> args) {
    std::vector<std::string> argv = {"vmctl", "-H", "ssh://" + user + "@127.0.0.1:" + std::to_string(kSshPort)};
    argv.insert(argv.end(), args.begin(), args.end());
    return run_with_env(argv, {"PATH=/usr/bin:/bin", "VMCTL_SSH=" + dir_ + "/ssh"});
  }

  /// The same through VMCTL_HOST.
  CommandResult vmctl_env_host(const std::string& user, std::vector<std::string> args) {
    std::vector<std::string> argv = {"vmctl"};
    argv.insert(argv.end(), args.begin(), args.end());
    return run_with_env(argv, {"PATH=/usr/bin:/bin", "VMCTL_SSH=" + dir_ + "/ssh",
                               "VMCTL_HOST=ssh://" + user + "@127.0.0.1:" + std::to_string(kSshPort)});
  }

  std::string log() const { return read(dir_ + "/sshd.log"); }

 private:
  static std::string read(const std::string& path) {
    auto text = vl::sys::read_file(path, 1 << 20);
    return text ? *text : "";
  }

  void write_accounts() {
    std::ofstream(dir_ + "/passwd") << read("/etc/passwd") << "vladmin:x:" << kAdminUid << ":" << kAdminGid
                                    << "::/:/bin/sh\nvlstranger:x:" << kStrangerUid << ":" << kStrangerUid
                                    << "::/:/bin/sh\nvlreader:x:" << kReaderUid << ":" << kReaderGid << "::/:/bin/sh\n";
    std::ofstream(dir_ + "/group") << read("/etc/group") << "vlstranger:x:" << kStrangerUid << ":\n";
    ::chmod((dir_ + "/passwd").c_str(), 0644);
    ::chmod((dir_ + "/group").c_str(), 0644);
  }

  // Polls until sshd accepts connections (a harness may poll; the deadline is generous).
  void wait_listening() {
    sockaddr_in sa = loopback(kSshPort);
    for (int i = 0; i < 3000; ++i) {
      vl::UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
      if (::connect(s.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    FAIL("sshd never listened: " << log());
  }

  CommandResult run_with_env(const std::vector<std::string>& argv, std::vector<std::string> env) {
    int fds[2];
    REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
    vl::UniqueFd out_read(fds[0]), out_write(fds[1]);
    auto pid = vl::spawn({vl::test::build_path("VMLAUNCH_VMCTL"), argv, std::move(env),
                          {{out_write.get(), 1}, {out_write.get(), 2}}});
    REQUIRE(pid.ok());
    out_write.reset();
    CommandResult r;
    r.out = vl::sys::read_all(out_read.get(), 1 << 20).value();
    int status = vl::wait_for(*pid).value();
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return r;
  }

  std::string dir_;
  vl::UniqueFd log_;
  pid_t pid_ = -1;
};

std::string mac_of(int i) {
  char buf[18];
  std::snprintf(buf, sizeof buf, "52:54:00:00:13:%02x", i);
  return buf;
}

constexpr int kTlsPort = 16514;

// Certificates made at test time with openssl(1): a CA and a server certificate for
// 127.0.0.1, client certificates with the given subjects, one from another CA, one expired.
class Pki final {
 public:
  explicit Pki(const std::string& dir) : dir_(dir) {
    std::filesystem::create_directories(dir_ + "/newcerts");
    ::chmod(dir_.c_str(), 0755);
    ca("ca", "/CN=vmlaunch test CA");
    ca("otherca", "/CN=another CA");
    leaf("server", "/CN=127.0.0.1", "ca", "subjectAltName=IP:127.0.0.1");
    leaf("alice", "/O=Example/OU=ops/CN=alice", "ca");
    leaf("bob", "/O=Example/CN=bob", "ca");
    leaf("eve", "/O=Evil/CN=eve", "ca");
    // From the right CA, in O=Example but not OU=ops, with a CN chosen to read as OU=ops.
    leaf("mole", "/O=Example/CN=mole,OU=ops", "ca");
    leaf("mallory", "/O=Example/OU=ops/CN=mallory", "otherca");
    expired("old", "/O=Example/OU=ops/CN=old");
    // The daemon (user nobody) reads its key, which only it may read.
    REQUIRE(::chown((dir_ + "/server.key").c_str(), 65534, 65534) == 0);
    ::chmod((dir_ + "/server.key").c_str(), 0600);
  }
  std::string path(const std::string& name) const { return dir_ + "/" + name; }

 private:
  void ca(const std::string& name, const std::string& subject) {
    run_checked("/usr/bin/openssl", {"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                                     "-nodes", "-keyout", path(name + ".key"), "-out", path(name + ".pem"), "-subj", subject,
                                     "-days", "2"});
  }
  void request(const std::string& name, const std::string& subject, const std::string& ext) {
    std::vector<std::string> argv = {"openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                                     "-nodes", "-keyout", path(name + ".key"), "-out", path(name + ".csr"), "-subj", subject};
    if (!ext.empty()) argv.insert(argv.end(), {"-addext", ext});
    run_checked("/usr/bin/openssl", argv);
  }
  void leaf(const std::string& name, const std::string& subject, const std::string& issuer, const std::string& ext = "") {
    request(name, subject, ext);
    run_checked("/usr/bin/openssl", {"openssl", "x509", "-req", "-in", path(name + ".csr"), "-CA", path(issuer + ".pem"),
                                     "-CAkey", path(issuer + ".key"), "-CAcreateserial", "-days", "2", "-copy_extensions",
                                     "copy", "-out", path(name + ".pem")});
  }
  // x509 -req cannot backdate; openssl ca can, with a minimal configuration.
  void expired(const std::string& name, const std::string& subject) {
    request(name, subject, "");
    std::ofstream(path("index.txt"));
    std::ofstream(path("serial")) << "1000\n";
    std::ofstream(path("ca.cnf")) << "[ca]\ndefault_ca = test\n[test]\ndatabase = " << path("index.txt")
                                  << "\nnew_certs_dir = " << path("newcerts") << "\nserial = " << path("serial")
                                  << "\ndefault_md = sha256\npolicy = any\n[any]\ncommonName = supplied\n"
                                  << "organizationName = optional\norganizationalUnitName = optional\n";
    run_checked("/usr/bin/openssl", {"openssl", "ca", "-batch", "-config", path("ca.cnf"), "-cert", path("ca.pem"),
                                     "-keyfile", path("ca.key"), "-in", path(name + ".csr"), "-out", path(name + ".pem"),
                                     "-startdate", "20200101000000Z", "-enddate", "20200102000000Z", "-notext"});
  }

  std::string dir_;
};

// The system with the TLS listener on 127.0.0.1 (in the test's network namespace).
class TlsEnv : public RolesEnv {
 public:
  TlsEnv() : pki_(root() + "/pki") {
    write_config("[control]\nreadonly_group = \"" + group_name(kReaderGid) + "\"\nmax_connections = 4\n" +
                 "max_connections_per_uid = 4\nmessage_timeout = 5\n[tls]\nlisten = \"127.0.0.1:" +
                 std::to_string(kTlsPort) + "\"\ncert = \"" + pki_.path("server.pem") + "\"\nkey = \"" +
                 pki_.path("server.key") + "\"\nca = \"" + pki_.path("ca.pem") +
                 "\"\nadmin_dns = [\"CN=*,OU=ops,O=Example\"]\nreadonly_dns = [\"CN=bob,O=Example\"]\n");
    stop_daemon();
    start_daemon();
    wait_for_tls_listener();
  }

  /// vmctl -H tls://HOST:16514 as root, as the client `who` (its certificate and key), trusting `ca`.
  CommandResult vmctl_tls(const std::string& who, std::vector<std::string> args, const std::string& ca = "ca",
                          const std::string& host = "127.0.0.1") {
    std::vector<std::string> argv = {"vmctl", "-H", "tls://" + host + ":" + std::to_string(kTlsPort), "--tls-ca",
                                     pki_.path(ca + ".pem"), "--tls-cert", who.empty() ? "" : pki_.path(who + ".pem"),
                                     "--tls-key", who.empty() ? "" : pki_.path(who + ".key")};
    argv.insert(argv.end(), args.begin(), args.end());
    return vl::test::run_program(vl::test::build_path("VMLAUNCH_VMCTL"), argv);
  }

 private:
  void wait_for_tls_listener() {
    for (int i = 0; i < 2000 && log().find("listening for TLS clients") == std::string::npos; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    REQUIRE_MESSAGE(log().find("listening for TLS clients") != std::string::npos, log());
  }

  Pki pki_;
};

// A TCP connection to the TLS listener from `from` (an address of 127.0.0.0/8).
vl::UniqueFd tcp_to_listener(const char* from = "127.0.0.1") {
  sockaddr_in sa = loopback(kTlsPort);
  vl::UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in src{};
  src.sin_family = AF_INET;
  REQUIRE(::inet_pton(AF_INET, from, &src.sin_addr) == 1);
  REQUIRE(::bind(s.get(), reinterpret_cast<sockaddr*>(&src), sizeof src) == 0);
  REQUIRE(::connect(s.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
  return s;
}

// True once the daemon closed `fd` (within `limit`); false while it stays open.
bool closed_by_daemon(int fd, int limit_ms) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, limit_ms) != 1) return false;
  char c;
  return ::recv(fd, &c, 1, 0) <= 0;
}

// True if one line of `log` has every one of `parts`, in order.
bool log_has_line(const std::string& log, const std::vector<std::string>& parts) {
  for (size_t at = 0; at < log.size();) {
    size_t end = log.find('\n', at);
    std::string line = log.substr(at, end == std::string::npos ? std::string::npos : end - at);
    at = end == std::string::npos ? log.size() : end + 1;
    size_t pos = 0;
    bool all = true;
    for (const std::string& p : parts) {
      pos = line.find(p, pos);
      if (pos == std::string::npos) {
        all = false;
        break;
      }
      pos += p.size();
    }
    if (all) return true;
  }
  return false;
}

}  // namespace

TEST_SUITE("root/remote") {
  TEST_CASE("the read-only group may list and read status, nothing else; changes are logged with the caller") {
    RolesEnv env;
    env.define({.name = "web1", .mac = mac_of(1)});
    auto list = vmctl_as(env, kReaderUid, {kReaderGid}, {"list"});
    CHECK_MESSAGE(list.exit_code == 0, list.out);
    CHECK(list.out.find("web1") != std::string::npos);
    auto status = vmctl_as(env, kReaderUid, {kReaderGid}, {"status", "web1"});
    CHECK_MESSAGE(status.exit_code == 0, status.out);
    auto start = vmctl_as(env, kReaderUid, {kReaderGid}, {"start", "web1"});
    CHECK(start.exit_code == 1);
    CHECK_MESSAGE(start.out.find("permission denied: uid 4244 is read-only and may not call Start") != std::string::npos,
                  start.out);
    CHECK(state_of(env, "web1") == "stopped");

    auto stranger = vmctl_as(env, kStrangerUid, {}, {"list"});
    CHECK(stranger.exit_code == 1);
    CHECK_MESSAGE(stranger.out.find("is neither root nor in group '" + group_name(kAdminGid) + "' or '" +
                                    group_name(kReaderGid) + "'") != std::string::npos,
                  stranger.out);

    auto admin = vmctl_as(env, kAdminUid, {kAdminGid}, {"start", "web1"});
    CHECK_MESSAGE(admin.exit_code == 0, admin.out);
    CHECK(state_of(env, "web1") == "running");
    auto stop = vmctl_as(env, kAdminUid, {kAdminGid}, {"stop", "--force", "web1"});
    CHECK_MESSAGE(stop.exit_code == 0, stop.out);
    // The event log: who, how and with which role, the call, its VM, the outcome.
    const std::string log = env.log();
    CHECK_MESSAGE(log.find("uid 4244 [local, read-only]: Start 'web1': refused") != std::string::npos, log);
    CHECK(log.find("uid 4243 [local, admin]: Start 'web1': allowed") != std::string::npos);
    CHECK(log.find("uid 4243 [local, admin]: Stop 'web1': allowed") != std::string::npos);
    CHECK(log.find("List") == std::string::npos);  // local reads are not audited
  }

  TEST_CASE("vmctl -H ssh:// lists, starts and stops through a real sshd; a user outside the admin group is refused") {
    RolesEnv env;
    env.define({.name = "web1", .mac = mac_of(2)});
    SshServer sshd(env);

    auto list = sshd.vmctl("vladmin", {"list"});
    REQUIRE_MESSAGE(list.exit_code == 0, list.out, sshd.log());
    CHECK(list.out.find("web1") != std::string::npos);
    CHECK(list.out.find("stopped") != std::string::npos);

    auto start = sshd.vmctl_env_host("vladmin", {"start", "web1"});
    CHECK_MESSAGE(start.exit_code == 0, start.out);
    CHECK(state_of(env, "web1") == "running");
    auto status = sshd.vmctl("vladmin", {"status", "web1"});
    CHECK(status.out.find("running") != std::string::npos);
    auto stop = sshd.vmctl("vladmin", {"stop", "--force", "web1"});
    CHECK_MESSAGE(stop.exit_code == 0, stop.out);
    CHECK(state_of(env, "web1") == "stopped");
    // The far daemon saw the ssh login's uid and groups, and logged every call, reads too,
    // with the SSH client dial-stdio relays.
    CHECK_MESSAGE(log_has_line(env.log(), {"uid 4243", " [local from ssh client 127.0.0.1 port ", ", admin]: Start 'web1': allowed"}),
                  env.log());
    CHECK(log_has_line(env.log(), {"uid 4243", " [local from ssh client 127.0.0.1 port ", ", admin]: List: allowed"}));
    CHECK(log_has_line(env.log(), {"uid 4243", " [local from ssh client 127.0.0.1 port ", ", admin]: Status 'web1': allowed"}));

    auto stranger = sshd.vmctl("vlstranger", {"start", "web1"});
    CHECK(stranger.exit_code == 1);
    CHECK_MESSAGE(stranger.out.find("permission denied: uid 4242 is neither root nor in group '" +
                                    group_name(kAdminGid) + "'") != std::string::npos,
                  stranger.out);
    CHECK(state_of(env, "web1") == "stopped");

    auto reader = sshd.vmctl("vlreader", {"list"});
    CHECK_MESSAGE(reader.exit_code == 0, reader.out);
    CHECK(log_has_line(env.log(), {"uid 4244", " [local from ssh client 127.0.0.1 port ", ", read-only]: List: allowed"}));
    auto reader_stop = sshd.vmctl("vlreader", {"kill", "web1"});
    CHECK(reader_stop.exit_code == 1);
    CHECK(reader_stop.out.find("is read-only and may not call Kill") != std::string::npos);

    // A key sshd does not accept: ssh's own message, then vmctl's.
    auto unknown = sshd.vmctl("nosuchuser", {"list"});
    CHECK(unknown.exit_code == 1);
    CHECK_MESSAGE(unknown.out.find("Permission denied (publickey)") != std::string::npos, unknown.out);
    CHECK_MESSAGE(unknown.out.find("vmctl: lost the connection to vmlaunchd on ssh://nosuchuser@127.0.0.1:2222 (ssh "
                                   "failed, or found no vmlaunchd there)") != std::string::npos,
                  unknown.out);
  }

  TEST_CASE("bad -H URLs are refused before anything runs") {
    RolesEnv env;
    for (const char* url : {"http://host", "ssh://-oProxyCommand=x", "ssh://a;b", "ssh://user@", "ssh://host:0",
                            "tls://user@host"}) {
      CAPTURE(url);
      auto r = env.vmctl({"-H", url, "list"});
      // --config names the local daemon: combining it with -H is a usage error.
      CHECK(r.exit_code == 2);
      auto plain = vl::test::run_program(vl::test::build_path("VMLAUNCH_VMCTL"), {"vmctl", "-H", url, "list"});
      CHECK(plain.exit_code == 1);
      CHECK_MESSAGE(plain.out.find("vmctl: host '") != std::string::npos, plain.out);
    }
  }

  TEST_CASE("vmctl -H tls:// with a client certificate: the allowed DN is served, every other is refused, nothing runs") {
    TlsEnv env;
    env.define({.name = "web1", .mac = mac_of(3)});

    auto list = env.vmctl_tls("alice", {"list"});
    REQUIRE_MESSAGE(list.exit_code == 0, list.out, env.log());
    CHECK(list.out.find("web1") != std::string::npos);
    auto start = env.vmctl_tls("alice", {"start", "web1"});
    CHECK_MESSAGE(start.exit_code == 0, start.out);
    CHECK(state_of(env, "web1") == "running");
    auto stop = env.vmctl_tls("alice", {"stop", "--force", "web1"});
    CHECK_MESSAGE(stop.exit_code == 0, stop.out);
    CHECK(state_of(env, "web1") == "stopped");

    auto reader = env.vmctl_tls("bob", {"list"});
    CHECK_MESSAGE(reader.exit_code == 0, reader.out);
    auto reader_start = env.vmctl_tls("bob", {"start", "web1"});
    CHECK(reader_start.exit_code == 1);
    CHECK_MESSAGE(reader_start.out.find("permission denied: certificate 'CN=bob,O=Example' is read-only and may not call Start") !=
                      std::string::npos,
                  reader_start.out);

    struct Refused {
      const char* client;
      const char* message;
    };
    const Refused refused[] = {
        {"eve", "permission denied: certificate 'CN=eve,O=Evil' matches no allowed DN"},
        {"", "certificate required"},      // no certificate at all
        {"mallory", "unknown ca"},         // signed by another CA
        {"old", "certificate expired"},
    };
    for (const Refused& r : refused) {
      CAPTURE(r.client);
      auto attempt = env.vmctl_tls(r.client, {"start", "web1"});
      CHECK(attempt.exit_code == 1);
      CHECK_MESSAGE(attempt.out.find(r.message) != std::string::npos, attempt.out);
      CHECK(state_of(env, "web1") == "stopped");
    }

    // Every remote call is in the event log with the certificate, the address and the role.
    const std::string log = env.log();
    CHECK_MESSAGE(log.find("certificate 'CN=alice,OU=ops,O=Example' [tls from 127.0.0.1:") != std::string::npos, log);
    CHECK(log.find(", admin]: Start 'web1': allowed") != std::string::npos);
    CHECK(log.find(", admin]: List: allowed") != std::string::npos);
    CHECK(log.find("certificate 'CN=eve,O=Evil' [tls from 127.0.0.1:") != std::string::npos);
    CHECK(log.find(", none]: Start 'web1': refused") != std::string::npos);
    CHECK(log.find("TLS handshake with 127.0.0.1:") != std::string::npos);
  }

  // The DN is "CN=mole\,OU=ops,O=Example": the admin pattern "CN=*,OU=ops,O=Example" must not
  // match it by letting the '*' end on the backslash.
  TEST_CASE("a certificate whose CN ends in ',OU=ops' is not in OU=ops: it gets no role and nothing runs") {
    TlsEnv env;
    env.define({.name = "web1", .mac = mac_of(9)});
    auto start = env.vmctl_tls("mole", {"start", "web1"});
    CHECK(start.exit_code == 1);
    CHECK_MESSAGE(start.out.find("permission denied: certificate 'CN=mole\\,OU=ops,O=Example' matches no allowed DN") !=
                      std::string::npos,
                  start.out);
    CHECK(state_of(env, "web1") == "stopped");
  }

  TEST_CASE("vmctl checks the daemon's certificate: another CA or another name is refused before anything is sent") {
    TlsEnv env;
    auto wrong_ca = env.vmctl_tls("alice", {"list"}, "otherca");
    CHECK(wrong_ca.exit_code == 1);
    CHECK_MESSAGE(wrong_ca.out.find("TLS handshake with 127.0.0.1 port 16514 failed: the server's certificate:") !=
                      std::string::npos,
                  wrong_ca.out);
    // The certificate names 127.0.0.1 only.
    auto wrong_name = env.vmctl_tls("alice", {"list"}, "ca", "localhost");
    CHECK(wrong_name.exit_code == 1);
    // OpenSSL 3.0's text for X509_V_ERR_HOSTNAME_MISMATCH.
    CHECK_MESSAGE(wrong_name.out.find("the server's certificate: hostname mismatch") != std::string::npos, wrong_name.out);
    CHECK(env.log().find("[tls from") == std::string::npos);  // no call reached the daemon
  }

  TEST_CASE("idle TCP peers cannot hold the TLS listener: handshakes are capped and cut off at the deadline") {
    TlsEnv env;  // max_connections = 4, message_timeout = 5 s
    std::vector<vl::UniqueFd> idle;
    // One address holds at most half of the handshake slots: a third from it is closed unread.
    for (int i = 0; i < 2; ++i) idle.push_back(tcp_to_listener("127.0.0.2"));
    vl::UniqueFd third = tcp_to_listener("127.0.0.2");
    CHECK(closed_by_daemon(third.get(), 60'000));
    CHECK(env.log().find("Refusing TLS connections: 2 handshakes in progress from 127.0.0.2 (half of "
                         "control.max_connections)") != std::string::npos);
    // Another address takes the other half; then every slot is taken, and a fifth peer is
    // closed unread, while the four still wait.
    for (int i = 0; i < 2; ++i) idle.push_back(tcp_to_listener("127.0.0.3"));
    vl::UniqueFd fifth = tcp_to_listener("127.0.0.4");
    CHECK(closed_by_daemon(fifth.get(), 60'000));
    CHECK_FALSE(closed_by_daemon(idle[0].get(), 0));
    CHECK(env.log().find("Refusing TLS connections: 4 handshakes in progress (control.max_connections)") !=
          std::string::npos);
    // Every idle peer is disconnected by the daemon once its handshake deadline passed.
    for (auto& fd : idle) CHECK(closed_by_daemon(fd.get(), 60'000));
    // And the listener serves again.
    auto list = env.vmctl_tls("alice", {"list"});
    CHECK_MESSAGE(list.exit_code == 0, list.out);
  }

  TEST_CASE("a peer that opens handshakes as fast as it may cannot lock the other addresses out of the TLS listener") {
    TlsEnv env;  // max_connections = 4, message_timeout = 5 s
    std::vector<vl::UniqueFd> idle;
    for (int i = 0; i < 4; ++i) idle.push_back(tcp_to_listener("127.0.0.2"));
    REQUIRE_FALSE(closed_by_daemon(idle[0].get(), 0));  // its share is held meanwhile
    auto list = env.vmctl_tls("alice", {"list"});  // from 127.0.0.1
    CHECK_MESSAGE(list.exit_code == 0, list.out << env.log());
  }
}
