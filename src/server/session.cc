#include "server/session.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <cstring>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/buffers_suffix.hpp>
#include <boost/beast/core/string.hpp>
#include <spdlog/spdlog.h>

namespace keel::server {

namespace asio = boost::asio;
namespace beast = boost::beast;
using std::chrono::milliseconds;

namespace {

// Bytes read at a time while waiting for a request or watching a client.
constexpr size_t kReadChunk = 8192;
// Room for body bytes beyond the header in the input buffer (the parser
// moves them to the body as they come).
constexpr size_t kBodyReadSpace = 64 << 10;
constexpr size_t kInitialBuffer = 16 << 10;
// A refused request still gets its answer read: the rest of what the
// client sends is discarded for at most this long.
constexpr milliseconds kLingerTime{1000};
constexpr size_t kLingerBytes = 1 << 20;

bool HasBody(int status) { return status >= 200 && status != 204 && status != 304; }

// The status line and fields of `res`, ending with the empty line.
void SerializeHead(const Response& res, std::string& out) {
  out.clear();
  out += res.version() == 10 ? "HTTP/1.0 " : "HTTP/1.1 ";
  out += std::to_string(res.result_int());
  out += ' ';
  auto reason = res.reason();
  out.append(reason.data(), reason.size());
  out += "\r\n";
  for (const auto& field : res) {
    auto name = field.name_string();
    auto value = field.value();
    out.append(name.data(), name.size());
    out += ": ";
    out.append(value.data(), value.size());
    out += "\r\n";
  }
  out += "\r\n";
}

void AppendNumber(std::string& out, uint64_t n) {
  char digits[20];
  auto end = std::to_chars(digits, digits + sizeof digits, n).ptr;
  out.append(digits, end);
}

Response ToResponse(const Refusal& refusal) {
  return ErrorResponse(refusal.status, Error(refusal.code, refusal.message));
}

// The answer to a request whose handler threw (a bug: logged).
Response Failed(std::exception_ptr e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& ex) {
    spdlog::error("request failed: {}", ex.what());
  }
  return ErrorResponse(500, Error(ErrorCode::kInternal, "internal error"));
}

}  // namespace

void InputBuffer::Consume(size_t n) {
  start_ += std::min(n, size());
  if (start_ == end_ && !pending_) start_ = end_ = 0;
}

asio::mutable_buffer InputBuffer::Prepare(size_t n) {
  if (capacity_ - end_ < n && start_ > 0) {
    std::memmove(bytes_.get(), bytes_.get() + start_, size());
    end_ -= start_;
    start_ = 0;
  }
  if (capacity_ - end_ < n && capacity_ < max_) {
    size_t grown = std::min(max_, std::max({kInitialBuffer, capacity_ * 2, end_ + n}));
    std::unique_ptr<char[]> bytes(new char[grown]);
    if (end_ > 0) std::memcpy(bytes.get(), bytes_.get(), end_);
    bytes_ = std::move(bytes);
    capacity_ = grown;
  }
  size_t room = std::min(n, capacity_ - end_);
  pending_ = room > 0;
  return {bytes_.get() + end_, room};
}

void InputBuffer::Commit(size_t n) {
  end_ += n;
  pending_ = false;
  if (start_ == end_) start_ = end_ = 0;
}

Session::Session(Service& service, Shard& shard, Socket socket, uint16_t port)
    : service_(service),
      options_(service.options()),
      shard_(shard),
      socket_(std::move(socket)),
      port_(port),
      in_(options_.max_header_bytes + kBodyReadSpace) {
  // Answers are written synchronously first (Respond): that must never
  // block the thread.
  beast::error_code ec;
  socket_.non_blocking(true, ec);
}

void Session::Start() {
  shard_.sessions.insert(this);
  Expect(options_.idle_timeout);
  Read();
}

void Session::Close() {
  closed_ = true;
  beast::error_code ec;
  socket_.close(ec);
}

