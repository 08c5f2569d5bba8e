#include "daemon/converter.h"

#include <fcntl.h>
#include <libxml/tree.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <climits>
#include <map>
#include <cstdlib>
#include <memory>
#include <optional>
#include <vector>

#include "common/spawn.h"
#include "common/vm_name.h"
#include "daemon/asio.h"
#include "daemon/domain_document.h"
#include "common/sys.h"
#include "vmlaunch_build_config.h"

namespace vl {

namespace {

constexpr size_t kMaxNativeBytes = 1 << 20;
constexpr size_t kMaxXmlBytes = 1 << 20;

// What only vmlaunch reads, where the domain parser reads it: the <ip> elements of
// <devices><interface>, and the <encryption> of <devices><disk> (libvirt would look its secret
// up in a store the embedded driver does not have; the rewrite puts the LUKS layer and its
// secret back, daemon/qemu_argv.h).
std::vector<xmlNode*> vmlaunch_only_elements(xmlNode* domain) {
  std::vector<xmlNode*> found;
  for (xmlNode* devices = domain->children; devices; devices = devices->next) {
    if (!is_domain_element(devices, "devices")) continue;
    for (xmlNode* dev = devices->children; dev; dev = dev->next) {
      const char* child = is_domain_element(dev, "interface") ? "ip" : is_domain_element(dev, "disk") ? "encryption" : nullptr;
      if (!child) continue;
      for (xmlNode* c = dev->children; c; c = c->next)
        if (is_domain_element(c, child)) found.push_back(c);
    }
  }
  return found;
}

// <interface type='network'><source network='ZONE'/> -> type='bridge', <source bridge='BR'/>:
// libvirt's embedded driver has no networks, and vmlaunch's networks are its zones. Returns
// whether anything changed.
Result<bool> networks_to_bridges(xmlNode* domain, const std::map<std::string, std::string>& zone_bridges) {
  bool changed = false;
  const auto* type_attr = reinterpret_cast<const xmlChar*>("type");
  for (xmlNode* devices = domain->children; devices; devices = devices->next) {
    if (!is_domain_element(devices, "devices")) continue;
    for (xmlNode* nic = devices->children; nic; nic = nic->next) {
      if (!is_domain_element(nic, "interface")) continue;
      xmlChar* type = xmlGetNoNsProp(nic, type_attr);
      bool network = type && xmlStrEqual(type, reinterpret_cast<const xmlChar*>("network"));
      xmlFree(type);
      if (!network) continue;
      for (xmlNode* c = nic->children; c; c = c->next) {
        if (!is_domain_element(c, "source")) continue;
        xmlChar* name = xmlGetNoNsProp(c, reinterpret_cast<const xmlChar*>("network"));
        std::string zone = name ? reinterpret_cast<const char*>(name) : "";
        xmlFree(name);
        auto bridge = zone_bridges.find(zone);
        if (bridge == zone_bridges.end())
          return Error::make(ErrorCode::kNotFound, "<source network=" + quote_for_message(zone) + "> is not a zone");
        xmlUnsetProp(c, reinterpret_cast<const xmlChar*>("network"));
        xmlSetProp(c, reinterpret_cast<const xmlChar*>("bridge"), reinterpret_cast<const xmlChar*>(bridge->second.c_str()));
      }
      xmlSetProp(nic, type_attr, reinterpret_cast<const xmlChar*>("bridge"));
      changed = true;
    }
  }
  return changed;
}

struct RunningConverter {
  pid_t pid;
  UniqueFd out;  // its stdout
};

// Starts the converter with `input` as stdin. stdin is a memfd holding the whole input: no
// pipe to keep fed, no SIGPIPE if the converter dies.
Result<RunningConverter> start_converter(std::vector<std::string> args, std::string_view input) {
  UniqueFd in = VL_TRY(sys::check_fd(::memfd_create("vmlaunch-convert-input", MFD_CLOEXEC), "memfd_create"));
  VL_CHECK(sys::write_all(in.get(), input));
  VL_TRY(sys::check(static_cast<int>(::lseek(in.get(), 0, SEEK_SET)), "lseek"));
  int fds[2];
  VL_TRY(sys::check(::pipe2(fds, O_CLOEXEC), "pipe2"));
  UniqueFd out_read(fds[0]), out_write(fds[1]);
  args.insert(args.begin(), "vmlaunch-convert");
  // A converter that outlived a killed daemon would hold its conversion root's lock and make
  // the next daemon's plans fail until libvirt is done.
  pid_t pid = VL_TRY(spawn({converter_path(), args, {}, {{in.get(), 0}, {out_write.get(), 1}}, SIGKILL}));
  return RunningConverter{pid, std::move(out_read)};
}

// The converter's answer: 'K' + command line, or 'E' + libvirt's reason.
Result<std::string> parse_reply(const std::string& reply, int wait_status) {
  if (reply.empty())
    return Error::make(ErrorCode::kInternal, "vmlaunch-convert died without a reply (wait status " +
                                                 std::to_string(wait_status) + ")");
  if (reply[0] == 'K') return reply.substr(1);
  if (reply[0] == 'E') return Error::unsupported("libvirt cannot convert this domain: " + reply.substr(1));
  return Error::make(ErrorCode::kInternal, "malformed converter reply");
}

// Runs the converter with `input` as stdin; returns its stdout, killing it at the deadline.
Result<std::string> run_converter(std::vector<std::string> args, std::string_view input,
                                  std::chrono::milliseconds timeout) {
  RunningConverter conv = VL_TRY(start_converter(std::move(args), input));
  pid_t pid = conv.pid;
  UniqueFd out_read = std::move(conv.out);
  std::string path = converter_path();

  std::string reply;
  Result<void> status;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    pollfd p{out_read.get(), POLLIN, 0};
    if (left.count() <= 0 || sys::retry_eintr([&] { return ::poll(&p, 1, static_cast<int>(left.count())); }) == 0) {
      ::kill(pid, SIGKILL);
      status = Error::make(ErrorCode::kSystem, "libvirt conversion timed out after " + std::to_string(timeout.count()) + " ms");
      break;
    }
    char buf[65536];
    ssize_t got = sys::retry_eintr([&] { return ::read(out_read.get(), buf, sizeof buf); });
    if (got <= 0) {
      if (got < 0) status = Error::from_errno("read converter reply");
      break;
    }
    reply.append(buf, static_cast<size_t>(got));
    if (reply.size() > kMaxNativeBytes) {
      ::kill(pid, SIGKILL);
      status = Error::invalid("converter reply larger than 1 MiB");
      break;
    }
  }
  auto waited = wait_for(pid);
  VL_CHECK(status);
  if (!waited) return std::move(waited).error();
  if (reply.empty())
    return Error::make(ErrorCode::kInternal, quote_for_message(path, kQuotePathMax) + " died without a reply (wait status " + std::to_string(*waited) + ")");
  return reply;
}

}  // namespace

