// `keel serve` as a process: it prints where it listens, refuses public
// addresses without a token, takes a token file, and drains on SIGTERM.
#include <signal.h>
#include <unistd.h>

#include <cstdlib>

#include <fstream>
#include <future>
#include <regex>
#include <sstream>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "base/test_engine.h"
#include "server/test_util.h"
#include "testing/subprocess.h"

namespace keel::server {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;
using testing::Client;
using testing::Eventually;
using testing::Guest;
using testing::ReadBytes;
using testing::Reply;
using testing::TempDir;

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// A `keel serve` child process.
class ServeProcess {
 public:
  // `launcher` goes before keel's argv (e.g. a shell that sets limits).
  ServeProcess(const std::string& dir, std::vector<std::string> extra, std::vector<std::string> launcher = {})
      : log_(dir + "/serve.log") {
    std::vector<std::string> argv = std::move(launcher);
    std::vector<std::string> keel = {KEEL_BIN,    "serve",        "--listen",  "127.0.0.1:0", "--data",
                                     dir + "/data", "--modules", KEEL_GUEST_DIR, "--workers", "2",
                                     "--engine", std::string(ToString(TestEngine()))};
    argv.insert(argv.end(), keel.begin(), keel.end());
    argv.insert(argv.end(), extra.begin(), extra.end());
    pid_ = keel::testing::SpawnProcess(argv, log_);
  }
  ~ServeProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      keel::testing::WaitProcess(pid_);
    }
  }
  // The port from "listening on http://127.0.0.1:PORT", once printed.
  uint16_t WaitListening() {
    std::smatch m;
    std::regex re("listening on http://127\\.0\\.0\\.1:(\\d+)");
    uint16_t port = 0;
    Eventually([&] {
      std::string log = Slurp(log_);
      if (!std::regex_search(log, m, re)) return false;
      port = static_cast<uint16_t>(std::stoi(m[1]));
      return true;
    }, 30s);
    return port;
  }
  int Signal(int sig) { return kill(pid_, sig); }
  int Wait() {
    int code = keel::testing::WaitProcess(pid_);
    pid_ = -1;
    return code;
  }
  std::string log() const { return Slurp(log_); }

 private:
  std::string log_;
  int pid_ = -1;
};

TEST(ServeProcessTest, ServesThenDrainsOnSigterm) {
  TempDir dir;
  ServeProcess serve(dir.path(), {"--drain-grace", "5s"});
  uint16_t port = serve.WaitListening();
  ASSERT_NE(port, 0) << serve.log();
  Client c(port);
  EXPECT_EQ(c.Get("/healthz").status, 200);
  EXPECT_EQ(c.PostJson("/v1/modules/add/call/add", "{\"args\":[2,3]}").body, "{\"results\":[5]}\n");
  ASSERT_EQ(c.Put("/v1/modules/loop", ReadBytes(Guest("hostile_loop"))).status, 201);
  auto slow = std::async(std::launch::async, [&] {
    return Client(port).PostJson("/v1/modules/loop/call/busy_ms", "{\"args\":[700]}");
  });
  ASSERT_TRUE(Eventually([&] { return Client(port).Get("/v1/status").json().at("runtime").at("running") == 1; }));
  // An abnormal termination is logged with its call id, module and cause.
  EXPECT_EQ(c.PostJson("/v1/modules/loop/call/spin?timeout=50ms", "{}").status, 504);
  ASSERT_EQ(serve.Signal(SIGTERM), 0);
  Reply r = slow.get();
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "{\"results\":[700]}\n");
  EXPECT_EQ(serve.Wait(), 0);
  std::string log = serve.log();
  EXPECT_THAT(log, HasSubstr("call ended abnormally call_id="));
  EXPECT_THAT(log, HasSubstr("module=\"loop\" export=\"spin\" cause=deadline"));
  EXPECT_THAT(log, HasSubstr("draining"));
}

TEST(ServeProcessTest, RefusesPublicAddressWithoutToken) {
  TempDir dir;
  auto r = keel::testing::RunProcess({KEEL_BIN, "serve", "--listen", "0.0.0.0:0", "--data", dir.path()});
  EXPECT_EQ(r.exit_code, 64);
  EXPECT_THAT(r.err, HasSubstr("without a token"));
  r = keel::testing::RunProcess({KEEL_BIN, "serve", "--data", dir.path(), "--token-file", dir.path() + "/missing"});
  EXPECT_NE(r.exit_code, 0);
}

// --memory-budget takes sizes as people write them, shows in /metrics and
// /v1/status, and a bad value exits 64 naming the flag.
TEST(ServeProcessTest, MemoryBudgetFlag) {
  TempDir dir;
  for (const char* bad : {"lots", "4GB", "0", "-1GiB", "1.5GiB"}) {
    auto r = keel::testing::RunProcess({KEEL_BIN, "serve", "--data", dir.path(), "--memory-budget", bad});
    EXPECT_EQ(r.exit_code, 64) << bad;
    EXPECT_THAT(r.err, HasSubstr("--memory-budget")) << bad;
  }
  ServeProcess serve(dir.path(), {"--memory-budget", "96MiB"});
  uint16_t port = serve.WaitListening();
  ASSERT_NE(port, 0) << serve.log();
  Client c(port);
  EXPECT_THAT(c.Get("/metrics").body, HasSubstr("keel_memory_budget_bytes " + std::to_string(96 << 20)));
  EXPECT_EQ(c.Get("/v1/status").json().at("runtime").at("memory_budget_bytes"), 96 << 20);
  ASSERT_EQ(serve.Signal(SIGTERM), 0);
  EXPECT_EQ(serve.Wait(), 0);
}

