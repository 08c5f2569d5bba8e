#include "daemon/qmp_client.h"

#include <cerrno>
#include <utility>

#include "common/vm_name.h"

namespace vl {

namespace asio = boost::asio;

std::string QmpClient::string_field(const Json& message, const char* key) {
  if (!message.is_object()) return {};
  auto it = message.find(key);
  return it != message.end() && it->is_string() ? it->get<std::string>() : std::string();
}

bool QmpClient::bool_field(const Json& message, const char* key) {
  if (!message.is_object()) return false;
  auto it = message.find(key);
  return it != message.end() && it->is_boolean() && it->get<bool>();
}

namespace {

std::string describe(std::chrono::milliseconds t) {
  if (t.count() % 1000 == 0) return std::to_string(t.count() / 1000) + " s";
  return std::to_string(t.count()) + " ms";
}

}  // namespace

void QmpClient::connect(const std::string& path, std::function<void(Result<void>)> ready) {
  greeting_ = [self = shared_from_this(), ready = std::move(ready)](Result<void> r) {
    if (!r) return ready(r);
    self->execute("qmp_capabilities", nullptr, [ready](Result<Json> caps) {
      if (!caps) return ready(caps.error());
      ready({});
    });
  };
  // One deadline from connect to the greeting: an emulator that accepts and says nothing
  // would otherwise hold the VM in `starting` forever.
  greeting_deadline_ = std::make_shared<asio::steady_timer>(socket_.get_executor(), timeout_);
  greeting_deadline_->async_wait([self = shared_from_this(), path, timeout = timeout_](boost::system::error_code ec) {
    if (ec || !self->greeting_) return;
    auto g = std::move(self->greeting_);
    self->greeting_ = nullptr;
    g(Error::make(ErrorCode::kSystem, "monitor " + quote_for_message(path, kQuotePathMax) + " sent no greeting within " + describe(timeout)));
    self->give_up("monitor " + quote_for_message(path, kQuotePathMax) + " sent no greeting");
  });
  socket_.async_connect(asio::local::stream_protocol::endpoint(path),
                        [self = shared_from_this(), path](boost::system::error_code ec) {
                          if (ec) {
                            if (!self->greeting_) return;  // the deadline already answered
                            auto g = std::move(self->greeting_);
                            self->greeting_ = nullptr;
                            g(Error::make(ErrorCode::kSystem, "connect to monitor " + quote_for_message(path, kQuotePathMax) + ": " + ec.message()));
                            return self->give_up("connect to monitor " + quote_for_message(path, kQuotePathMax) + ": " + ec.message());
                          }
                          self->read_next();
                        });
}

void QmpClient::execute(const std::string& command, Json arguments, ReplyHandler done) {
  execute(command, std::move(arguments), timeout_, std::move(done));
}

void QmpClient::execute(const std::string& command, Json arguments, std::chrono::milliseconds timeout,
                        ReplyHandler done) {
  if (closed_) return done(Error::make(ErrorCode::kSystem, "monitor connection closed"));
  uint64_t id = next_id_++;
  Json msg = {{"execute", command}, {"id", id}};
  if (!arguments.is_null()) msg["arguments"] = std::move(arguments);
  auto deadline = std::make_shared<asio::steady_timer>(socket_.get_executor(), timeout);
  deadline->async_wait([self = shared_from_this(), id, timeout](boost::system::error_code ec) {
    if (!ec) self->expire(id, timeout);
  });
  pending_[id] = Pending{command, std::move(done), std::move(deadline)};
  auto text = std::make_shared<std::string>(msg.dump() + "\n");
  asio::async_write(socket_, asio::buffer(*text), [self = shared_from_this(), text](boost::system::error_code ec, size_t) {
    if (ec) self->fail_pending("write to monitor: " + ec.message());
  });
}

void QmpClient::close() {
  if (closed_) return;
  closed_ = true;
  boost::system::error_code ignored;
  socket_.close(ignored);
}

void QmpClient::read_next() {
  asio::async_read_until(socket_, buffer_, '\n', [self = shared_from_this()](boost::system::error_code ec, size_t n) {
    if (ec) {
      // not_found: kMaxLine bytes and no newline. Whatever the monitor meant, it is not QMP;
      // reading on would let it grow the daemon's memory without bound.
      if (ec == asio::error::not_found)
        return self->give_up("monitor sent a line longer than " + std::to_string(kMaxLine >> 20) + " MiB");
      return self->give_up(ec == asio::error::eof ? "monitor closed the connection" : "read from monitor: " + ec.message());
    }
    std::string line(asio::buffers_begin(self->buffer_.data()), asio::buffers_begin(self->buffer_.data()) + n);
    self->buffer_.consume(n);
    Json message = Json::parse(line, nullptr, false);
    if (!message.is_discarded()) self->dispatch(message);
    if (!self->gave_up_) self->read_next();
  });
}

void QmpClient::expire(uint64_t id, std::chrono::milliseconds timeout) {
  auto it = pending_.find(id);
  if (it == pending_.end()) return;
  Pending p = std::move(it->second);
  pending_.erase(it);
  p.done(Error::make(ErrorCode::kSystem, "QMP command " + quote_for_message(p.command) + " got no reply within " + describe(timeout)));
  give_up("monitor gave up after QMP command " + quote_for_message(p.command) + " timed out");
}

void QmpClient::give_up(const std::string& why) {
  if (std::exchange(gave_up_, true)) return;
  closed_ = true;
  boost::system::error_code ignored;
  socket_.close(ignored);
  if (greeting_deadline_) greeting_deadline_->cancel();
  fail_pending(why);
  if (auto closed = on_closed) closed();
}

void QmpClient::dispatch(const Json& message) {
  if (!message.is_object()) return;
  if (message.contains("QMP")) {
    if (greeting_deadline_) greeting_deadline_->cancel();
    if (auto g = std::move(greeting_)) {
      greeting_ = nullptr;
      g({});
    }
    return;
  }
  if (message.contains("event")) {
    if (on_event && message["event"].is_string()) on_event(message);
    return;
  }
  if (!message.contains("id") || !message["id"].is_number_unsigned()) return;
  auto it = pending_.find(message["id"].get<uint64_t>());
  if (it == pending_.end()) return;
  ReplyHandler done = std::move(it->second.done);
  it->second.deadline->cancel();
  pending_.erase(it);
  if (message.contains("error")) {
    std::string desc = string_field(message["error"], "desc");
    done(Error::make(ErrorCode::kSystem, "QMP: " + (desc.empty() ? std::string("error") : desc)));
  } else {
    auto it = message.find("return");
    done(it != message.end() ? *it : Json::object());
  }
}

void QmpClient::fail_pending(const std::string& why) {
  auto pending = std::move(pending_);
  pending_.clear();
  for (auto& [id, p] : pending) {
    p.deadline->cancel();
    p.done(Error::make(ErrorCode::kSystem, why));
  }
  if (auto g = std::move(greeting_)) {
    greeting_ = nullptr;
    g(Error::make(ErrorCode::kSystem, why));
  }
}

}  // namespace vl
