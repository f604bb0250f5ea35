// The status page in a real browser: headless Chromium loads it from the
// running service and must show live data (pools, terminations, charts).
#include <unistd.h>

#include <filesystem>
#include <atomic>
#include <regex>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "server/server.h"
#include "server/service.h"
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
using testing::TempDir;

constexpr const char* kChromium = "/usr/bin/chromium";

// Runs headless Chromium on `url` with a fresh profile; returns its stdout.
keel::testing::ProcessResult Chromium(const std::string& profile, std::vector<std::string> args,
                                      const std::string& url) {
  std::vector<std::string> argv = {"/usr/bin/timeout", "90", kChromium, "--headless", "--no-sandbox", "--disable-gpu",
                                   "--disable-quic", "--no-first-run", "--disable-background-networking",
                                   "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                                   "--user-data-dir=" + profile};
  argv.insert(argv.end(), args.begin(), args.end());
  argv.push_back(url);
  return keel::testing::RunProcess(argv);
}

int Attribute(const std::string& html, const std::string& pattern) {
  std::smatch m;
  if (!std::regex_search(html, m, std::regex(pattern))) return -1;
  return std::stoi(m[1]);
}

class StatusPageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (access(kChromium, X_OK) != 0) GTEST_SKIP() << kChromium << " is not installed";
  }
};

TEST_F(StatusPageTest, ShowsLiveDataInChromium) {
  TempDir data, profile;
  ServerOptions options = testing::TestOptions(data.path());
  options.token = "page-token";
  options.node_name = "page-node";
  auto server = Server::Start(options);
  ASSERT_TRUE(server) << server.error().ToString();
  uint16_t port = (*server)->port();
  Client c(port, "page-token");
  ASSERT_EQ(c.Put("/v1/modules/post_trap", ReadBytes(Guest("hostile_post_trap"))).status, 201);
  // Live traffic while the page is open: calls, and now and then a trap.
  struct Load {
    std::atomic<bool> stop{false};
    std::thread thread;
    ~Load() {
      stop.store(true);
      if (thread.joinable()) thread.join();
    }
  } load;
  load.thread = std::thread([&] {
    Client client(port, "page-token");
    for (int i = 0; !load.stop.load(); ++i) {
      if (i % 50 == 0) {
        client.PostBytes("/v1/modules/post_trap/call/fail", "x");
      } else {
        client.PostJson("/v1/modules/add/call/add", "{\"args\":[1,2]}");
      }
      std::this_thread::sleep_for(1ms);
    }
  });
  // The charts need a few one-second samples.
  ASSERT_TRUE(Eventually([&] { return c.Get("/v1/status").json().at("series").as_array().size() >= 3; }, 10s));

  std::string url = "http://127.0.0.1:" + std::to_string(port) + "/#token=page-token";
  auto dom = Chromium(profile.path(), {"--virtual-time-budget=4000", "--dump-dom"}, url);
  ASSERT_EQ(dom.exit_code, 0) << dom.err;
  const std::string& html = dom.out;
  EXPECT_GE(Attribute(html, "<body data-updates=\"(\\d+)\""), 1) << html.substr(0, 2000);
  EXPECT_THAT(html, HasSubstr("data-module=\"add\""));
  EXPECT_THAT(html, HasSubstr("data-module=\"post_trap\""));
  EXPECT_THAT(html, HasSubstr("data-cause=\"trap\""));
  EXPECT_THAT(html, HasSubstr("data-node=\"page-node\""));
  EXPECT_THAT(html, HasSubstr("page-node (this node)"));
  EXPECT_THAT(html, HasSubstr("unreachable"));
  EXPECT_GE(Attribute(html, "id=\"c-throughput\" data-samples=\"(\\d+)\""), 3);
  EXPECT_GE(Attribute(html, "id=\"c-latency\" data-samples=\"(\\d+)\""), 3);
  EXPECT_GE(Attribute(html, "id=\"c-terminations\" data-samples=\"(\\d+)\""), 3);
  EXPECT_THAT(html, HasSubstr("id=\"state\" class=\"\">live<"));
  EXPECT_GT(Attribute(html, "id=\"t-rate\">(\\d+)<"), 0);
  EXPECT_THAT(html, HasSubstr("127.0.0.1:" + std::to_string(port) + " · 2 workers"));

  // Without the token the page asks for one instead of showing data.
  TempDir profile2;
  std::string bare = "http://127.0.0.1:" + std::to_string(port) + "/";
  dom = Chromium(profile2.path(), {"--virtual-time-budget=2000", "--dump-dom"}, bare);
  ASSERT_EQ(dom.exit_code, 0) << dom.err;
  EXPECT_THAT(dom.out, HasSubstr("needs token"));
  EXPECT_THAT(dom.out, HasSubstr("<body data-updates=\"0\""));

  // A screenshot for people reading the test output.
  std::string shot = std::string(KEEL_BINARY_DIR) + "/status_page.png";
  TempDir profile3;
  auto png = Chromium(profile3.path(), {"--virtual-time-budget=3000", "--window-size=1280,1100", "--screenshot=" + shot},
                      url);
  EXPECT_EQ(png.exit_code, 0) << png.err;
  EXPECT_TRUE(std::filesystem::exists(shot));
  load.stop.store(true);
  load.thread.join();
  (*server)->Shutdown(1s);
}

}  // namespace
}  // namespace keel::server
