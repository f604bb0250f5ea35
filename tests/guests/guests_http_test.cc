// The C++ and Rust guests over HTTP on a real socket, served from the build's
// guest directory as `keel serve --modules build/guest` does, and the
// README's Rust crate and C++ guest uploaded and called the way the README
// says.
#include <boost/json.hpp>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "server/server.h"
#include "server/test_util.h"

namespace keel::server {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;
using testing::Client;
using testing::ReadBytes;
using testing::Reply;
using testing::TempDir;
using testing::TestOptions;
namespace json = boost::json;
namespace http = boost::beast::http;

class GuestsHttpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto server = Server::Start(TestOptions(dir_.path()));
    ASSERT_TRUE(server) << server.error().ToString();
    server_ = std::move(*server);
  }
  void TearDown() override {
    if (server_) server_->Shutdown(2s);
  }
  Client Connect() { return Client(server_->port()); }

  TempDir dir_;
  std::unique_ptr<Server> server_;
};

TEST_F(GuestsHttpTest, ServesTheNewGuests) {
  Client c = Connect();
  Reply list = c.Get("/v1/modules");
  ASSERT_EQ(list.status, 200);
  std::vector<std::string> names;
  json::value modules = list.json();  // outlives the loop
  for (const auto& m : modules.at("modules").as_array()) names.emplace_back(m.at("name").as_string());
  EXPECT_THAT(names, ::testing::IsSupersetOf({"markdown", "regexp", "gzip", "csv", "rgrep"}));
  EXPECT_THAT(names, ::testing::Not(::testing::Contains("hostile_rust")));

  Reply html = c.PostBytes("/v1/modules/markdown/call/render", "Hello *web*");
  EXPECT_EQ(html.status, 200);
  EXPECT_EQ(html.body, "<p>Hello <em>web</em></p>\n");
  // JSON input of a byte call goes with a non-JSON content type.
  Reply found = c.PostBytes("/v1/modules/regexp/call/find", R"({"pattern":"\\d+","text":"a1b22"})");
  EXPECT_EQ(found.status, 200);
  EXPECT_EQ(found.body,
            R"({"matches":[{"start":1,"end":2,"text":"1","groups":{}},{"start":3,"end":5,"text":"22","groups":{}}]})");
  Reply rows = c.PostBytes("/v1/modules/csv/call/to_json", "k,v\nx,1\n");
  EXPECT_EQ(rows.status, 200);
  EXPECT_EQ(rows.body, R"([{"k":"x","v":"1"}])");

  std::string binary;
  for (int i = 0; i < 70000; ++i) binary.push_back(static_cast<char>(i * 31 % 256));
  Reply packed = c.PostBytes("/v1/modules/gzip/call/compress", binary);
  ASSERT_EQ(packed.status, 200);
  Reply unpacked = c.PostBytes("/v1/modules/gzip/call/decompress", packed.body);
  ASSERT_EQ(unpacked.status, 200);
  EXPECT_TRUE(unpacked.body == binary);
}

TEST_F(GuestsHttpTest, GuestErrorsAre422WithTheGuestsMessage) {
  Client c = Connect();
  Reply bad = c.PostBytes("/v1/modules/regexp/call/find", R"({"pattern":"[z-a]","text":""})");
  EXPECT_EQ(bad.status, 422);
  EXPECT_EQ(bad.error_code(), "trap");
  json::object e = bad.json().at("error").as_object();
  EXPECT_EQ(e["trap"], "unreachable");
  EXPECT_THAT(std::string(e["message"].as_string()), HasSubstr("find: invalid pattern: regex parse error"));
  Reply csv = c.PostBytes("/v1/modules/csv/call/to_json", "a,b\n1\n");
  EXPECT_EQ(csv.status, 422);
  EXPECT_THAT(csv.body, HasSubstr("to_json: line 2: 1 fields, the header has 2"));
  Reply gz = c.PostBytes("/v1/modules/gzip/call/decompress", "nope");
  EXPECT_EQ(gz.status, 422);
  EXPECT_THAT(gz.body, HasSubstr("decompress: not gzip data"));
  // The replaced instances serve the next calls.
  EXPECT_EQ(c.PostBytes("/v1/modules/regexp/call/replace", R"({"pattern":"a","text":"aa","replacement":"b"})").body,
            R"({"text":"bb","replaced":2})");
}

TEST_F(GuestsHttpTest, UploadedReadmeExamplesAreCallable) {
  Client c = Connect();
  Reply put = c.Put("/v1/modules/my-guest", ReadBytes(std::string(KEEL_README_DIR) + "/my_guest.wasm"));
  ASSERT_EQ(put.status, 201) << put.body;
  std::vector<std::string> byte_exports;
  json::value module = put.json();
  for (const auto& e : module.at("exports").as_array()) {
    if (e.at("byte_callable").as_bool()) byte_exports.emplace_back(e.at("name").as_string());
  }
  EXPECT_THAT(byte_exports, ::testing::IsSupersetOf({"shout", "total"}));

  EXPECT_EQ(c.PostBytes("/v1/modules/my-guest/call/shout", "hello").body, "HELLO");
  Reply total = c.Send(http::verb::post, "/v1/modules/my-guest/call/total",
                       R"({"items":[{"name":"tea","price_cents":250,"quantity":2}]})", "application/octet-stream");
  EXPECT_EQ(total.status, 200);
  EXPECT_EQ(total.body, R"({"items":1,"total_cents":500})");
  Reply sum = c.PostJson("/v1/modules/my-guest/call/add", R"({"args":[2,3]})");
  EXPECT_EQ(sum.status, 200);
  EXPECT_EQ(sum.json().at("results").as_array().at(0), 5);
  Reply zero = c.PostBytes("/v1/modules/my-guest/call/total", R"({"items":[{"name":"x","price_cents":1,"quantity":0}]})");
  EXPECT_EQ(zero.status, 422);
  EXPECT_THAT(zero.body, HasSubstr("total: item \\\"x\\\" has quantity 0"));

  // The C++ example, the same way.
  ASSERT_EQ(c.Put("/v1/modules/upper", ReadBytes(std::string(KEEL_README_DIR) + "/readme_upper.wasm")).status, 201);
  EXPECT_EQ(c.PostBytes("/v1/modules/upper/call/upper", "shout").body, "SHOUT");
  EXPECT_EQ(c.PostBytes("/v1/modules/upper/call/reverse", "abc").body, "cba");
  Reply empty = c.PostBytes("/v1/modules/upper/call/non_empty", "");
  EXPECT_EQ(empty.status, 422);
  EXPECT_THAT(empty.body, HasSubstr("non_empty: empty input"));
}

}  // namespace
}  // namespace keel::server