Result<std::string> xml_for_libvirt(std::string_view xml, const std::map<std::string, std::string>& zone_bridges) {
  if (xml.size() > kMaxXmlBytes) return Error::invalid("domain XML larger than 1 MiB");
  XmlDocument doc = VL_TRY(read_domain_document(xml));
  xmlNode* root = xmlDocGetRootElement(doc.get());
  std::vector<xmlNode*> ours = vmlaunch_only_elements(root);
  bool bridged = VL_TRY(networks_to_bridges(root, zone_bridges));
  if (ours.empty() && !bridged) return std::string(xml);
  for (xmlNode* n : ours) {
    xmlUnlinkNode(n);
    xmlFreeNode(n);
  }
  return write_domain_document(doc.get());
}

std::string converter_path() {
  // The daemon is unprivileged and so is the converter: choosing another one gains nothing.
  if (const char* env = std::getenv("VMLAUNCH_CONVERTER"); env && env[0] == '/') return env;
  char self[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
  if (n > 0) {
    std::string dir(self, static_cast<size_t>(n));
    dir = dir.substr(0, dir.rfind('/'));
    std::string beside = dir + "/vmlaunch-convert";
    if (::access(beside.c_str(), X_OK) == 0) return beside;
  }
  return VMLAUNCH_CONVERTER;
}

Result<std::string> convert_to_native(const std::string& xml, const std::string& embed_root,
                                      std::chrono::milliseconds timeout,
                                      const std::map<std::string, std::string>& zone_bridges) {
  if (::mkdir(embed_root.c_str(), 0700) < 0 && errno != EEXIST)
    return Error::from_errno("create conversion root " + quote_for_message(embed_root, kQuotePathMax));
  std::string input = VL_TRY(xml_for_libvirt(xml, zone_bridges));
  std::string reply = VL_TRY(run_converter({embed_root}, input, timeout));
  return parse_reply(reply, 0);
}

namespace {

// One conversion in flight: reads the converter's stdout on the event loop.
class AsyncConversion final : public std::enable_shared_from_this<AsyncConversion> {
 public:
  AsyncConversion(boost::asio::io_context& io, RunningConverter conv, std::function<void(Result<std::string>)> done)
      : pid_(conv.pid), out_(io, conv.out.release()), timer_(io), done_(std::move(done)) {}

  void start(std::chrono::milliseconds timeout) {
    timer_.expires_after(timeout);
    timer_.async_wait([self = shared_from_this(), timeout](boost::system::error_code ec) {
      if (ec) return;
      ::kill(self->pid_, SIGKILL);
      self->error_ = Error::make(ErrorCode::kSystem, "libvirt conversion timed out after " +
                                                         std::to_string(timeout.count()) + " ms");
    });
    read_more();
  }

 private:
  void read_more() {
    out_.async_read_some(boost::asio::buffer(buf_), [self = shared_from_this()](boost::system::error_code ec, size_t n) {
      self->reply_.append(self->buf_, n);
      if (!ec && self->reply_.size() <= kMaxNativeBytes) return self->read_more();
      if (self->reply_.size() > kMaxNativeBytes) {
        ::kill(self->pid_, SIGKILL);
        self->error_ = Error::invalid("converter reply larger than 1 MiB");
      }
      self->finish();
    });
  }

  void finish() {
    timer_.cancel();
    out_.close();
    // stdout is closed: the converter has exited or is about to, so this wait is short.
    auto status = wait_for(pid_);
    auto done = std::move(done_);
    if (error_) done(*error_);
    else done(parse_reply(reply_, status ? *status : -1));
  }

  pid_t pid_;
  boost::asio::posix::stream_descriptor out_;
  boost::asio::steady_timer timer_;
  std::function<void(Result<std::string>)> done_;
  std::string reply_;
  std::optional<Error> error_;
  char buf_[65536];
};

}  // namespace

void convert_to_native_async(boost::asio::io_context& io, const std::string& xml, const std::string& embed_root,
                             std::chrono::milliseconds timeout, std::function<void(Result<std::string>)> done,
                             const std::map<std::string, std::string>& zone_bridges, ConvertPriority priority) {
  if (::mkdir(embed_root.c_str(), 0700) < 0 && errno != EEXIST)
    return done(Error::from_errno("create conversion root " + quote_for_message(embed_root, kQuotePathMax)));
  auto input = xml_for_libvirt(xml, zone_bridges);
  if (!input) return done(std::move(input).error());
  std::vector<std::string> args = {embed_root};
  if (priority == ConvertPriority::kBackground) args.insert(args.begin(), "--background");
  auto conv = start_converter(std::move(args), *input);
  if (!conv) return done(std::move(conv).error());
  std::make_shared<AsyncConversion>(io, std::move(conv).value(), std::move(done))->start(timeout);
}

Result<std::string> libvirt_identity() {
  std::string out = VL_TRY(run_converter({"--identity"}, "", std::chrono::seconds(30)));
  while (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

}  // namespace vl