// --commit-lanes takes 1 to 64; a bad value exits 64 naming the flag.
TEST(ServeProcessTest, CommitLanesFlag) {
  TempDir dir;
  for (const char* bad : {"0", "-1", "65", "two"}) {
    auto r = keel::testing::RunProcess({KEEL_BIN, "serve", "--data", dir.path(), "--commit-lanes", bad});
    EXPECT_EQ(r.exit_code, 64) << bad;
    EXPECT_THAT(r.err, HasSubstr("--commit-lanes")) << bad;
  }
}

TEST(ServeProcessTest, TokenFile) {
  TempDir dir;
  std::ofstream(dir.path() + "/token") << "from-a-file\n";
  ServeProcess serve(dir.path(), {"--token-file", dir.path() + "/token"});
  uint16_t port = serve.WaitListening();
  ASSERT_NE(port, 0) << serve.log();
  EXPECT_EQ(Client(port).Get("/v1/modules").status, 401);
  EXPECT_EQ(Client(port, "from-a-file").Get("/v1/modules").status, 200);
  ASSERT_EQ(serve.Signal(SIGINT), 0);
  EXPECT_EQ(serve.Wait(), 0);
}

// Started with a soft open-file limit of 64 and a hard one of 256, keel
// raises the soft limit to 256 and lowers --max-connections to what fits
// (256 less 128 kept for everything else), saying so. Connections past that
// are answered 503; none is left waiting on an accept that cannot succeed.
TEST(ServeProcessTest, MaxConnectionsFitTheFileLimit) {
  TempDir dir;
  ServeProcess serve(dir.path(), {"--max-connections", "4096"},
                     {"/bin/sh", "-c", "ulimit -S -n 64 && ulimit -H -n 256 && exec \"$0\" \"$@\""});
  uint16_t port = serve.WaitListening();
  ASSERT_NE(port, 0) << serve.log();
  EXPECT_THAT(serve.log(), HasSubstr("--max-connections lowered from 4096 to 128"));
  std::vector<std::unique_ptr<testing::RawSocket>> sockets;
  int ok = 0, refused = 0, other = 0;
  for (int i = 0; i < 160; ++i) {
    auto s = std::make_unique<testing::RawSocket>(port);
    s->Write("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:" + std::to_string(port) + "\r\n\r\n");
    std::string answer = s->ReadUntil("\r\n\r\n", 10s);
    if (answer.starts_with("HTTP/1.1 200")) {
      ++ok;
    } else if (answer.starts_with("HTTP/1.1 503")) {
      ++refused;
    } else {
      ++other;
    }
    sockets.push_back(std::move(s));  // kept open
  }
  EXPECT_EQ(ok, 128);
  EXPECT_EQ(refused, 32);
  EXPECT_EQ(other, 0);
  sockets.clear();
  ASSERT_EQ(serve.Signal(SIGTERM), 0);
  EXPECT_EQ(serve.Wait(), 0);
}

// scripts/run from a fresh clone of the committed tree: set up, build and
// serve. It builds keel from scratch (minutes), so it runs only with
// KEEL_TEST_FRESH_CLONE=1 (or =/path/to/another/repository).
TEST(ServeProcessTest, ScriptsRunFromFreshClone) {
  const char* from = std::getenv("KEEL_TEST_FRESH_CLONE");
  if (!from) GTEST_SKIP() << "set KEEL_TEST_FRESH_CLONE=1 to build a fresh clone";
  std::string source = std::string(from) == "1" ? KEEL_SOURCE_DIR : from;
  TempDir dir;
  std::string repo = dir.path() + "/keel";
  auto clone = keel::testing::RunProcess({"/usr/bin/git", "clone", "-q", source, repo});
  ASSERT_EQ(clone.exit_code, 0) << clone.err;
  std::string listen = "127.0.0.1:" + std::to_string(20000 + getpid() % 20000);
  std::string log_path = dir.path() + "/run.log";
  // scripts/run execs keel: the pid is the server's.
  int pid = keel::testing::SpawnProcess(
      {"/usr/bin/env", "KEEL_LISTEN=" + listen, "KEEL_DATA=" + dir.path() + "/data", repo + "/scripts/run"}, log_path);
  ASSERT_GT(pid, 0);
  bool listening = Eventually([&] { return Slurp(log_path).find("listening on http://" + listen) != std::string::npos; },
                              std::chrono::minutes(30));
  uint16_t port = static_cast<uint16_t>(std::stoi(listen.substr(listen.find(':') + 1)));
  if (listening) {
    EXPECT_EQ(Client(port).Get("/healthz").status, 200);
    EXPECT_EQ(Client(port).PostBytes("/v1/modules/sha256/call/hash", "abc").body,
              "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    EXPECT_EQ(Client(port).Get("/v1/modules/hostile_loop").status, 404);
  }
  kill(pid, SIGTERM);
  EXPECT_EQ(keel::testing::WaitProcess(pid), 0);
  ASSERT_TRUE(listening) << Slurp(log_path);
}

}  // namespace
}  // namespace keel::server
