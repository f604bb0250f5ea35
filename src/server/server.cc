#include "server/server.h"

#include <atomic>
#include <thread>
#include <unordered_set>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <spdlog/spdlog.h>

#include "server/api.h"
#include "server/service.h"

namespace keel::server {

namespace asio = boost::asio;
namespace beast = boost::beast;
using tcp = asio::ip::tcp;
using std::chrono::milliseconds;

namespace {

constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);
// Bytes read at a time while waiting for a request or watching a client.
constexpr size_t kReadChunk = 8192;
// Reading a request body, Beast asks for up to 64 KiB of buffer at once.
constexpr size_t kBodyReadSpace = 64 << 10;
// A refused connection or request still gets its answer read: the rest of
// what the client sends is discarded for at most this long.
constexpr milliseconds kLingerTime{1000};
constexpr size_t kLingerBytes = 1 << 20;
constexpr std::chrono::seconds kReapIdle{60};

// What a refused connection (over the limit) is told.
constexpr std::string_view kTooManyConnections =
    "HTTP/1.1 503 Service Unavailable\r\n"
    "Content-Type: application/json\r\n"
    "Retry-After: 1\r\n"
    "Connection: close\r\n"
    "Content-Length: 85\r\n\r\n"
    "{\"error\":{\"code\":\"unavailable\",\"message\":\"too many connections; retry later\"}}\n";

// Errors of the HTTP parser itself (malformed requests), as opposed to
// errors of the connection.
bool IsParseError(const beast::error_code& ec) {
  return ec.category() == http::make_error_code(http::error::bad_target).category() &&
         ec != http::error::end_of_stream && ec != http::error::partial_message;
}

void LogException(std::exception_ptr e) {
  if (!e) return;
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& ex) {
    spdlog::error("connection failed: {}", ex.what());
  }
}

}  // namespace

class Session;

// One io_context and its thread; connections live on one shard for good,
// so a connection's handlers never run concurrently and need no strand.
struct Shard {
  asio::io_context ctx{1};
  std::unordered_set<Session*> sessions;  // touched on ctx's thread only
  // Enforces the sessions' deadlines (see Session::Expect).
  asio::steady_timer sweeper{ctx};
  std::thread thread;
};

class Server::Impl {
 public:
  explicit Impl(std::unique_ptr<Service> service)
      : service_(std::move(service)), options_(service_->options()) {}

  Result<void> Listen(const tcp::endpoint& endpoint);
  void Run();
  void Shutdown(milliseconds grace);
  asio::awaitable<void> Accept();
  asio::awaitable<void> Tick();
  asio::awaitable<void> Sweep(Shard& shard);

  std::unique_ptr<Service> service_;
  const ServerOptions& options_;
  std::vector<std::unique_ptr<Shard>> shards_;
  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> guards_;
  std::unique_ptr<tcp::acceptor> acceptor_;
  std::unique_ptr<asio::steady_timer> ticker_;  // on shard 0
  tcp::endpoint endpoint_;
  size_t next_shard_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> refreshing_jobs_{false};
  std::mutex shutdown_mu_;
  bool shut_down_ = false;  // guarded by shutdown_mu_
};

// One client connection: reads requests, routes them, writes responses;
// while a synchronous call runs it watches the socket so that a client that
// goes away detaches its call.
class Session : public CallWaiter, public std::enable_shared_from_this<Session> {
 public:
  using Clock = std::chrono::steady_clock;

  Session(Server::Impl& server, Shard& shard, tcp::socket socket)
      : service_(*server.service_),
        options_(server.options_),
        shard_(shard),
        socket_(std::move(socket)),
        buffer_(options_.max_header_bytes + kBodyReadSpace) {
    // Synchronous reads (see Await) must never block the thread.
    beast::error_code ec;
    socket_.non_blocking(true, ec);
  }

  asio::awaitable<void> Run();
  void Close() {
    beast::error_code ec;
    socket_.close(ec);
  }
  // Called by the shard's sweeper: a session past its deadline has its
  // socket operation cancelled, which then reads as a timeout.
  void ExpireIfLate(Clock::time_point now) {
    if (now < deadline_) return;
    timed_out_ = true;
    deadline_ = Clock::time_point::max();
    beast::error_code ec;
    socket_.cancel(ec);
  }
  asio::awaitable<bool> Await(const Call& call) override;