void Session::ExpireIfLate(Clock::time_point now) {
  if (now < deadline_) return;
  timed_out_ = true;
  deadline_ = Clock::time_point::max();
  beast::error_code ec;
  socket_.cancel(ec);
}

void Session::Read() {
  if (reading_ || closed_ || phase_ == Phase::kEnded) return;
  asio::mutable_buffer space = in_.Prepare(kReadChunk);
  // Full: the client sent more ahead than we keep; it is read once the
  // parser has taken some.
  if (space.size() == 0) return;
  reading_ = true;
  socket_.async_read_some(space, [self = shared_from_this()](const boost::system::error_code& ec, size_t n) {
    self->OnRead(ec, n);
  });
}

void Session::OnRead(const boost::system::error_code& ec, size_t n) {
  reading_ = false;
  in_.Commit(ec ? 0 : n);
  if (phase_ == Phase::kEnded) return;
  if (ec) {
    OnReadFailed(ec);
    return;
  }
  switch (phase_) {
    case Phase::kIdle:
    case Phase::kRequest:
      Advance();
      return;
    case Phase::kBusy:
    case Phase::kWriting:
      Read();  // a pipelined request: kept for later; go on watching the client
      return;
    case Phase::kLinger:
      lingered_ += n;
      in_.Consume(in_.size());
      if (lingered_ < kLingerBytes) {
        Read();
      } else {
        End();
      }
      return;
    case Phase::kEnded:
      return;
  }
}

void Session::OnReadFailed(const boost::system::error_code& ec) {
  bool timeout = timed_out_ && ec == asio::error::operation_aborted;
  // Write timeouts are counted by OnWritten; lingering ends quietly.
  if (timeout && (phase_ == Phase::kIdle || phase_ == Phase::kRequest)) service_.http().timeouts++;
  switch (phase_) {
    case Phase::kBusy:
      // Closed for shutdown: whatever is running ends the session.
      if (closed_) return;
      // Reset or end of stream: the client is gone (a client that
      // half-closes its side counts as gone). Its call is cancelled: a
      // queued one withdrawn, a running one detached; OnCallDone follows.
      peer_closed_ = true;
      if (call_ && !client_gone_) {
        client_gone_ = true;
        AbandonCall(service_, *call_);
      }
      return;
    case Phase::kWriting:
      peer_closed_ = true;  // the write finishes or fails, then the session ends
      return;
    case Phase::kRequest:
      if (timeout && !closed_) {
        bool header = !parser_ || !parser_->is_header_done();
        milliseconds limit = header ? options_.header_timeout : options_.body_timeout;
        RefuseAndClose(ErrorResponse(408, Error(ErrorCode::kDeadlineExceeded,
                                                std::string(header ? "the request header" : "the request body") +
                                                    " did not arrive within " + std::to_string(limit.count()) +
                                                    " ms")));
        return;
      }
      End();
      return;
    default:
      End();
  }
}

void Session::Advance() {
  advancing_ = true;
  while ((phase_ == Phase::kIdle || phase_ == Phase::kRequest) && ParseSome()) {
  }
  advancing_ = false;
}

