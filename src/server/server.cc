#include "server/server.h"

#include <sys/resource.h>

#include <atomic>
#include <thread>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <spdlog/spdlog.h>

#include "server/api.h"
#include "server/service.h"
#include "server/session.h"

namespace keel::server {

namespace asio = boost::asio;
namespace beast = boost::beast;
using tcp = asio::ip::tcp;
using std::chrono::milliseconds;

namespace {

constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);
constexpr std::chrono::seconds kReapIdle{60};
// Descriptors kept for everything but connections: the store, the
// io_contexts, the engine, module files, refused connections in flight.
constexpr rlim_t kReservedDescriptors = 128;

// What a refused connection (over the limit) is told.
constexpr std::string_view kTooManyConnections =
    "HTTP/1.1 503 Service Unavailable\r\n"
    "Content-Type: application/json\r\n"
    "Retry-After: 1\r\n"
    "Connection: close\r\n"
    "Content-Length: 85\r\n\r\n"
    "{\"error\":{\"code\":\"unavailable\",\"message\":\"too many connections; retry later\"}}\n";

void LogException(std::exception_ptr e) {
  if (!e) return;
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& ex) {
    spdlog::error("connection failed: {}", ex.what());
  }
}

// Raises the open-file limit to its hard limit and lowers
// `max_connections` to what then fits, so that accept never runs out of
// descriptors (it would fail in a loop while clients wait).
void FitConnectionsToFileLimit(ServerOptions& options) {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return;
  if (limit.rlim_cur < limit.rlim_max) {
    rlimit raised = limit;
    raised.rlim_cur = limit.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0) limit = raised;
  }
  if (limit.rlim_cur == RLIM_INFINITY) return;
  rlim_t fit = limit.rlim_cur > 2 * kReservedDescriptors ? limit.rlim_cur - kReservedDescriptors : limit.rlim_cur / 2;
  if (options.max_connections <= fit) return;
  spdlog::warn("--max-connections lowered from {} to {}: the open-file limit (RLIMIT_NOFILE) is {}",
               options.max_connections, fit, limit.rlim_cur);
  options.max_connections = static_cast<size_t>(fit);
}

}  // namespace

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
  Mutex shutdown_mu_;
  bool shut_down_ GUARDED_BY(shutdown_mu_) = false;
};

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
    shard->thread = std::thread([s = shard.get()] {
      s->ctx.run();
      MutexLock lock(s->mu);
      s->ended = true;
      s->ended_cv.SignalAll();
    });
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
    auto session = std::make_shared<Session>(*service_, shard, std::move(socket), endpoint_.port());
    asio::post(shard.ctx, [session] { session->Start(); });
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
  MutexLock lock(shutdown_mu_);
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
  service_->WaitCallsDone(until);
  auto left = std::chrono::duration_cast<milliseconds>(until - std::chrono::steady_clock::now());
  service_->Stop(std::max(left, milliseconds(0)));
  // Every call has resolved now; let their connections write the answers.
  service_->WaitCallsDone(std::chrono::steady_clock::now() + milliseconds(500));
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
    {
      MutexLock shard_lock(shard->mu);
      while (!shard->ended && shard->ended_cv.WaitUntil(shard->mu, join_until)) {
      }
    }
    shard->ctx.stop();
    if (shard->thread.joinable()) shard->thread.join();
  }
  // Blocking work still running completes into the stopped contexts, which
  // must outlive it.
  service_->JoinThreads();
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
  FitConnectionsToFileLimit(options);
  auto service = Service::Create(std::move(options));
  if (!service) return MakeError(service.error());
  auto impl = std::make_unique<Impl>(std::move(*service));
  if (auto ok = impl->Listen(*endpoint); !ok) return MakeError(ok.error());
  auto server = std::unique_ptr<Server>(new Server(std::move(impl)));
  server->service().set_address(server->address());
  if (auto ok = server->service().StartJobs(); !ok) return MakeError(ok.error());
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