 private:
  // The next socket operation must finish within `limit`. A plain field
  // checked by a sweeper, rather than a timer per operation: arming and
  // cancelling timers on every read and write costs syscalls.
  void Expect(milliseconds limit) { deadline_ = Clock::now() + limit; }
  void NoDeadline() { deadline_ = Clock::time_point::max(); }
  // True if `ec` ended an operation because the deadline passed (counted).
  bool TimedOut(const beast::error_code& ec) {
    if (!timed_out_ || ec != asio::error::operation_aborted) return false;
    service_.http().timeouts++;
    return true;
  }

  asio::awaitable<void> Serve();
  asio::awaitable<bool> Write(Response& res, unsigned version, bool keep_alive);
  // Answers and closes without reading the rest of the request.
  asio::awaitable<void> Refuse(Response& res, unsigned version);
  // Refuse() with a JSON error; counts the response.
  asio::awaitable<void> RefuseWith(int status, ErrorCode code, std::string message, unsigned version,
                                   Clock::time_point received);

  Service& service_;
  const ServerOptions& options_;
  Shard& shard_;
  tcp::socket socket_;
  beast::flat_buffer buffer_;
  Clock::time_point deadline_ = Clock::time_point::max();
  bool timed_out_ = false;
  bool client_gone_ = false;
};

asio::awaitable<void> Session::Run() {
  shard_.sessions.insert(this);
  co_await Serve();
  shard_.sessions.erase(this);
  Close();
  service_.http().connections_open--;
}

asio::awaitable<bool> Session::Write(Response& res, unsigned version, bool keep_alive) {
  res.version(version);
  res.keep_alive(keep_alive);
  res.prepare_payload();
  Expect(options_.write_timeout);
  auto [ec, n] = co_await http::async_write(socket_, res, kNoThrow);
  TimedOut(ec);
  co_return !ec;
}

asio::awaitable<void> Session::RefuseWith(int status, ErrorCode code, std::string message, unsigned version,
                                          Clock::time_point received) {
  Response res = ErrorResponse(status, Error(code, std::move(message)));
  co_await Refuse(res, version);
  service_.http().CountResponse(status, Clock::now() - received);
}

asio::awaitable<void> Session::Refuse(Response& res, unsigned version) {
  if (!co_await Write(res, version, /*keep_alive=*/false)) co_return;
  // Closing with unread data would reset the connection and could destroy
  // the answer before the client reads it: half-close, then drain a little.
  beast::error_code ec;
  socket_.shutdown(tcp::socket::shutdown_send, ec);
  Expect(kLingerTime);
  size_t drained = 0;
  while (drained < kLingerBytes) {
    buffer_.clear();
    auto [read_ec, n] = co_await socket_.async_read_some(buffer_.prepare(kReadChunk), kNoThrow);
    if (read_ec) break;
    drained += n;
  }
}