// One step of reading a request; false when it must wait (a read was
// started, or the request is being handled or refused).
bool Session::ParseSome() {
  if (phase_ == Phase::kRequest && header_checked_ && parser_->is_done()) {
    Dispatch();
    return true;  // answered at once: the loop goes on with the next request
  }
  if (in_.size() == 0) {
    Read();
    return false;
  }
  if (phase_ == Phase::kIdle) {
    phase_ = Phase::kRequest;
    received_ = Clock::now();
    Expect(options_.header_timeout);
    parser_.emplace(std::piecewise_construct, std::make_tuple(), std::make_tuple(FieldsAllocator(&arena_)));
    parser_->header_limit(static_cast<uint32_t>(options_.max_header_bytes));
    // The route's own limit is set once the header is known.
    body_limit_ = std::max(options_.max_body_bytes, options_.max_module_bytes);
    parser_->body_limit(body_limit_);
    header_checked_ = false;
  }
  beast::error_code ec;
  size_t used = parser_->put(asio::const_buffer(in_.data().data(), in_.size()), ec);
  in_.Consume(used);
  bool header_done = parser_->is_header_done();
  if (ec == http::error::need_more) {
    if (!header_done && in_.size() >= options_.max_header_bytes) ec = http::error::header_limit;
    if (!ec || ec == http::error::need_more) {
      Read();
      return false;
    }
  }
  if (ec) {
    ParseFailed(ec, header_done);
    return false;
  }
  if (header_done && !header_checked_) return OnHeader();
  if (parser_->is_done()) return true;
  if (used == 0) {
    Read();
    return false;
  }
  return true;
}

void Session::ParseFailed(const beast::error_code& ec, bool header_done) {
  if (ec == http::error::header_limit || ec == http::error::buffer_overflow) {
    RefuseAndClose(ErrorResponse(431, Error(ErrorCode::kResourceExhausted, "request header too large")));
  } else if (ec == http::error::body_limit) {
    RefuseAndClose(ErrorResponse(413, Error(ErrorCode::kResourceExhausted, "request body over the limit of " +
                                                                              std::to_string(body_limit_) + " bytes")));
  } else {
    std::string what = header_done ? "malformed body: " : "malformed request: ";
    RefuseAndClose(ErrorResponse(400, Error(ErrorCode::kInvalidArgument, what + ec.message())));
  }
}

// Checks a complete header; false if the request was refused.
bool Session::OnHeader() {
  header_checked_ = true;
  received_ = Clock::now();
  Request& req = parser_->get();
  version_ = req.version();
  head_ = req.method() == http::verb::head;
  keep_alive_ = req.keep_alive();
  scan_ = ScanHeader(req);
  if (auto refusal = CheckFraming(req, scan_)) {
    RefuseAndClose(ToResponse(*refusal));
    return false;
  }
  // HEAD is served as GET without the body.
  if (head_) req.method(http::verb::get);
  auto [path, query] = SplitTarget(std::string_view(req.target().data(), req.target().size()));
  size_t limit = BodyLimit(options_, req.method(), path);
  if (std::optional<Response> refusal = Admit(req, path, limit)) {
    if (!parser_->is_done()) {
      RefuseAndClose(std::move(*refusal));
      return false;
    }
    // Nothing left to read: the connection can go on.
    phase_ = Phase::kBusy;
    Respond(std::move(*refusal));
    return true;
  }
  body_limit_ = limit;
  parser_->body_limit(limit);
  if (parser_->is_done()) return true;
  Expect(options_.body_timeout);
  return SendContinue();
}

// Whether the request may be served at all, before its body is read.
std::optional<Response> Session::Admit(const Request& req, std::string_view path, size_t limit) {
  const std::string& token = options_.token;
  if (token.empty()) {
    if (auto refusal = CheckLocalRequest(req, scan_, port_)) return ToResponse(*refusal);
  }
  if (auto refusal = CheckExpect(req, scan_)) return ToResponse(*refusal);
  if (service_.draining()) return ErrorResponse(Error(ErrorCode::kShuttingDown, "the service is shutting down"));
  if (!token.empty() && NeedsAuth(options_, path)) {
    auto auth = req[http::field::authorization];
    if (!BearerMatches(std::string_view(auth.data(), auth.size()), token)) {
      Response res = ErrorResponse(401, Error(ErrorCode::kInvalidArgument, "missing or wrong bearer token"));
      res.set(http::field::www_authenticate, "Bearer");
      return res;
    }
  }
  if (auto length = parser_->content_length(); length && *length > limit) {
    return ErrorResponse(413, Error(ErrorCode::kResourceExhausted,
                                    "request body over the limit of " + std::to_string(limit) + " bytes"));
  }
  return std::nullopt;
}

