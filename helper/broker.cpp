#include "helper/broker.h"

#include <fcntl.h>
#include <poll.h>
#include <pwd.h>
#include <grp.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "common/broker_protocol.h"
#include "common/domain_file.h"
#include "common/spawn.h"
#include "common/sys.h"
#include "common/vm_state.h"
#include "helper/cleanup.h"
#include "helper/inspect.h"
#include "helper/launch.h"
#include "helper/log.h"
#include "helper/reattach.h"
#include "helper/runtime_dir.h"
#include "helper/uid_map.h"
#include "helper/uid_reaper.h"

namespace vl::helper {

namespace {

// How long a SIGKILL'd emulator may take to exit before `kill` answers anyway.
constexpr int kKillWaitMs = 5000;
// How long a connection may stay silent before the broker closes it.
constexpr int64_t kIdleMs = 60'000;
// Connections served at once, each with at most one request in flight: the daemon opens up to
// kBrokerConnections (broker_protocol.h); the rest is room for a restarted daemon while the
// requests of its predecessor finish.
constexpr size_t kMaxConnections = 2 * kBrokerConnections;

struct BrokerContext {
  const HostConfig& config;
  std::string config_path;
  std::string self_exe;
};

Result<int> start_with_systemd(const VmName& vm) {
  sd_bus* raw = nullptr;
  if (int r = sd_bus_open_system(&raw); r < 0) return Error::from_errno(-r, "connect to the system bus");
  std::unique_ptr<sd_bus, sd_bus*(*)(sd_bus*)> bus(raw, sd_bus_flush_close_unref);
  sd_bus_error error = SD_BUS_ERROR_NULL;
  sd_bus_message* reply = nullptr;
  std::string unit = "kvm-vm@" + vm.str() + ".service";
  int r = sd_bus_call_method(bus.get(), "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
                             "org.freedesktop.systemd1.Manager", "StartUnit", &error, &reply, "ss",
                             unit.c_str(), "replace");
  std::string message = error.message ? error.message : "";
  sd_bus_error_free(&error);
  sd_bus_message_unref(reply);
  if (r < 0) return Error::from_errno(-r, "start unit " + unit + (message.empty() ? "" : ": " + message));
  return 0;
}

// Standalone: run `vmlaunch-helper launch NAME` in its own session, with a close-on-exec
// report pipe: EOF means the emulator was exec'd, anything else is the launch's error. The
// broker ignores SIGCHLD, so the kernel reaps its VMs; they outlive the broker.
Result<int> start_detached(const BrokerContext& ctx, const VmName& vm) {
  int fds[2];
  VL_TRY(sys::check(::pipe2(fds, O_CLOEXEC), "pipe2"));
  UniqueFd report_read(fds[0]), report_write(fds[1]);
  std::string log_dir = ctx.config.state_dir + "/logs";
  if (::mkdir(ctx.config.state_dir.c_str(), 0700) < 0 && errno != EEXIST)
    return Error::from_errno("create " + quote_for_message(ctx.config.state_dir, kQuotePathMax));
  if (::mkdir(log_dir.c_str(), 0750) < 0 && errno != EEXIST) return Error::from_errno("create " + quote_for_message(log_dir, kQuotePathMax));
  std::string log_path = log_dir + "/" + vm.str() + ".log";
  UniqueFd log = VL_TRY(sys::check_fd(::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0640),
                                      "open " + quote_for_message(log_path, kQuotePathMax)));
  UniqueFd null_fd = VL_TRY(sys::check_fd(::open("/dev/null", O_RDONLY | O_CLOEXEC), "open /dev/null"));
  ExecSpec spec{ctx.self_exe,
                {"vmlaunch-helper", "--config", ctx.config_path, "launch", vm.str(), "--report-fd", "3"},
                {},
                {{null_fd.get(), 0}, {log.get(), 1}, {log.get(), 2}, {report_write.get(), 3}}};
  pid_t pid = VL_TRY(spawn(spec));
  report_write.reset();
  std::string report = VL_TRY(sys::read_all(report_read.get(), kMaxBrokerMessage));
  if (report.empty()) return static_cast<int>(pid);
  auto reply = parse_broker_reply(report);
  if (!reply) return Error::make(ErrorCode::kInternal, "launch of '" + vm.str() + "' failed; see " + log_path);
  return std::move(reply->error);
}

Result<int> handle_start(const BrokerContext& ctx, const BrokerRequest& req) {
  // Undefined, or a definition root will not act on (domain_file.h): say so before launching.
  VL_TRY(open_domain_definition(ctx.config, req.vm));
  log_info("start requested");
  if (sd_booted() > 0) return start_with_systemd(req.vm);
  return start_detached(ctx, req.vm);
}

Result<int> handle_kill(const BrokerContext& ctx, const BrokerRequest& req) {
  VmState state = VL_TRY(read_vm_state(ctx.config, req.vm));
  auto uid = VL_TRY(assigned_uid(ctx.config, req.vm));
  Error not_running = Error::make(ErrorCode::kNotFound, "VM '" + req.vm.str() + "' is not running");
  // The pid is only trusted together with its start time, checked once the pidfd exists: the
  // signal then reaches that process or none, never a later holder of a recycled pid.
  auto pidfd = open_process(state.pid, state.start_time);
  if (!pidfd) return pidfd.error().code == ErrorCode::kNotFound ? not_running : std::move(pidfd).error();
  if (pidfd_exited(pidfd->get())) return not_running;  // any thread still running counts
  // Only a process running as the VM's uid is the VM's: whatever a state file says, the
  // broker never signals root or anyone else.
  if (!uid || !process_runs_as(state.pid, *uid))
    return Error::make(ErrorCode::kDenied, "pid " + std::to_string(state.pid) + " does not run as the uid of VM '" +
                                               req.vm.str() + "' (not started yet?); not signalling it");
  log_info("sending signal " + std::to_string(req.signal) + " to pid " + std::to_string(state.pid));
  // PRIV: a pidfd of the VM's emulator, verified above; the signal is one of a fixed set.
  // (A raw syscall: Debian 12's <sys/pidfd.h> lacks C linkage for C++.)
  VL_TRY(sys::check(static_cast<int>(::syscall(SYS_pidfd_send_signal, pidfd->get(), req.signal, nullptr, 0)),
                    "signal the emulator of VM '" + req.vm.str() + "' (pid " + std::to_string(state.pid) + ")"));
  // After SIGKILL, answer once the process is gone, so that a cleanup sent next finds it gone.
  if (req.signal == SIGKILL && !wait_pidfd_exited(pidfd->get(), kKillWaitMs))
    log_warning("pid " + std::to_string(state.pid) + " has not exited " + std::to_string(kKillWaitMs / 1000) +
                " s after SIGKILL, ignoring");
  return 0;
}

Result<int> handle_cleanup(const BrokerContext& ctx, const BrokerRequest& req) {
  VL_CHECK(cleanup_vm(ctx.config, req.vm));
  return 0;
}

Result<int> handle_reattach(const BrokerContext& ctx, const BrokerRequest& req) {
  VL_CHECK(reattach_vm(ctx.config, req.vm));
  return 0;
}

// Read-only: gathers facts for `vmctl audit` and changes nothing (inspect.h).
Result<BrokerReply> handle_inspect(const BrokerContext& ctx, const BrokerRequest& req) {
  BrokerReply reply;
  reply.ok = true;
  reply.facts = VL_TRY(inspect_vm(ctx.config, req.vm));
  return reply;
}

// A handler whose whole answer is a pid (or 0).
template <Result<int> (*Handle)(const BrokerContext&, const BrokerRequest&)>
Result<BrokerReply> answer_pid(const BrokerContext& ctx, const BrokerRequest& req) {
  BrokerReply reply;
  reply.pid = VL_TRY(Handle(ctx, req));
  reply.ok = true;
  return reply;
}

// The closed request set: one handler per op, nothing else dispatches.
struct OpEntry {
  BrokerOp op;
  Result<BrokerReply> (*handle)(const BrokerContext&, const BrokerRequest&);
};
constexpr OpEntry kOps[] = {
    {BrokerOp::kStart, answer_pid<handle_start>},
    {BrokerOp::kKill, answer_pid<handle_kill>},
    {BrokerOp::kCleanup, answer_pid<handle_cleanup>},
    {BrokerOp::kReattach, answer_pid<handle_reattach>},
    {BrokerOp::kInspect, handle_inspect},
};

// A start whose outcome cannot be delivered (the daemon died during the launch) is undone: a
// daemon restarted meanwhile may have looked for VMs before this launch made its runtime
// directory, and nobody else would ever resume or stop its paused emulator (launch.h).
// The cleanup runs in a process of its own, like every request, so that the loop goes on.
void undo_undelivered_start(const BrokerContext& ctx, const VmName& vm, const std::vector<int>& loop_fds) {
  log_warning("the daemon did not receive the outcome of the start; undoing the launch");
  pid_t pid = ::fork();
  if (pid < 0) log_error(Error::from_errno("fork to undo the launch"));  // the daemon's next cleanup does it
  if (pid != 0) return;
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  for (int fd : loop_fds)
    if (fd >= 0) ::close(fd);
  (void)cleanup_vm(ctx.config, vm);  // logs its own failure; the daemon's next cleanup retries it
  ::_exit(0);
}

BrokerReply handle_request(const BrokerContext& ctx, const BrokerRequest& request) {
  BrokerReply reply;
  for (const OpEntry& entry : kOps) {
    if (entry.op != request.op) continue;
    auto result = entry.handle(ctx, request);
    if (result) reply = std::move(result).value();
    else reply.error = log_error(result.error());
  }
  return reply;
}

// One connection of the daemon's uid. It has at most one request in flight, handled by a
// worker process (the connection is not read meanwhile), so that a slow start, kill or cleanup
// of one VM holds neither the loop nor the other connections.
struct Connection {
  UniqueFd fd;  ///< reset when closed; the slot stays while its worker runs
  std::chrono::steady_clock::time_point last_heard;
  UniqueFd worker;  ///< the read end of the busy worker's reply pipe
  std::optional<BrokerRequest> request;  ///< what the worker handles
  std::string reply;  ///< what the worker said so far (one message of at most kMaxBrokerReply)
  bool busy() const { return worker.valid(); }
};

// The broker's whole state: bounded by kMaxConnections slots.
struct Broker {
  const BrokerContext& ctx;
  UniqueFd listener;
  UniqueFd signals;
  std::vector<Connection> connections;