asio::awaitable<void> Session::Serve() {
  const std::string& token = options_.token;
  for (;;) {
    if (buffer_.size() == 0) {
      Expect(options_.idle_timeout);
      auto [ec, n] = co_await socket_.async_read_some(buffer_.prepare(kReadChunk), kNoThrow);
      if (ec) {
        TimedOut(ec);
        co_return;
      }
      buffer_.commit(n);
    }
    http::request_parser<http::vector_body<uint8_t>> parser;
    parser.header_limit(static_cast<uint32_t>(options_.max_header_bytes));
    // The route's own limit is set once the header is known.
    parser.body_limit(std::max(options_.max_body_bytes, options_.max_module_bytes));
    Expect(options_.header_timeout);
    auto [ec, n] = co_await http::async_read_header(socket_, buffer_, parser, kNoThrow);
    auto received = Clock::now();
    if (ec) {
      if (ec == http::error::header_limit || ec == http::error::buffer_overflow) {
        co_await RefuseWith(431, ErrorCode::kResourceExhausted, "request header too large", 11, received);
      } else if (ec == http::error::body_limit) {
        co_await RefuseWith(413, ErrorCode::kResourceExhausted, "request body too large", 11, received);
      } else if (IsParseError(ec)) {
        co_await RefuseWith(400, ErrorCode::kInvalidArgument, "malformed request: " + ec.message(), 11, received);
      } else {
        TimedOut(ec);
      }
      co_return;  // end of stream, reset, timeout, or a response already sent
    }
    Request& req = parser.get();
    unsigned version = req.version();
    auto [path, query] = SplitTarget(std::string_view(req.target().data(), req.target().size()));

    std::optional<Response> refusal;
    size_t limit = BodyLimit(options_, req.method(), path);
    if (service_.draining()) {
      refusal = ErrorResponse(Error(ErrorCode::kShuttingDown, "the service is shutting down"));
    } else if (!token.empty() && NeedsAuth(path)) {
      auto auth = req[http::field::authorization];
      if (!BearerMatches(std::string_view(auth.data(), auth.size()), token)) {
        refusal = ErrorResponse(401, Error(ErrorCode::kInvalidArgument, "missing or wrong bearer token"));
        refusal->set(http::field::www_authenticate, "Bearer");
      }
    }
    if (!refusal && parser.content_length() && *parser.content_length() > limit) {
      refusal = ErrorResponse(413, Error(ErrorCode::kResourceExhausted,
                                         "request body over the limit of " + std::to_string(limit) + " bytes"));
    }
    if (refusal) {
      int status = refusal->result_int();
      if (parser.is_done()) {
        // Nothing left to read: the connection can go on.
        bool keep_alive = req.keep_alive() && !service_.draining();
        bool written = co_await Write(*refusal, version, keep_alive);
        service_.http().CountResponse(status, Clock::now() - received);
        if (written && keep_alive) continue;
        co_return;
      }
      co_await Refuse(*refusal, version);
      service_.http().CountResponse(status, Clock::now() - received);
      co_return;
    }
    parser.body_limit(limit);
    if (!parser.is_done()) {
      auto expect = req[http::field::expect];
      if (beast::iequals(std::string_view(expect.data(), expect.size()), "100-continue")) {
        static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
        Expect(options_.write_timeout);
        auto [write_ec, written] = co_await asio::async_write(socket_, asio::buffer(kContinue), kNoThrow);
        if (write_ec) {
          TimedOut(write_ec);
          co_return;
        }
      }
      Expect(options_.body_timeout);
      auto [body_ec, body_n] = co_await http::async_read(socket_, buffer_, parser, kNoThrow);
      if (body_ec) {
        if (body_ec == http::error::body_limit) {
          co_await RefuseWith(413, ErrorCode::kResourceExhausted,
                              "request body over the limit of " + std::to_string(limit) + " bytes", version, received);
        } else if (IsParseError(body_ec)) {
          co_await RefuseWith(400, ErrorCode::kInvalidArgument, "malformed body: " + body_ec.message(), version,
                              received);
        } else {
          TimedOut(body_ec);
        }
        co_return;
      }
    }
    NoDeadline();  // a call is bounded by its own deadline

    bool keep_alive = req.keep_alive();
    RequestContext ctx{req, path, query, *this};
    Response res = co_await Route(service_, ctx);
    if (client_gone_) {
      service_.http().CountResponse(499, Clock::now() - received);
      co_return;
    }
    keep_alive = keep_alive && !service_.draining();
    int status = res.result_int();
    bool written = co_await Write(res, version, keep_alive);
    service_.http().CountResponse(status, Clock::now() - received);
    if (!written || !keep_alive) co_return;
  }
}

asio::awaitable<bool> Session::Await(const Call& call) {
  if (call.ready()) co_return true;
  // `done` is set on this connection's thread once the call resolved; the
  // wait that watches the client is then cancelled.
  struct Waiter {
    explicit Waiter(const asio::any_io_executor& ex) : timer(ex) {}
    bool done = false;
    asio::steady_timer timer;
  };
  auto executor = co_await asio::this_coro::executor;
  auto waiter = std::make_shared<Waiter>(executor);
  // The session may end (client gone) before the call resolves.
  call.OnComplete([waiter, executor, self = shared_from_this()](const CallResult&) {
    asio::post(executor, [waiter, self] {
      waiter->done = true;
      beast::error_code ec;
      self->socket_.cancel(ec);
      waiter->timer.cancel();
    });
  });
  while (!waiter->done) {
    if (buffer_.size() + kReadChunk > buffer_.max_size()) {
      // The client sent more requests ahead than we keep: stop watching
      // and just wait for the call.
      waiter->timer.expires_at(asio::steady_timer::time_point::max());
      co_await waiter->timer.async_wait(kNoThrow);
      continue;
    }
    // Waiting for readability re-arms the socket in epoll, which also
    // reports an end of stream that came before the wait; a read would
    // first try the socket, and mostly find nothing.
    auto [ec] = co_await socket_.async_wait(tcp::socket::wait_read, kNoThrow);
    if (waiter->done) break;
    beast::error_code read_ec = ec;
    if (!ec) {
      size_t n = socket_.read_some(buffer_.prepare(kReadChunk), read_ec);
      if (!read_ec) {
        buffer_.commit(n);  // a pipelined request: kept for later
        continue;
      }
      if (read_ec == asio::error::would_block) continue;
    }
    // End of stream or an error: the client is gone.
    client_gone_ = true;
    co_return false;
  }
  co_return true;
}

