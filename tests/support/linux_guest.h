// Running the attack suite's Linux guest (tests/guest/build-linux-guest) through the real
// launch path, and watching the wire around it: a named peer network namespace, packet
// captures on taps and veths, and the guest's serial console.
#pragma once

#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "tests/support/helper_env.h"

namespace vl::test {

/// The guest's kernel and initramfs, copied where the argv policy accepts boot files: a
/// directory only root can change, below /run (the temporary directory is writable by all).
/// Readable by everyone: QEMU opens them as the VM's uid.
class LinuxGuestFiles final {
 public:
  LinuxGuestFiles() : dir_("/run") {
    ::chmod(dir_.path().c_str(), 0755);
    kernel_ = dir_.path() + "/vmlinuz";
    initrd_ = dir_.path() + "/initramfs";
    for (auto [from, to] : {std::pair{"VMLAUNCH_LINUX_KERNEL", kernel_}, std::pair{"VMLAUNCH_LINUX_INITRD", initrd_}}) {
      std::filesystem::copy_file(build_path(from), to);
      ::chmod(to.c_str(), 0644);
    }
  }
  LinuxGuestFiles(const LinuxGuestFiles&) = delete;
  LinuxGuestFiles& operator=(const LinuxGuestFiles&) = delete;
  const std::string& kernel() const { return kernel_; }
  const std::string& initrd() const { return initrd_; }

 private:
  TempDir dir_;
  std::string kernel_, initrd_;
};

/// A named network namespace (so that `ip -n` and `ip netns exec` reach it), deleted again by
/// the destructor with everything in it.
class PeerNetns final {
 public:
  PeerNetns() : name_("vmlaunch-peer-" + std::to_string(::getpid())) { run_ok("ip netns add " + name_); }
  ~PeerNetns() { (void)std::system(("ip netns delete " + name_ + " 2>/dev/null").c_str()); }
  PeerNetns(const PeerNetns&) = delete;
  PeerNetns& operator=(const PeerNetns&) = delete;
  const std::string& name() const { return name_; }

  /// Runs `fn` with the calling thread inside the namespace.
  template <typename Fn>
  auto inside(Fn fn) {
    UniqueFd here(::open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC));
    UniqueFd there(::open(("/run/netns/" + name_).c_str(), O_RDONLY | O_CLOEXEC));
    REQUIRE(::setns(there.get(), CLONE_NEWNET) == 0);
    auto result = fn();
    REQUIRE(::setns(here.get(), CLONE_NEWNET) == 0);
    return result;
  }

 private:
  std::string name_;
};

/// One frame seen by a capture, and whether the interface sent it (PACKET_OUTGOING: on a tap,
/// a frame on its way into the VM) or received it (on a tap: a frame the VM sent).
struct Frame {
  std::vector<uint8_t> bytes;
  bool outgoing = false;
};

/// Every frame through one interface, from creation until read. The socket buffer is large and
/// the kernel's drop count is checked, so "not seen" means "not there".
class FrameCapture final {
 public:
  explicit FrameCapture(const std::string& ifname) : name_(ifname) {
    fd_.reset(::socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, htons(ETH_P_ALL)));
    REQUIRE(fd_.valid());
    int size = 64 << 20;
    REQUIRE(::setsockopt(fd_.get(), SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size) == 0);
    sockaddr_ll sll{};
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(ETH_P_ALL);
    sll.sll_ifindex = static_cast<int>(::if_nametoindex(ifname.c_str()));
    REQUIRE_MESSAGE(sll.sll_ifindex != 0, ifname);
    REQUIRE(::bind(fd_.get(), reinterpret_cast<sockaddr*>(&sll), sizeof sll) == 0);
    int on = 1;
    REQUIRE(::setsockopt(fd_.get(), SOL_PACKET, PACKET_AUXDATA, &on, sizeof on) == 0);
  }
  FrameCapture(const FrameCapture&) = delete;
  FrameCapture& operator=(const FrameCapture&) = delete;

  int fd() const { return fd_.get(); }
  const std::string& name() const { return name_; }

  /// Reads whatever is queued.
  void drain() {
    for (;;) {
      uint8_t buf[65536];
      sockaddr_ll from{};
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(tpacket_auxdata))];
      iovec iov{buf, sizeof buf};
      msghdr msg{};
      msg.msg_name = &from;
      msg.msg_namelen = sizeof from;
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control;
      msg.msg_controllen = sizeof control;
      ssize_t n = ::recvmsg(fd_.get(), &msg, 0);
      if (n < 0) return;
      std::vector<uint8_t> frame(buf, buf + n);
      // The kernel moves an 802.1Q tag out of the frame before packet sockets see it (and
      // reports it here): put it back, so the frame is the one on the wire.
      for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_PACKET || c->cmsg_type != PACKET_AUXDATA) continue;
        tpacket_auxdata aux{};
        std::memcpy(&aux, CMSG_DATA(c), sizeof aux);
        if (!(aux.tp_status & TP_STATUS_VLAN_VALID) || frame.size() < 12) continue;
        uint16_t tpid = (aux.tp_status & TP_STATUS_VLAN_TPID_VALID) ? aux.tp_vlan_tpid : ETH_P_8021Q;
        const uint8_t tag[4] = {uint8_t(tpid >> 8), uint8_t(tpid & 0xff), uint8_t(aux.tp_vlan_tci >> 8),
                                uint8_t(aux.tp_vlan_tci & 0xff)};
        frame.insert(frame.begin() + 12, tag, tag + 4);
      }
      frames_.push_back({std::move(frame), from.sll_pkttype == PACKET_OUTGOING});
    }
  }

  /// Frames the kernel could not queue for this socket since the last call (must be 0).
  unsigned dropped() {
    tpacket_stats stats{};
    socklen_t len = sizeof stats;
    REQUIRE(::getsockopt(fd_.get(), SOL_PACKET, PACKET_STATISTICS, &stats, &len) == 0);
    return stats.tp_drops;
  }

  const std::vector<Frame>& frames() const { return frames_; }

 private:
  std::string name_;
  UniqueFd fd_;
  std::vector<Frame> frames_;
};