  // The fds a worker must not keep: the broker's own (a worker holding a connection would keep
  // it open after the loop closed it; one holding the listener would outlive a restart).
  std::vector<int> loop_fds() const {
    std::vector<int> fds{listener.get(), signals.get()};
    for (const Connection& c : connections) fds.insert(fds.end(), {c.fd.get(), c.worker.get()});
    return fds;
  }
};

// Forks a worker that handles `request` exactly as the loop once did itself, writes its reply
// to a pipe and exits. Returns the pipe's read end. The worker dies with the broker (SIGKILL):
// a start's launch lives on regardless (it runs in a session of its own), as before.
Result<UniqueFd> fork_worker(const Broker& broker, const BrokerRequest& request) {
  int fds[2];
  VL_TRY(sys::check(::pipe2(fds, O_CLOEXEC), "pipe2"));
  UniqueFd reply_read(fds[0]), reply_write(fds[1]);
  pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) return Error::from_errno("fork a worker for a broker request");
  if (pid > 0) return reply_read;
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(1);  // the broker died before the signal was armed
  for (int fd : broker.loop_fds())
    if (fd >= 0 && fd != reply_write.get()) ::close(fd);
  log_set_vm(request.vm.str());
  std::string out = encode_broker_reply(handle_request(broker.ctx, request));
  // At most kMaxBrokerReply bytes (inspect.h bounds its facts; every other reply is under
  // kMaxBrokerMessage): the loop collects it until EOF.
  (void)sys::write_all(reply_write.get(), out);
  ::_exit(0);
}