Result<void> Server::Impl::Listen(const tcp::endpoint& endpoint) {
  int threads = std::max(1, options_.io_threads);
  for (int i = 0; i < threads; ++i) {
    shards_.push_back(std::make_unique<Shard>());
    guards_.push_back(asio::make_work_guard(shards_.back()->ctx));
  }
  acceptor_ = std::make_unique<tcp::acceptor>(shards_[0]->ctx);
  ticker_ = std::make_unique<asio::steady_timer>(shards_[0]->ctx);
  beast::error_code ec;
  acceptor_->open(endpoint.protocol(), ec);
  if (!ec) acceptor_->set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor_->bind(endpoint, ec);
  if (!ec) acceptor_->listen(asio::socket_base::max_listen_connections, ec);
  if (!ec) endpoint_ = acceptor_->local_endpoint(ec);
  if (ec) {
    return MakeError(ErrorCode::kUnavailable, "cannot listen on " + endpoint.address().to_string() + ":" +
                                                  std::to_string(endpoint.port()) + ": " + ec.message());
  }
  return {};
}

void Server::Impl::Run() {
  asio::co_spawn(shards_[0]->ctx, Accept(), LogException);
  asio::co_spawn(shards_[0]->ctx, Tick(), LogException);
  for (auto& shard : shards_) {
    asio::co_spawn(shard->ctx, Sweep(*shard), LogException);
    shard->thread = std::thread([ctx = &shard->ctx] { ctx->run(); });
  }
}

asio::awaitable<void> Server::Impl::Sweep(Shard& shard) {
  constexpr milliseconds kEvery{100};
  while (!stopping_.load()) {
    shard.sweeper.expires_after(kEvery);
    auto [ec] = co_await shard.sweeper.async_wait(kNoThrow);
    if (ec) co_return;
    auto now = std::chrono::steady_clock::now();
    // Expiring cancels a socket operation; sessions leave the set only
    // when their coroutine resumes, so iterating here is safe.
    for (Session* session : shard.sessions) session->ExpireIfLate(now);
  }
}

asio::awaitable<void> Server::Impl::Accept() {
  HttpStats& stats = service_->http();
  asio::steady_timer backoff(shards_[0]->ctx);
  for (;;) {
    Shard& shard = *shards_[next_shard_++ % shards_.size()];
    auto [ec, socket] = co_await acceptor_->async_accept(shard.ctx, kNoThrow);
    if (ec) {
      if (stopping_.load() || !acceptor_->is_open()) co_return;
      // Out of descriptors or similar: back off instead of spinning.
      spdlog::warn("accept failed: {}", ec.message());
      backoff.expires_after(milliseconds(50));
      co_await backoff.async_wait(kNoThrow);
      continue;
    }
    stats.connections_accepted++;
    if (static_cast<size_t>(stats.connections_open.load()) >= options_.max_connections) {
      stats.connections_rejected++;
      auto refused = std::make_shared<tcp::socket>(std::move(socket));
      asio::async_write(*refused, asio::buffer(kTooManyConnections), [refused](beast::error_code, size_t) {
        beast::error_code ignored;
        refused->shutdown(tcp::socket::shutdown_both, ignored);
      });
      continue;
    }
    stats.connections_open++;
    beast::error_code opt_ec;
    socket.set_option(tcp::no_delay(true), opt_ec);
    auto session = std::make_shared<Session>(*this, shard, std::move(socket));
    asio::co_spawn(
        shard.ctx, [session]() -> asio::awaitable<void> { co_await session->Run(); }, LogException);
  }
}

