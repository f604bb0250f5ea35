// `keel serve`: HTTP/1.1 with keep-alive on Boost.Beast, C++20 coroutines
// on a few io_context threads (one per context, connections spread over
// them). See api.h for the routes and docs/SERVER.md for the API.
#ifndef KEEL_SERVER_SERVER_H_
#define KEEL_SERVER_SERVER_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "keel/status.h"
#include "server/options.h"

namespace keel::server {

class Service;

// Thread-safe.
class Server {
 public:
  // Opens the store, starts the runtime and the job runner, loads modules,
  // binds and starts serving. kInvalidArgument for a bad address, or a
  // non-loopback one without a token; kUnavailable if it cannot bind.
  [[nodiscard]] static Result<std::unique_ptr<Server>> Start(ServerOptions options);
  // Shutdown(0) unless already shut down.
  ~Server();

  // The bound port (useful with port 0) and "ADDR:PORT".
  uint16_t port() const;
  std::string address() const;

  // Graceful stop: stops accepting, answers new requests 503, gives calls
  // in flight `grace` to finish (then interrupts them), stops the job
  // runner, closes every connection and joins the threads. Idempotent;
  // returns when everything has stopped.
  void Shutdown(std::chrono::milliseconds grace);

  Service& service();

  class Impl;

 private:
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace keel::server

#endif  // KEEL_SERVER_SERVER_H_
