// One client connection of `keel serve`: an HTTP/1.1 state machine on one
// io_context thread (a shard). It reads and checks requests, answers them,
// and while a synchronous call runs it keeps a read pending on the socket:
// that read both notices a client that goes away (the call is then
// detached) and, once the answer is written, brings the next request, so a
// call costs one read, one write and no re-arming of the socket.
//
// A call crosses threads twice: this thread submits it to a worker, and the
// worker's completion is posted straight back here (Call::OnCompleteInline).
#ifndef KEEL_SERVER_SESSION_H_
#define KEEL_SERVER_SESSION_H_

#include <chrono>
#include <cstddef>
#include <memory>
#include <memory_resource>
#include <optional>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/http.hpp>

#include "base/mutex.h"
#include "server/api.h"
#include "server/request_checks.h"
#include "server/service.h"

namespace keel::server {

class Session;

// One io_context and its thread; connections live on one shard for good,
// so a connection's handlers never run concurrently and need no strand.
struct Shard {
  boost::asio::io_context ctx{1};
  std::unordered_set<Session*> sessions;  // touched on ctx's thread only
  // Enforces the sessions' deadlines (see Session::ExpireIfLate).
  boost::asio::steady_timer sweeper{ctx};
  std::thread thread;
  // Set once ctx.run() has returned (every connection ended).
  Mutex mu;
  CondVar ended_cv;
  bool ended GUARDED_BY(mu) = false;
};

// Bytes read from the client and not yet parsed. A read may be pending into
// the free space after them while the parser consumes from the front, so
// the bytes move (compaction, growth) only when no read is pending.
class InputBuffer {
 public:
  explicit InputBuffer(size_t max_bytes) : max_(max_bytes) {}
  std::string_view data() const { return {bytes_.get() + start_, end_ - start_}; }
  size_t size() const { return end_ - start_; }
  bool full() const { return start_ == 0 && end_ == max_; }
  void Consume(size_t n);
  // Space for one read of up to `n` bytes (empty when full); then Commit().
  boost::asio::mutable_buffer Prepare(size_t n);
  void Commit(size_t n);

 private:
  std::unique_ptr<char[]> bytes_;
  size_t capacity_ = 0;
  size_t start_ = 0, end_ = 0;
  size_t max_;
  bool pending_ = false;
};

class Session : public std::enable_shared_from_this<Session> {
 public:
  using Clock = std::chrono::steady_clock;
  using Socket = boost::asio::basic_stream_socket<boost::asio::ip::tcp, boost::asio::io_context::executor_type>;

  // `port`: the port the service listens on (for Host checks).
  Session(Service& service, Shard& shard, Socket socket, uint16_t port);

  // On the shard's thread.
  void Start();
  // Shutdown: closes the socket; the session ends once its work is done.
  void Close();
  // Called by the shard's sweeper: a session past its deadline has its
  // socket operations cancelled, which then read as a timeout.
  void ExpireIfLate(Clock::time_point now);

 private:
  enum class Phase : uint8_t {
    kIdle,     // waiting for the first byte of a request
    kRequest,  // reading a request's header and body
    kBusy,     // the request is being handled (a route, or a call in flight)
    kWriting,  // writing the answer
    kLinger,   // answered and half-closed: discarding what the client still sends
    kEnded,
  };

  // The next socket operation must finish within `limit`. A plain field
  // checked by a sweeper, rather than a timer per operation: arming and
  // cancelling timers on every read and write costs syscalls.
  void Expect(std::chrono::milliseconds limit) { deadline_ = Clock::now() + limit; }
  void NoDeadline() { deadline_ = Clock::time_point::max(); }

  // Reading and parsing.
  void Read();
  void OnRead(const boost::system::error_code& ec, size_t n);
  void OnReadFailed(const boost::system::error_code& ec);
  void Advance();
  bool ParseSome();
  void ParseFailed(const boost::system::error_code& ec, bool header_done);
  bool OnHeader();
  std::optional<Response> Admit(const Request& req, std::string_view path, size_t limit);
  bool SendContinue();

  // Handling.
  void Dispatch();
  // Submits the call to `target` (module, export) on `entry` (nullptr:
  // unknown module) and waits for it, or answers at once.
  void BeginCall(std::shared_ptr<const ModuleEntry> entry, std::pair<std::string, std::string> target);
  void OnCallDone();

  // Answering.
  void Respond(Response res);
  void Respond(CallAnswer answer);
  void UpdateKeepAlive();
  void Send();
  void RefuseAndClose(Response res);
  void OnWritten(const boost::system::error_code& ec);
  void Linger();
  void End();

  Service& service_;
  const ServerOptions& options_;
  Shard& shard_;
  Socket socket_;
  const uint16_t port_;
  InputBuffer in_;
  Phase phase_ = Phase::kIdle;
  bool reading_ = false;    // a read is pending
  bool advancing_ = false;  // inside Advance(): answers written at once return to its loop
  bool closed_ = false;     // Close() was called
  bool timed_out_ = false;  // the sweeper cancelled the pending operation
  bool peer_closed_ = false;
  Clock::time_point deadline_ = Clock::time_point::max();

  // The request being read or handled; its fields live in arena_, which is
  // released after each request.
  alignas(std::max_align_t) char arena_bytes_[2048];
  std::pmr::monotonic_buffer_resource arena_{arena_bytes_, sizeof arena_bytes_};
  std::optional<http::request_parser<http::vector_body<uint8_t>, FieldsAllocator>> parser_;
  std::optional<RequestContext> ctx_;
  Clock::time_point received_;  // when its header was complete
  unsigned version_ = 11;
  bool head_ = false;             // a HEAD request: the answer has no body
  bool keep_alive_ = false;       // what the request asked for
  bool close_after_ = false;      // close once answered (framing errors, refusals)
  bool linger_after_ = false;     // ...after half-closing and draining (unread input)
  bool header_checked_ = false;
  HeaderScan scan_;  // of the request's header (views into parser_'s fields)
  size_t body_limit_ = 0;

  // A synchronous call in flight.
  std::optional<PendingCall> call_;
  std::shared_ptr<Session> self_while_calling_;  // moved into the completion
  bool client_gone_ = false;

  // The answer being written.
  std::string head_text_;
  std::string body_;
  bool with_body_ = false;
  int status_ = 0;
  size_t lingered_ = 0;
};

}  // namespace keel::server

#endif  // KEEL_SERVER_SESSION_H_
