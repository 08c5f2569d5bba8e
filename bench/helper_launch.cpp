// Benchmark: vmlaunch-helper launch overhead, from the helper's execve to the emulator's
// execve, as the kernel timestamps them (process-events connector). Each iteration launches
// a real VM under TCG in a private network namespace, then kills it and runs cleanup.
//
// Usage (root): helper_launch HELPER GUEST_IMG [ITERATIONS]
#include <linux/cn_proc.h>
#include <linux/connector.h>
#include <linux/netlink.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "common/domain.h"
#include "common/plan.h"
#include "common/spawn.h"
#include "common/sys.h"
#include "daemon/planner.h"
#include "tests/support/netns.h"
#include "tests/support/temp_dir.h"

namespace {

vl::UniqueFd open_proc_connector() {
  vl::UniqueFd s(::socket(PF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_CONNECTOR));
  sockaddr_nl sa{};
  sa.nl_family = AF_NETLINK;
  sa.nl_groups = CN_IDX_PROC;
  sa.nl_pid = static_cast<uint32_t>(::getpid());
  if (!s || ::bind(s.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) < 0) return {};
  // nlmsghdr, then cn_msg (whose data is a flexible array), then the operation.
  alignas(nlmsghdr) char req[NLMSG_SPACE(sizeof(cn_msg) + sizeof(proc_cn_mcast_op))] = {};
  auto* hdr = reinterpret_cast<nlmsghdr*>(req);
  hdr->nlmsg_len = NLMSG_LENGTH(sizeof(cn_msg) + sizeof(proc_cn_mcast_op));
  hdr->nlmsg_type = NLMSG_DONE;
  hdr->nlmsg_pid = static_cast<uint32_t>(::getpid());
  auto* msg = static_cast<cn_msg*>(NLMSG_DATA(hdr));
  msg->id = {CN_IDX_PROC, CN_VAL_PROC};
  msg->len = sizeof(proc_cn_mcast_op);
  proc_cn_mcast_op op = PROC_CN_MCAST_LISTEN;
  std::memcpy(msg->data, &op, sizeof op);
  if (::send(s.get(), req, hdr->nlmsg_len, 0) < 0) return {};
  return s;
}

// Waits for the next exec event of `pid`; returns its kernel timestamp in ns (0 on timeout).
uint64_t wait_exec(int sock, pid_t pid) {
  for (;;) {
    pollfd p{sock, POLLIN, 0};
    if (::poll(&p, 1, 10000) != 1) return 0;
    alignas(nlmsghdr) char buf[4096];
    ssize_t n = ::recv(sock, buf, sizeof buf, 0);
    for (auto* h = reinterpret_cast<nlmsghdr*>(buf); NLMSG_OK(h, n); h = NLMSG_NEXT(h, n)) {
      auto* msg = static_cast<cn_msg*>(NLMSG_DATA(h));
      auto* ev = reinterpret_cast<proc_event*>(msg->data);
      if (ev->what == proc_event::PROC_EVENT_EXEC && ev->event_data.exec.process_pid == pid) return ev->timestamp_ns;
    }
  }
}

int run(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: helper_launch HELPER GUEST_IMG [ITERATIONS]\n");
    return 2;
  }
  std::string helper = argv[1], guest = argv[2];
  int iterations = argc > 3 ? std::atoi(argv[3]) : 30;
  vl::UniqueFd events = open_proc_connector();  // before unshare: the connector lives in the initial netns
  if (!events) {
    std::fprintf(stderr, "cannot subscribe to process events (root needed)\n");
    return 1;
  }
  vl::test::ScopedNetns ns;
  if (std::system("ip link add br-bench type bridge && ip link set br-bench up") != 0) return 1;
  vl::test::TempDir tmp;
  std::string root = tmp.path();
  ::chmod(root.c_str(), 0755);
  for (const char* d : {"domains", "images"}) std::filesystem::create_directory(root + "/" + d);
  std::ofstream(root + "/vmlaunch.toml") << "[paths]\ndomains = \"" << root << "/domains\"\nruntime = \"" << root
                                          << "/run\"\nstate = \"" << root << "/state\"\ncache = \"" << root
                                          << "/cache\"\nudev_rules = \"" << root << "/udev\"\nuserdb = \"" << root << "/userdb\"\n[users]\ndaemon_group = \"root\"\n"
                                          << "[storage]\nroots = [\"" << root << "/images\"]\n[zones.bench]\nbridge = \"br-bench\"\n";
  std::filesystem::copy_file(guest, root + "/images/bench.img");
  std::string xml = "<domain type='qemu'><name>bench</name><memory unit='MiB'>32</memory>"
                    "<os><type arch='x86_64' machine='pc'>hvm</type></os><features><acpi/></features><devices>"
                    "<emulator>/usr/bin/qemu-system-x86_64</emulator><disk type='file' device='disk'>"
                    "<driver name='qemu' type='raw'/><source file='" + root + "/images/bench.img'/>"
                    "<target dev='hda' bus='ide'/></disk><interface type='bridge'><mac address='52:54:00:be:00:01'/>"
                    "<source bridge='br-bench'/><model type='e1000'/></interface></devices></domain>";
  std::ofstream(root + "/domains/bench.xml") << xml;
  ::chmod((root + "/domains/bench.xml").c_str(), 0640);  // root:root (the daemon group here), as domain_file.h asks
  auto config = vl::load_config(root + "/vmlaunch.toml");
  auto domain = vl::parse_domain(xml, "bench.xml");
  if (!config || !domain) return 1;
  vl::Planner planner(*config);
  auto plan = planner.plan(*domain, xml);
  if (!plan) {
    std::fprintf(stderr, "%s\n", plan.error().message().c_str());
    return 1;
  }
  std::ofstream(root + "/plan.json") << vl::plan_to_json(*plan, false);

  std::vector<double> ms;
  vl::UniqueFd null_fd(::open("/dev/null", O_WRONLY | O_CLOEXEC));
  for (int i = 0; i < iterations; ++i) {
    auto pid = vl::spawn({helper, {"vmlaunch-helper", "--config", root + "/vmlaunch.toml", "launch", "bench", "--plan",
                                   root + "/plan.json"}, {}, {{null_fd.get(), 1}, {null_fd.get(), 2}}});
    if (!pid) return 1;
    uint64_t start = wait_exec(events.get(), *pid);   // the helper's own execve
    uint64_t end = wait_exec(events.get(), *pid);     // the emulator's
    ::kill(*pid, SIGKILL);
    (void)vl::wait_for(*pid);
    auto cleanup = vl::spawn({helper, {"vmlaunch-helper", "--config", root + "/vmlaunch.toml", "cleanup", "bench"}, {}, {}});
    if (!cleanup) return 1;
    (void)vl::wait_for(*cleanup);
    if (start == 0 || end == 0) {
      std::fprintf(stderr, "iteration %d: the helper did not exec the emulator\n", i);
      return 1;
    }
    ms.push_back(static_cast<double>(end - start) / 1e6);
  }
  std::sort(ms.begin(), ms.end());
  std::printf("helper launch overhead (helper execve -> emulator execve), %d launches:\n", iterations);
  std::printf("  min %.2f ms   median %.2f ms   p90 %.2f ms   max %.2f ms\n", ms.front(), ms[ms.size() / 2],
              ms[ms.size() * 9 / 10], ms.back());
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return run(argc, argv); }
