// Helpers for the service's tests: a temporary data directory, an HTTP
// client over real sockets (Boost.Beast), raw sockets for malformed
// traffic, and a gate host function that holds a guest call until released.
#ifndef KEEL_SERVER_TEST_UTIL_H_
#define KEEL_SERVER_TEST_UTIL_H_

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <boost/json/value.hpp>
#include <gtest/gtest.h>

#include "keel/host.h"
#include "keel/metrics.h"
#include "server/options.h"
#include "server/server.h"
#include "server/stats.h"

namespace keel::server::testing {

namespace http = boost::beast::http;

// A fresh directory, removed with everything in it on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::vector<uint8_t> ReadBytes(const std::string& path);
std::string Guest(const std::string& name);    // build/guest/<name>.wasm
std::string Fixture(const std::string& name);  // build/fixtures/<name>.wasm

struct Reply {
  int status = 0;
  std::string body;
  http::fields headers;
  std::string header(http::field f) const { return std::string(headers[f]); }
  // The body parsed as JSON (null if it is not JSON).
  boost::json::value json() const;
  // error.code of a JSON error body.
  std::string error_code() const;
};

// One keep-alive connection to 127.0.0.1:port.
class Client {
 public:
  explicit Client(uint16_t port, std::string token = "");
  ~Client();
  Reply Send(http::verb method, const std::string& target, const std::string& body = "",
             const std::string& content_type = "", const std::map<std::string, std::string>& headers = {});
  Reply Get(const std::string& target) { return Send(http::verb::get, target); }
  Reply PostJson(const std::string& target, const std::string& json) {
    return Send(http::verb::post, target, json, "application/json");
  }
  Reply PostBytes(const std::string& target, const std::string& bytes) {
    return Send(http::verb::post, target, bytes, "application/octet-stream");
  }
  Reply Put(const std::string& target, const std::vector<uint8_t>& bytes) {
    return Send(http::verb::put, target, std::string(bytes.begin(), bytes.end()), "application/wasm");
  }
  // True if the server closed the connection after the last reply.
  bool closed() const { return !stream_; }

 private:
  void Connect();
  uint16_t port_;
  std::string token_;
  std::unique_ptr<boost::asio::io_context> ioc_;
  std::unique_ptr<boost::beast::tcp_stream> stream_;
  boost::beast::flat_buffer buffer_;
};

// A blocking TCP socket for raw bytes.
class RawSocket {
 public:
  explicit RawSocket(uint16_t port);
  ~RawSocket();
  bool Write(const std::string& bytes);
  // Reads until the peer closes or `timeout` passes; what was read.
  std::string ReadAll(std::chrono::milliseconds timeout = std::chrono::milliseconds(5000));
  // Reads until `needle` appears, the peer closes or `timeout` passes.
  std::string ReadUntil(const std::string& needle, std::chrono::milliseconds timeout = std::chrono::milliseconds(5000));
  // True if the peer closed the connection within `timeout`.
  bool WaitClosed(std::chrono::milliseconds timeout);
  void Close();

 private:
  int fd_ = -1;
};

// keel_test.gate(i32) -> i32 for hostile_gate: blocks until opened (or
// the call is interrupted).
class Gate {
 public:
  void Define(Linker& linker);
  void Open();
  // Waits until the gate has been entered `n` times.
  bool WaitEntered(int n, std::chrono::milliseconds timeout = std::chrono::milliseconds(20000));
  int entered();

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
  int entered_ = 0;
};

// Polls `condition` until true or `timeout`.
bool Eventually(const std::function<bool()>& condition,
                std::chrono::milliseconds timeout = std::chrono::milliseconds(10000));

// Options for a test server on 127.0.0.1 (free port) in `data_dir`, with
// the example guests preloaded.
ServerOptions TestOptions(const std::string& data_dir);

// A fixture running one service in-process, with the gate host function.
class ServerTestBase : public ::testing::Test {
 protected:
  // Starts a server; `tweak` adjusts the options first.
  void Start(const std::function<void(ServerOptions&)>& tweak = {});
  void TearDown() override;
  uint16_t port() const { return server_->port(); }
  // The Host line of a request for this service, for raw requests.
  std::string HostLine() const { return "Host: 127.0.0.1:" + std::to_string(port()) + "\r\n"; }
  MetricsSnapshot Metrics();
  HttpSnapshot Http();
  // Uploads a module under `name`; asserts success.
  void Upload(const std::string& name, const std::string& path);

  TempDir dir_;
  Gate gate_;
  std::unique_ptr<Server> server_;
};

}  // namespace keel::server::testing

#endif  // KEEL_SERVER_TEST_UTIL_H_