/// A domain that boots the Linux guest with `scenario` (tests/guest/init.sh), its console on the
/// first serial port, one virtio NIC on the default zone bridge.
inline DomainSpec linux_guest_domain(const LinuxGuestFiles& files, const std::string& name, const std::string& mac,
                                     const std::string& scenario) {
  DomainSpec spec{.name = name, .mac = mac};
  spec.memory_mib = 256;
  spec.nic_model = "virtio";
  spec.kernel = files.kernel();
  spec.initrd = files.initrd();
  spec.cmdline = "console=ttyS0 quiet panic=-1 vlg.scenario=" + scenario + " vlg.ip=10.0.0.2";
  return spec;
}

/// Connects to a VM's serial console socket (RUNTIME/vms/NAME/console.sock) as root may,
/// non-blocking.
inline UniqueFd connect_console(const std::string& path) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  REQUIRE(fd.valid());
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  REQUIRE(path.size() < sizeof sa.sun_path);
  path.copy(sa.sun_path, sizeof sa.sun_path - 1);
  REQUIRE_MESSAGE(::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0, path << ": " << std::strerror(errno));
  return fd;
}

/// A guest launched by the real helper, paused in `prelaunch` until run(): its serial console
/// is open before the first instruction, so no output is lost.
class LinuxGuest final {
 public:
  LinuxGuest(HelperEnv& env, const std::string& name) : name_(name) {
    auto launched = env.launch(name);
    REQUIRE_MESSAGE(launched.running(), launched.log);
    pid_ = launched.pid;
    auto qmp = QmpConnection::connect(env.root() + "/run/vms/" + name + "/qmp.sock");
    REQUIRE_MESSAGE(qmp.ok(), (qmp.ok() ? "" : qmp.error().message()));
    qmp_.emplace(std::move(*qmp));
    REQUIRE(qmp_->execute("qmp_capabilities").ok());
    serial_ = connect_console(env.root() + "/run/vms/" + name + "/console.sock");
  }
  LinuxGuest(const LinuxGuest&) = delete;
  LinuxGuest& operator=(const LinuxGuest&) = delete;

  pid_t pid() const { return pid_; }
  const std::string& name() const { return name_; }
  int serial_fd() const { return serial_.get(); }
  const std::string& console() const { return console_; }

  void run() { REQUIRE(qmp_->execute("cont").ok()); }

  /// Reads whatever the guest has printed.
  void read_console() {
    char buf[4096];
    ssize_t n;
    while ((n = ::read(serial_.get(), buf, sizeof buf)) > 0) console_.append(buf, static_cast<size_t>(n));
  }

  /// True once the console shows `marker` on a line of its own.
  bool printed(const std::string& marker) const {
    return console_.find(marker + "\r\n") != std::string::npos || console_.find(marker + "\n") != std::string::npos;
  }

 private:
  std::string name_;
  pid_t pid_ = 0;
  std::optional<QmpConnection> qmp_;
  UniqueFd serial_;
  std::string console_;
};

/// Polls the guests' consoles and the captures until `done()` or the deadline; returns whether
/// `done()` became true.
template <typename Done>
bool watch(std::vector<LinuxGuest*> guests, std::vector<FrameCapture*> captures, std::chrono::seconds limit, Done done) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    std::vector<pollfd> fds;
    for (auto* g : guests) fds.push_back({g->serial_fd(), POLLIN, 0});
    for (auto* c : captures) fds.push_back({c->fd(), POLLIN, 0});
    (void)::poll(fds.data(), fds.size(), 200);
    for (auto* g : guests) g->read_console();
    for (auto* c : captures) c->drain();
    if (done()) return true;
  }
  return false;
}

}  // namespace vl::test
