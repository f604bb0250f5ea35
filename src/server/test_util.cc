#include "server/test_util.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <thread>

#include <boost/beast/core.hpp>
#include <boost/json.hpp>

#include "base/test_engine.h"
#include "keel/runtime.h"
#include "server/service.h"

namespace keel::server::testing {

namespace beast = boost::beast;
namespace json = boost::json;

TempDir::TempDir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "keel-server-XXXXXX").string();
  char* made = mkdtemp(tmpl.data());
  path_ = made ? made : "";
}

TempDir::~TempDir() {
  std::error_code ec;
  if (!path_.empty()) std::filesystem::remove_all(path_, ec);
}

std::vector<uint8_t> ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::string Guest(const std::string& name) { return std::string(KEEL_GUEST_DIR) + "/" + name + ".wasm"; }
std::string Fixture(const std::string& name) { return std::string(KEEL_FIXTURE_DIR) + "/" + name + ".wasm"; }

json::value Reply::json() const {
  json::error_code ec;
  json::value v = json::parse(body, ec);
  return ec ? json::value() : v;
}

std::string Reply::error_code() const {
  json::value v = json();
  if (!v.is_object()) return "";
  const json::value* e = v.as_object().if_contains("error");
  if (!e || !e->is_object()) return "";
  const json::value* code = e->as_object().if_contains("code");
  return code && code->is_string() ? std::string(code->as_string()) : "";
}

Client::Client(uint16_t port, std::string token) : port_(port), token_(std::move(token)) {}

Client::~Client() = default;

void Client::Connect() {
  ioc_ = std::make_unique<boost::asio::io_context>();
  stream_ = std::make_unique<beast::tcp_stream>(*ioc_);
  beast::error_code ec;
  stream_->socket().connect({boost::asio::ip::make_address("127.0.0.1"), port_}, ec);
  if (ec) stream_.reset();
  buffer_.clear();
}

Reply Client::Send(http::verb method, const std::string& target, const std::string& body,
                   const std::string& content_type, const std::map<std::string, std::string>& headers) {
  if (!stream_) Connect();
  Reply reply;
  if (!stream_) return reply;
  http::request<http::string_body> req(method, target, 11);
  req.set(http::field::host, "127.0.0.1:" + std::to_string(port_));
  if (!token_.empty()) req.set(http::field::authorization, "Bearer " + token_);
  if (!content_type.empty()) req.set(http::field::content_type, content_type);
  for (const auto& [name, value] : headers) req.set(name, value);
  req.body() = body;
  req.prepare_payload();
  beast::error_code ec;
  stream_->expires_after(std::chrono::seconds(60));
  http::write(stream_->socket(), req, ec);
  if (ec) {
    stream_.reset();
    return reply;
  }
  http::response_parser<http::string_body> parser;
  parser.body_limit(1 << 30);
  parser.skip(method == http::verb::head);  // the answer to HEAD has no body
  http::read(stream_->socket(), buffer_, parser, ec);
  if (ec) {
    stream_.reset();
    return reply;
  }
  auto res = parser.release();
  reply.status = res.result_int();
  reply.body = res.body();
  for (const auto& field : res) reply.headers.insert(field.name_string(), field.value());
  if (!res.keep_alive()) stream_.reset();
  return reply;
}

RawSocket::RawSocket(uint16_t port) {
  fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) Close();
}

RawSocket::~RawSocket() { Close(); }

void RawSocket::Close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

bool RawSocket::Write(const std::string& bytes) {
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::send(fd_, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

std::string RawSocket::ReadUntil(const std::string& needle, std::chrono::milliseconds timeout) {
  std::string out;
  auto until = std::chrono::steady_clock::now() + timeout;
  while (fd_ >= 0 && (needle.empty() || out.find(needle) == std::string::npos)) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) break;
    char buf[65536];
    ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

std::string RawSocket::ReadAll(std::chrono::milliseconds timeout) { return ReadUntil("", timeout); }

bool RawSocket::WaitClosed(std::chrono::milliseconds timeout) {
  auto until = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < until) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, 50) > 0) {
      char buf[4096];
      ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) return true;
    }
  }
  return false;
}

void Gate::Define(Linker& linker) {
  linker.Define("keel_test", "gate", {{ValType::kI32}, {ValType::kI32}},
                [this](Caller& caller, std::span<const Value> args, std::span<Value> results) -> Result<void> {
                  caller.SetInterruptHook([this] {
                    std::lock_guard<std::mutex> lock(mu_);
                    cv_.notify_all();
                  });
                  std::unique_lock<std::mutex> lock(mu_);
                  entered_++;
                  cv_.notify_all();
                  cv_.wait(lock, [&] { return open_ || caller.interrupted(); });
                  if (!open_) return MakeError(ErrorCode::kInterrupted, "gate interrupted");
                  results[0] = args[0];
                  return {};
                });
}

void Gate::Open() {
  std::lock_guard<std::mutex> lock(mu_);
  open_ = true;
  cv_.notify_all();
}

bool Gate::WaitEntered(int n, std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, timeout, [&] { return entered_ >= n; });
}

int Gate::entered() {
  std::lock_guard<std::mutex> lock(mu_);
  return entered_;
}

bool Eventually(const std::function<bool()>& condition, std::chrono::milliseconds timeout) {
  auto until = std::chrono::steady_clock::now() + timeout;
  while (!condition()) {
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

ServerOptions TestOptions(const std::string& data_dir) {
  ServerOptions o;
  o.engine = TestEngine();
  o.listen = "127.0.0.1:0";
  o.data_dir = data_dir;
  o.workers = 2;
  o.io_threads = 2;
  o.module_dirs = {KEEL_GUEST_DIR};
  return o;
}

void ServerTestBase::Start(const std::function<void(ServerOptions&)>& tweak) {
  ServerOptions options = TestOptions(dir_.path());
  options.extend_linker = [this](Linker& linker) { gate_.Define(linker); };
  if (tweak) tweak(options);
  auto server = Server::Start(std::move(options));
  ASSERT_TRUE(server) << server.error().ToString();
  server_ = std::move(*server);
}

void ServerTestBase::TearDown() {
  gate_.Open();
  if (server_) server_->Shutdown(std::chrono::seconds(2));
}

MetricsSnapshot ServerTestBase::Metrics() { return server_->service().runtime().Metrics(); }

HttpSnapshot ServerTestBase::Http() { return server_->service().http().Snapshot(); }

void ServerTestBase::Upload(const std::string& name, const std::string& path) {
  Reply r = Client(port()).Put("/v1/modules/" + name, ReadBytes(path));
  ASSERT_TRUE(r.status == 201 || r.status == 200) << r.status << " " << r.body;
}

}  // namespace keel::server::testing