// Reads and starts one request; false when the connection is to be closed (EOF, error, or a
// malformed request).
bool read_request(Broker& broker, Connection& conn) {
  int fd = conn.fd.get();
  char buf[kMaxBrokerMessage + 1];
  ssize_t n = sys::retry_eintr([&] { return ::recv(fd, buf, sizeof buf, MSG_TRUNC | MSG_DONTWAIT); });
  if (n < 0 && errno == EAGAIN) return true;
  if (n <= 0) return false;
  auto request = n > static_cast<ssize_t>(kMaxBrokerMessage) ? Result<BrokerRequest>(Error::invalid("request too large"))
                                                            : parse_broker_request(std::string_view(buf, n));
  if (!request) {
    log_error(request.error().wrap("malformed broker request; closing the connection"));
    BrokerReply reply;
    reply.error = request.error();
    std::string out = encode_broker_reply(reply);
    (void)::send(fd, out.data(), out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    return false;
  }
  auto worker = fork_worker(broker, *request);
  if (!worker) {
    BrokerReply reply;
    reply.error = log_error(std::move(worker).error());
    std::string out = encode_broker_reply(reply);
    return ::send(fd, out.data(), out.size(), MSG_NOSIGNAL | MSG_DONTWAIT) >= 0;
  }
  conn.worker = std::move(worker).value();
  conn.request = std::move(request).value();
  conn.reply.clear();
  return true;
}

// The worker's reply pipe is readable: collect, and at EOF relay the reply to the connection.
void collect_reply(const Broker& broker, Connection& conn) {
  char buf[kMaxBrokerMessage];
  ssize_t n = sys::retry_eintr([&] { return ::read(conn.worker.get(), buf, sizeof buf); });
  if (n > 0 && conn.reply.size() + static_cast<size_t>(n) <= kMaxBrokerReply) {
    conn.reply.append(buf, static_cast<size_t>(n));
    return;
  }
  // EOF (or a reply over the cap, which the worker never writes): the request is done.
  conn.worker.reset();
  BrokerRequest request = *std::exchange(conn.request, std::nullopt);
  log_set_vm(request.vm.str());
  auto reply = parse_broker_reply(conn.reply);
  if (!reply) {  // the worker died before it answered
    reply = BrokerReply{};
    reply->error = log_error(Error::make(ErrorCode::kInternal, "the broker's worker for this request died"));
  }
  std::string out = encode_broker_reply(*reply);
  // Never blocks: a peer that sends requests and does not read the replies fills its receive
  // queue, and a blocking send would then hold the broker (and every later request) forever.
  // The daemon reads each reply before its next request on a connection, so a full queue is
  // never the daemon.
  bool sent = conn.fd && sys::retry_eintr([&] { return ::send(conn.fd.get(), out.data(), out.size(), MSG_NOSIGNAL | MSG_DONTWAIT); }) >= 0;
  if (!sent && conn.fd && errno == EAGAIN) log_warning("the peer does not read its replies; closing its connection");
  if (!sent) conn.fd.reset();
  if (reply->ok && request.op == BrokerOp::kStart) {
    if (sent) confirm_launch(broker.ctx.config, request.vm);  // launch.h
    else if (reply->pid > 0) undo_undelivered_start(broker.ctx, request.vm, broker.loop_fds());  // not a unit's: systemd has those
  }
  conn.last_heard = std::chrono::steady_clock::now();
  log_set_vm("");
}

// RUNTIME is root:daemon-group 01775: the daemon may create its control socket there, and the
// sticky bit keeps it from removing or renaming what root put there (vms/, helper.sock). vms/
// is created and checked before RUNTIME opens to the daemon's group, which could otherwise
// create vms/ first; if RUNTIME was opened earlier (by packaging, or a previous run) and vms/
// is not root's alone, the broker refuses to run (runtime_dir.h).
Result<void> prepare_runtime_dir(const HostConfig& config, gid_t daemon_gid) {
  RuntimeDirs dirs = VL_TRY(open_runtime_dirs(config, true));
  const std::string& dir = config.runtime_dir;
  // PRIV: RUNTIME was just checked to be root's directory; the group is the daemon's.
  VL_TRY(sys::check(::fchown(dirs.runtime.get(), 0, daemon_gid), "chown " + quote_for_message(dir, kQuotePathMax)));
  VL_TRY(sys::check(::fchmod(dirs.runtime.get(), 01775), "chmod " + quote_for_message(dir, kQuotePathMax)));
  return {};
}

Result<UniqueFd> listen_broker_socket(const HostConfig& config, gid_t daemon_gid) {
  VL_CHECK(prepare_runtime_dir(config, daemon_gid));
  std::string path = config.helper_socket();
  sockaddr_un sa{};
  if (path.size() >= sizeof sa.sun_path) return Error::invalid("socket path " + quote_for_message(path, kQuotePathMax) + " too long");
  sa.sun_family = AF_UNIX;
  path.copy(sa.sun_path, sizeof sa.sun_path - 1);
  UniqueFd fd = VL_TRY(sys::check_fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0), "socket"));
  ::unlink(path.c_str());
  VL_TRY(sys::check(::bind(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa), "bind " + quote_for_message(path, kQuotePathMax)));
  VL_TRY(sys::check(::chown(path.c_str(), 0, daemon_gid), "chown " + quote_for_message(path, kQuotePathMax)));
  VL_TRY(sys::check(::chmod(path.c_str(), 0660), "chmod " + quote_for_message(path, kQuotePathMax)));
  VL_TRY(sys::check(::listen(fd.get(), 8), "listen " + quote_for_message(path, kQuotePathMax)));
  return fd;
}

}  // namespace