// Answers `Expect: 100-continue` (HTTP/1.1 only; CheckExpect refused any
// other expectation). False if the client does not take it.
bool Session::SendContinue() {
  if (version_ != 11 || !scan_.expect) return true;
  static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
  // The previous answer was written in full, so the socket has room for
  // these few bytes unless the client stopped reading: then give up on it.
  beast::error_code ec;
  size_t n = socket_.write_some(asio::buffer(kContinue), ec);
  if (ec || n != kContinue.size()) {
    End();
    return false;
  }
  return true;
}

void Session::Dispatch() {
  phase_ = Phase::kBusy;
  NoDeadline();  // a call is bounded by its own deadline
  Request& req = parser_->get();
  auto [path, query] = SplitTarget(std::string_view(req.target().data(), req.target().size()));
  ctx_.emplace(RequestContext{req, path, query});
  if (req.method() == http::verb::post) {
    if (auto target = CallTarget(path)) {
      bool unloaded = false;
      auto entry = service_.registry().Find(target->first, &unloaded);
      if (entry || !unloaded) {
        BeginCall(std::move(entry), std::move(*target));
        return;
      }
      // A name another node uploaded, not compiled here yet: compiled on
      // the compile threads, then called.
      // Named first: the handler below takes `target` over.
      auto loading = service_.LoadModule(target->first);
      asio::co_spawn(socket_.get_executor(), std::move(loading),
                     [self = shared_from_this(), target = std::move(*target)](
                         std::exception_ptr e, Result<std::shared_ptr<const ModuleEntry>> loaded) mutable {
                       if (e) return self->Respond(Failed(e));
                       if (!loaded) return self->Respond(ErrorResponse(loaded.error()));
                       self->BeginCall(std::move(*loaded), std::move(target));
                     });
      return;
    }
  }
  asio::co_spawn(socket_.get_executor(), Route(service_, *ctx_),
                 [self = shared_from_this()](std::exception_ptr e, Response res) {
                   self->Respond(e ? Failed(e) : std::move(res));
                 });
}

void Session::BeginCall(std::shared_ptr<const ModuleEntry> entry,
                        std::pair<std::string, std::string> target) {
  auto started =
      StartCall(service_, *ctx_, std::move(entry), std::move(target.first), std::move(target.second));
  if (auto* res = std::get_if<Response>(&started)) {
    Respond(std::move(*res));
    return;
  }
  call_.emplace(std::move(std::get<PendingCall>(started)));
  service_.CallStarted();
  // The completion runs on the worker that resolves the call and only
  // posts back here. It owns the session until then, so no session
  // outlives its io_context's handlers (an unrun handler releases it).
  self_while_calling_ = shared_from_this();
  call_->call.OnCompleteInline([this](const CallResult&) {
    asio::post(socket_.get_executor(), [self = std::move(self_while_calling_)] { self->OnCallDone(); });
  });
  Read();  // watch the client: a read fails when it goes away
}

void Session::OnCallDone() {
  service_.CallEnded();
  PendingCall pending = std::move(*call_);
  call_.reset();
  if (phase_ == Phase::kEnded || closed_) {
    End();
    return;
  }
  if (client_gone_) {
    service_.http().CountResponse(499, Clock::now() - received_);
    End();
    return;
  }
  auto answer = FinishCall(service_, pending, pending.call.Wait());
  if (auto* res = std::get_if<Response>(&answer)) {
    Respond(std::move(*res));
  } else {
    Respond(std::move(std::get<CallAnswer>(answer)));
  }
}

void Session::RefuseAndClose(Response res) {
  close_after_ = true;
  linger_after_ = true;
  phase_ = Phase::kBusy;
  Respond(std::move(res));
}

void Session::UpdateKeepAlive() {
  keep_alive_ = keep_alive_ && !close_after_ && !peer_closed_ && !closed_ && !service_.draining();
}

