#include "daemon/qmp_client.h"

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

void QmpClient::connect(const std::string& path, std::function<void(Result<void>)> ready) {
  greeting_ = [self = shared_from_this(), ready = std::move(ready)](Result<void> r) {
    if (!r) return ready(r);
    self->execute("qmp_capabilities", nullptr, [ready](Result<Json> caps) {
      if (!caps) return ready(caps.error());
      ready({});
    });
  };
  socket_.async_connect(asio::local::stream_protocol::endpoint(path),
                        [self = shared_from_this(), path](boost::system::error_code ec) {
                          if (ec) {
                            auto g = std::move(self->greeting_);
                            self->greeting_ = nullptr;
                            return g(Error::make(ErrorCode::kSystem, "connect to monitor '" + path + "': " + ec.message()));
                          }
                          self->read_next();
                        });
}

void QmpClient::execute(const std::string& command, Json arguments, ReplyHandler done) {
  if (closed_) return done(Error::make(ErrorCode::kSystem, "monitor connection closed"));
  uint64_t id = next_id_++;
  Json msg = {{"execute", command}, {"id", id}};
  if (!arguments.is_null()) msg["arguments"] = std::move(arguments);
  pending_[id] = std::move(done);
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
      self->closed_ = true;
      self->fail_pending(ec == asio::error::eof ? "monitor closed the connection" : "read from monitor: " + ec.message());
      if (self->on_closed) self->on_closed();
      return;
    }
    std::string line(asio::buffers_begin(self->buffer_.data()), asio::buffers_begin(self->buffer_.data()) + n);
    self->buffer_.consume(n);
    Json message = Json::parse(line, nullptr, false);
    if (!message.is_discarded()) self->dispatch(message);
    self->read_next();
  });
}

void QmpClient::dispatch(const Json& message) {
  if (!message.is_object()) return;
  if (message.contains("QMP")) {
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
  ReplyHandler done = std::move(it->second);
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
  for (auto& [id, done] : pending) done(Error::make(ErrorCode::kSystem, why));
  if (auto g = std::move(greeting_)) {
    greeting_ = nullptr;
    g(Error::make(ErrorCode::kSystem, why));
  }
}

}  // namespace vl