asio::awaitable<void> Server::Impl::Tick() {
  auto next = std::chrono::steady_clock::now();
  while (!stopping_.load()) {
    next += std::chrono::seconds(1);
    ticker_->expires_at(next);
    auto [ec] = co_await ticker_->async_wait(kNoThrow);
    if (ec || stopping_.load()) co_return;
    HttpSnapshot http = service_->http().Snapshot();
    uint64_t responses = 0;
    for (const auto& [status, count] : http.responses) responses += count;
    service_->sampler().Take(service_->runtime().Metrics(), responses);
    service_->registry().Reap(kReapIdle);
    // Counting jobs is a query: off this thread, one at a time.
    if (!refreshing_jobs_.exchange(true)) {
      asio::post(service_->blocking(), [this] {
        service_->RefreshJobCounts();
        refreshing_jobs_.store(false);
      });
    }
  }
}

void Server::Impl::Shutdown(milliseconds grace) {
  std::lock_guard<std::mutex> lock(shutdown_mu_);
  if (shut_down_) return;
  shut_down_ = true;
  auto until = std::chrono::steady_clock::now() + grace;
  service_->SetDraining();
  stopping_.store(true);
  asio::post(shards_[0]->ctx, [this] {
    beast::error_code ec;
    acceptor_->close(ec);
    ticker_->cancel();
  });
  // Calls in flight get the grace period; new requests are refused (503).
  HttpStats& stats = service_->http();
  while (stats.calls_in_flight.load() > 0 && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(milliseconds(5));
  }
  auto left = std::chrono::duration_cast<milliseconds>(until - std::chrono::steady_clock::now());
  service_->Stop(std::max(left, milliseconds(0)));
  // Every call has resolved now; let their connections write the answers.
  auto flush_until = std::chrono::steady_clock::now() + milliseconds(500);
  while (stats.calls_in_flight.load() > 0 && std::chrono::steady_clock::now() < flush_until) {
    std::this_thread::sleep_for(milliseconds(5));
  }
  for (auto& shard : shards_) {
    asio::post(shard->ctx, [s = shard.get()] {
      s->sweeper.cancel();
      for (Session* session : s->sessions) session->Close();
    });
  }
  guards_.clear();
  // Connections end once their sockets are closed; do not wait on a stuck
  // one for long.
  auto join_until = std::chrono::steady_clock::now() + milliseconds(2000);
  for (auto& shard : shards_) {
    while (!shard->ctx.stopped() && std::chrono::steady_clock::now() < join_until) {
      std::this_thread::sleep_for(milliseconds(5));
    }
    shard->ctx.stop();
    if (shard->thread.joinable()) shard->thread.join();
  }
  // Blocking work still running completes into the stopped contexts, which
  // must outlive it.
  service_->blocking().join();
  spdlog::info("stopped");
}

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Server::~Server() {
  if (impl_) impl_->Shutdown(milliseconds(0));
}

Result<std::unique_ptr<Server>> Server::Start(ServerOptions options) {
  auto endpoint = ParseListenAddress(options.listen);
  if (!endpoint) return MakeError(endpoint.error());
  if (options.token.empty() && !endpoint->address().is_loopback()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "refusing to listen on " + options.listen +
                         " without a token: only loopback addresses may be served without --token-file");
  }
  auto service = Service::Create(std::move(options));
  if (!service) return MakeError(service.error());
  auto impl = std::make_unique<Impl>(std::move(*service));
  if (auto ok = impl->Listen(*endpoint); !ok) return MakeError(ok.error());
  auto server = std::unique_ptr<Server>(new Server(std::move(impl)));
  server->service().set_address(server->address());
  server->impl_->Run();
  spdlog::info("listening on http://{}", server->address());
  return server;
}

uint16_t Server::port() const { return impl_->endpoint_.port(); }

std::string Server::address() const {
  const auto& address = impl_->endpoint_.address();
  std::string host = address.is_v6() ? "[" + address.to_string() + "]" : address.to_string();
  return host + ":" + std::to_string(port());
}

void Server::Shutdown(milliseconds grace) { impl_->Shutdown(grace); }

Service& Server::service() { return *impl_->service_; }

}  // namespace keel::server