void Session::Respond(Response res) {
  if (phase_ == Phase::kEnded) return;
  UpdateKeepAlive();
  status_ = res.result_int();
  res.version(version_);
  res.keep_alive(keep_alive_);
  res.prepare_payload();
  SerializeHead(res, head_text_);
  body_ = std::move(res.body());
  with_body_ = !head_ && HasBody(status_);
  Send();
}

void Session::Respond(CallAnswer answer) {
  if (phase_ == Phase::kEnded) return;
  UpdateKeepAlive();
  status_ = 200;
  head_text_.clear();
  head_text_ += version_ == 10 ? "HTTP/1.0 200 OK\r\nContent-Type: " : "HTTP/1.1 200 OK\r\nContent-Type: ";
  head_text_ += answer.content_type;
  head_text_ += "\r\nX-Keel-Call-Id: ";
  AppendNumber(head_text_, answer.id);
  head_text_ += "\r\nContent-Length: ";
  AppendNumber(head_text_, answer.body.size());
  if (version_ == 10 && keep_alive_) head_text_ += "\r\nConnection: keep-alive";
  if (version_ != 10 && !keep_alive_) head_text_ += "\r\nConnection: close";
  head_text_ += "\r\n\r\n";
  body_ = std::move(answer.body);
  with_body_ = true;
  Send();
}

// Writes head_text_ and body_ (unless this answers HEAD).
void Session::Send() {
  phase_ = Phase::kWriting;
  bool with_body = with_body_ && !body_.empty();
  std::array<asio::const_buffer, 2> buffers{asio::buffer(head_text_),
                                            with_body ? asio::buffer(body_) : asio::const_buffer()};
  size_t total = head_text_.size() + (with_body ? body_.size() : 0);
  // Most answers fit the socket's buffer: written here, without a round
  // through the reactor.
  beast::error_code ec;
  size_t n = socket_.write_some(buffers, ec);
  if (!ec && n == total) {
    OnWritten({});
    return;
  }
  if (ec && ec != asio::error::would_block && ec != asio::error::try_again) {
    OnWritten(ec);
    return;
  }
  beast::buffers_suffix<std::array<asio::const_buffer, 2>> rest(buffers);
  rest.consume(ec ? 0 : n);
  Expect(options_.write_timeout);
  asio::async_write(socket_, rest, [self = shared_from_this()](const boost::system::error_code& write_ec, size_t) {
    self->OnWritten(write_ec);
  });
}

void Session::OnWritten(const boost::system::error_code& ec) {
  if (phase_ == Phase::kEnded) return;
  if (ec && timed_out_ && ec == asio::error::operation_aborted) service_.http().timeouts++;
  service_.http().CountResponse(status_, Clock::now() - received_);
  body_.clear();
  ctx_.reset();
  parser_.reset();
  arena_.release();
  if (ec) {
    End();
    return;
  }
  if (!keep_alive_) {
    if (linger_after_) {
      Linger();
    } else {
      End();
    }
    return;
  }
  phase_ = Phase::kIdle;
  head_ = false;
  Expect(options_.idle_timeout);
  if (!advancing_) Advance();
}

// Closing with unread input would reset the connection and could destroy
// the answer before the client reads it: half-close, then drain a little.
void Session::Linger() {
  phase_ = Phase::kLinger;
  beast::error_code ec;
  socket_.shutdown(Socket::shutdown_send, ec);
  Expect(kLingerTime);
  lingered_ = in_.size();
  in_.Consume(in_.size());
  Read();  // unless one is pending already, which then drains
}

void Session::End() {
  if (phase_ == Phase::kEnded) return;
  phase_ = Phase::kEnded;
  NoDeadline();
  shard_.sessions.erase(this);
  beast::error_code ec;
  socket_.close(ec);
  service_.http().connections_open--;
}

}  // namespace keel::server