Result<void> serve_broker(const HostConfig& config, const std::string& config_path) {
  const passwd* daemon_user = ::getpwnam(config.daemon_user.c_str());
  if (!daemon_user) return Error::make(ErrorCode::kNotFound, "daemon user " + quote_for_message(config.daemon_user) + " does not exist");
  uid_t daemon_uid = daemon_user->pw_uid;
  const group* daemon_group = ::getgrnam(config.daemon_group.c_str());
  if (!daemon_group) return Error::make(ErrorCode::kNotFound, "daemon group " + quote_for_message(config.daemon_group) + " does not exist");
  char exe[PATH_MAX];
  ssize_t len = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (len < 0) return Error::from_errno("readlink /proc/self/exe");
  BrokerContext ctx{config, config_path, std::string(exe, static_cast<size_t>(len))};

  Broker broker{ctx, VL_TRY(listen_broker_socket(config, daemon_group->gr_gid)), {}, {}};
  ::signal(SIGCHLD, SIG_IGN);
  // Emulators are children of the start's worker, which exits once the launch has answered:
  // as this process's orphans they are still reaped by the kernel (SIGCHLD ignored) rather
  // than left to an init that may not reap.
  (void)::prctl(PR_SET_CHILD_SUBREAPER, 1);
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  sigprocmask(SIG_BLOCK, &stop, nullptr);
  broker.signals.reset(::signalfd(-1, &stop, SFD_CLOEXEC));
  log_info("broker listening on " + config.helper_socket() + " for uid " + std::to_string(daemon_uid));
  // vmlaunchd.service is ordered after the broker: under Type=notify it starts once this
  // socket accepts connections, not merely once the process exists.
  (void)sd_notify(0, "READY=1");
  // One poll over the signals, the listener, each idle connection and each busy connection's
  // worker. Nothing a peer does holds the loop: requests are handled by workers, a busy
  // connection is not read until its reply is out, a connection silent for kIdleMs is closed,
  // and beyond kMaxConnections a new connection replaces the one silent longest (the daemon
  // reconnects on its next request, and resends a request the broker never read:
  // daemon/broker_client.h) or, if every one is busy, is refused. SIGTERM stops reading and
  // accepting; the requests in flight are answered first.
  bool stopping = false;
  auto& conns = broker.connections;
  for (;;) {
    using Clock = std::chrono::steady_clock;
    auto now = Clock::now();
    conns.erase(std::remove_if(conns.begin(), conns.end(), [&](const Connection& c) { return !c.fd && !c.busy(); }), conns.end());
    if (stopping && conns.empty()) break;
    // Once stopping, neither the signals (the signalfd stays readable) nor new connections.
    std::vector<pollfd> p{{stopping ? -1 : broker.signals.get(), POLLIN, 0}, {stopping ? -1 : broker.listener.get(), POLLIN, 0}};
    int timeout = -1;
    for (const Connection& c : conns) {
      p.push_back({c.busy() ? c.worker.get() : c.fd.get(), POLLIN, 0});
      if (c.busy()) continue;
      auto idle = std::chrono::duration_cast<std::chrono::milliseconds>(now - c.last_heard).count();
      int left = static_cast<int>(std::max<int64_t>(0, kIdleMs - idle));
      timeout = timeout < 0 ? left : std::min(timeout, left);
    }
    int ready = sys::retry_eintr([&] { return ::poll(p.data(), p.size(), timeout); });
    if (ready < 0) return Error::from_errno("poll");
    if (p[0].revents && !stopping) {
      stopping = true;
      for (Connection& c : conns)
        if (!c.busy()) c.fd.reset();
      continue;
    }
    now = Clock::now();
    for (size_t i = 0; i < conns.size(); ++i) {
      Connection& c = conns[i];
      if (p[i + 2].revents) {
        if (c.busy()) {
          collect_reply(broker, c);
          if (stopping && !c.busy()) c.fd.reset();  // answered: the last word on it
        }
        else if (!read_request(broker, c)) c.fd.reset();
        else c.last_heard = now;
      } else if (!c.busy() && now - c.last_heard >= std::chrono::milliseconds(kIdleMs)) {
        log_info("closing a connection silent for " + std::to_string(kIdleMs / 1000) + " s");
        c.fd.reset();
      }
    }
    if (!p[1].revents) continue;
    UniqueFd fresh(::accept4(broker.listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!fresh) continue;
    ucred cred{};
    socklen_t cred_len = sizeof cred;
    if (::getsockopt(fresh.get(), SOL_SOCKET, SO_PEERCRED, &cred, &cred_len) < 0 || cred.uid != daemon_uid) {
      log_warning("refused a connection from uid " + std::to_string(cred.uid) + " (only the daemon's uid may connect)");
      continue;
    }
    size_t open = std::count_if(conns.begin(), conns.end(), [](const Connection& c) { return c.fd || c.busy(); });
    if (open >= kMaxConnections) {
      Connection* oldest = nullptr;
      for (Connection& c : conns)
        if (!c.busy() && c.fd && (!oldest || c.last_heard < oldest->last_heard)) oldest = &c;
      if (!oldest) {
        log_warning("refused a connection: " + std::to_string(kMaxConnections) + " requests are in flight");
        continue;
      }
      log_info("a new connection replaces the one silent longest");
      oldest->fd = std::move(fresh);
      oldest->last_heard = now;
      continue;
    }
    conns.push_back(Connection{std::move(fresh), now, {}, std::nullopt, {}});
  }
  ::unlink(config.helper_socket().c_str());
  log_info("broker stopped");
  return {};
}

}  // namespace vl::helper
