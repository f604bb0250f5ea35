// The service over real sockets: every route and error code, auth, limits,
// the disconnect-detach behaviour, jobs, persistence and draining.
#include "server/server.h"

#include <atomic>
#include <filesystem>
#include <fstream>
#include <future>
#include <set>
#include <thread>

#include <boost/json.hpp>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "base/sha256.h"
#include "server/service.h"
#include "server/test_util.h"

namespace keel::server {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;
using ::testing::StartsWith;
using testing::Client;
using testing::Eventually;
using testing::Fixture;
using testing::Gate;
using testing::Guest;
using testing::RawSocket;
using testing::ReadBytes;
using testing::Reply;
using testing::TempDir;
using testing::TestOptions;
namespace json = boost::json;
namespace http = boost::beast::http;

// A JSON string's text ("" for anything else).
std::string S(const json::value& v) { return v.is_string() ? std::string(v.as_string()) : ""; }

using ServerTest = testing::ServerTestBase;

TEST_F(ServerTest, HealthReadyAndUnknownRoutes) {
  Start();
  Client c(port());
  Reply r = c.Get("/healthz");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "{\"status\":\"ok\"}\n");
  EXPECT_EQ(c.Get("/readyz").status, 200);
  r = c.Get("/nope");
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(r.error_code(), "not_found");
  EXPECT_EQ(r.header(http::field::content_type), "application/json");
  EXPECT_EQ(c.Get("/v1/").status, 404);
  EXPECT_EQ(c.Get("/v1/modules/add/extra/stuff").status, 404);
  EXPECT_EQ(c.Get("/v1/modules/%zz").status, 400);
  r = c.Get("/");
  EXPECT_EQ(r.status, 200);
  EXPECT_THAT(r.header(http::field::content_type), StartsWith("text/html"));
  EXPECT_THAT(r.body, HasSubstr("<canvas id=\"c-throughput\""));
}

TEST_F(ServerTest, ModuleLifecycle) {
  Start();
  Client c(port());
  std::vector<uint8_t> bytes = ReadBytes(Guest("sha256"));
  Reply r = c.Put("/v1/modules/digest-me", bytes);
  ASSERT_EQ(r.status, 201) << r.body;
  json::object m = r.json().as_object();
  EXPECT_EQ(m["name"], "digest-me");
  EXPECT_EQ(S(m["digest"]), Sha256Hex(bytes));
  EXPECT_EQ(m["source"], "upload");
  bool found_hash = false;
  for (const auto& e : m["exports"].as_array()) {
    if (e.at("name") == "hash") {
      found_hash = true;
      EXPECT_EQ(e.at("type"), "(i32, i32) -> (i32)");
      EXPECT_EQ(e.at("byte_callable"), true);
    }
  }
  EXPECT_TRUE(found_hash);
  EXPECT_TRUE(m.contains("imports"));
  EXPECT_TRUE(m.contains("pool"));

  EXPECT_EQ(c.Put("/v1/modules/digest-me", bytes).status, 200);  // same bytes again
  r = c.Get("/v1/modules");
  ASSERT_EQ(r.status, 200);
  std::vector<std::string> names;
  json::value list = r.json();
  for (const auto& e : list.at("modules").as_array()) names.emplace_back(e.at("name").as_string());
  EXPECT_THAT(names, ::testing::IsSupersetOf({"add", "digest-me", "sha256", "json_transform", "wordfreq", "template"}));
  EXPECT_THAT(names, ::testing::Not(::testing::Contains(StartsWith("hostile_"))));

  r = c.Get("/v1/modules/digest-me");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(S(r.json().at("digest")), Sha256Hex(bytes));
  EXPECT_EQ(c.PostBytes("/v1/modules/digest-me/call/hash", "abc").body,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");

  // Replacing the bytes under a name: new calls use the new module.
  ASSERT_EQ(c.Put("/v1/modules/digest-me", ReadBytes(Guest("add"))).status, 200);
  EXPECT_EQ(c.PostBytes("/v1/modules/digest-me/call/echo", "abc").body, "abc");

  r = c.Send(http::verb::delete_, "/v1/modules/digest-me");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.json().at("deleted"), true);
  r = c.Get("/v1/modules/digest-me");
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(r.error_code(), "not_found");
  EXPECT_EQ(c.Send(http::verb::delete_, "/v1/modules/digest-me").status, 404);
  EXPECT_EQ(c.PostBytes("/v1/modules/digest-me/call/echo", "abc").status, 404);
}

TEST_F(ServerTest, RejectsModulesItCannotRun) {
  Start();
  Client c(port());
  Reply r = c.Put("/v1/modules/junk", std::vector<uint8_t>{'\x7f', 'E', 'L', 'F'});
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.error_code(), "invalid_module");
  r = c.Put("/v1/modules/host", ReadBytes(Fixture("engine_host")));  // imports host.mix
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.error_code(), "link_error");
  r = c.Put("/v1/modules/.hidden", ReadBytes(Guest("add")));
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.error_code(), "invalid_argument");
  EXPECT_EQ(c.Get("/v1/modules/junk").status, 404);
}

TEST_F(ServerTest, NumericCallsAreExact) {
  Start();
  Upload("values", Fixture("server_values"));
  Client c(port());
  auto call = [&](const std::string& fn, const std::string& args) {
    return c.PostJson("/v1/modules/values/call/" + fn, "{\"args\": " + args + "}");
  };
  EXPECT_EQ(c.PostJson("/v1/modules/add/call/add", "{\"args\":[40,2]}").body, "{\"results\":[42]}\n");
  EXPECT_EQ(call("id_i32", "[4294967295]").body, "{\"results\":[-1]}\n");
  EXPECT_EQ(call("id_i32", "[\"0x7fffffff\"]").body, "{\"results\":[2147483647]}\n");
  EXPECT_EQ(call("id_i64", "[9007199254740993]").body, "{\"results\":[\"9007199254740993\"]}\n");
  EXPECT_EQ(call("id_i64", "[\"-9223372036854775808\"]").body, "{\"results\":[\"-9223372036854775808\"]}\n");
  EXPECT_EQ(call("id_f64", "[0.1]").body, "{\"results\":[0.1]}\n");
  EXPECT_EQ(call("id_f64", "[1e308]").body, "{\"results\":[1e+308]}\n");
  EXPECT_EQ(call("id_f64", "[\"nan\"]").body, "{\"results\":[\"nan\"]}\n");
  EXPECT_EQ(call("id_f64", "[\"-inf\"]").body, "{\"results\":[\"-inf\"]}\n");
  EXPECT_EQ(call("id_f64", "[-0.0]").body, "{\"results\":[-0]}\n");
  EXPECT_EQ(call("id_f32", "[0.1]").body, "{\"results\":[0.1]}\n");
  EXPECT_EQ(call("id_f32", "[16777217]").body, "{\"results\":[16777216]}\n");  // rounded once, to f32
  EXPECT_EQ(call("swap", "[-7, \"-9223372036854775808\", -0, 0.1]").body,
            "{\"results\":[0.1,-0,\"-9223372036854775808\",-7]}\n");
  EXPECT_EQ(c.PostJson("/v1/modules/values/call/nothing", "").body, "{\"results\":[]}\n");
  EXPECT_EQ(c.PostJson("/v1/modules/values/call/nothing", "{}").body, "{\"results\":[]}\n");
  Reply r = call("id_i32", "[1]");
  EXPECT_FALSE(r.headers["X-Keel-Call-Id"].empty());
}

TEST_F(ServerTest, MalformedArgumentsAre400) {
  Start();
  Upload("values", Fixture("server_values"));
  Client c(port());
  for (const std::string& body : {std::string("{\"args\": [1, 2"), std::string("[1, 2]"), std::string("{\"args\": 3}"),
                                  std::string("{\"args\": [1]}"), std::string("{\"args\": [1, 2, 3]}"),
                                  std::string("{\"args\": [true, 2]}"), std::string("{\"args\": [1.5, 2]}"),
                                  std::string("{\"args\": [\"x\", 2]}"), std::string("{\"args\": [4294967296, 2]}"),
                                  std::string("{\"args\": [null, 2]}"), std::string("{\"args\": [[1], 2]}"),
                                  std::string("{\"args\": [1, 2]} trailing")}) {
    Reply r = c.PostJson("/v1/modules/add/call/add", body);
    EXPECT_EQ(r.status, 400) << body;
    EXPECT_EQ(r.error_code(), "invalid_argument") << body;
  }
  // Integer exports do not take fractions; float exports take integers.
  EXPECT_EQ(c.PostJson("/v1/modules/values/call/id_i64", "{\"args\": [1e3]}").status, 400);
  EXPECT_EQ(c.PostJson("/v1/modules/values/call/id_f64", "{\"args\": [3]}").body, "{\"results\":[3]}\n");
  // A numeric export called with bytes does not fit the byte convention.
  Reply r = c.PostBytes("/v1/modules/values/call/id_i32", "abc");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.error_code(), "invalid_argument");
}

TEST_F(ServerTest, ByteCalls) {
  Start();
  Client c(port());
  Reply r = c.PostBytes("/v1/modules/sha256/call/hash", "abc");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.header(http::field::content_type), "application/octet-stream");
  EXPECT_EQ(r.body, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  std::string big(3 << 20, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 7919 % 251);
  r = c.PostBytes("/v1/modules/add/call/echo", big);
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(r.body == big);
  EXPECT_EQ(c.PostBytes("/v1/modules/add/call/echo", "").body, "");
  EXPECT_EQ(c.PostBytes("/v1/modules/json_transform/call/transform", "{\"b\":1,\"a\":[true]}").body,
            "{\"a\":[true],\"b\":1}");
}

TEST_F(ServerTest, CallErrors) {
  Start([](ServerOptions& o) { o.max_call_timeout = 300ms; });
  Upload("post_trap", Guest("hostile_post_trap"));
  Upload("loop", Guest("hostile_loop"));
  Upload("values", Fixture("server_values"));
  Client c(port());
  Reply r = c.PostBytes("/v1/modules/missing/call/x", "");
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(r.error_code(), "not_found");
  r = c.PostBytes("/v1/modules/add/call/missing", "");
  EXPECT_EQ(r.status, 404);
  EXPECT_THAT(r.body, HasSubstr("no function export 'missing'"));
  EXPECT_EQ(c.PostBytes("/v1/modules/add/call/memory", "").status, 404);  // not a function

  r = c.PostBytes("/v1/modules/post_trap/call/fail", "x");
  EXPECT_EQ(r.status, 422);
  EXPECT_EQ(r.error_code(), "trap");
  json::object e = r.json().at("error").as_object();
  EXPECT_EQ(e["trap"], "unreachable");
  EXPECT_TRUE(e["call_id"].is_number());
  r = c.PostJson("/v1/modules/values/call/div", "{\"args\": [1, 0]}");
  EXPECT_EQ(r.status, 422);
  EXPECT_EQ(r.json().at("error").at("trap"), "integer_divide_by_zero");

  auto before = std::chrono::steady_clock::now();
  r = c.PostJson("/v1/modules/loop/call/spin?timeout=100ms", "{}");
  EXPECT_EQ(r.status, 504);
  EXPECT_EQ(r.error_code(), "deadline_exceeded");
  EXPECT_LT(std::chrono::steady_clock::now() - before, 3s);
  // The server's maximum caps what a client asks for.
  EXPECT_EQ(c.PostJson("/v1/modules/loop/call/spin?timeout=1h", "{}").status, 504);

  EXPECT_EQ(c.PostJson("/v1/modules/add/call/add?timeout=soon", "{\"args\":[1,2]}").status, 400);
  EXPECT_EQ(c.PostJson("/v1/modules/add/call/add?timeout=0ms", "{\"args\":[1,2]}").status, 400);
  EXPECT_EQ(c.PostJson("/v1/modules/add/call/add?timeout=250ms", "{\"args\":[1,2]}").status, 200);

  // Abnormal ends are counted by cause and listed in the status data.
  MetricsSnapshot m = Metrics();
  EXPECT_EQ(m.resolved.traps[static_cast<size_t>(TrapKind::kUnreachable)], 1u);
  EXPECT_EQ(m.resolved.deadline_running, 2u);
  json::value status = c.Get("/v1/status").json();
  std::vector<std::string> causes;
  for (const auto& t : status.at("recent").as_array()) causes.emplace_back(t.at("cause").as_string());
  EXPECT_THAT(causes, ::testing::IsSupersetOf({"trap", "deadline"}));
}

TEST_F(ServerTest, OverloadedIs429) {
  Start([](ServerOptions& o) {
    o.instances = 1;
    o.max_queue = 1;
  });
  Upload("gate", Guest("hostile_gate"));
  auto running = std::async(std::launch::async, [&] { return Client(port()).PostBytes("/v1/modules/gate/call/gated_echo", "a"); });
  ASSERT_TRUE(gate_.WaitEntered(1));
  auto queued = std::async(std::launch::async, [&] { return Client(port()).PostBytes("/v1/modules/gate/call/gated_echo", "b"); });
  ASSERT_TRUE(Eventually([&] { return Metrics().queued == 1; }));
  Reply r = Client(port()).PostBytes("/v1/modules/gate/call/gated_echo", "c");
  EXPECT_EQ(r.status, 429);
  EXPECT_EQ(r.error_code(), "overloaded");
  EXPECT_EQ(r.header(http::field::retry_after), "1");
  gate_.Open();
  EXPECT_EQ(running.get().body, "a");
  EXPECT_EQ(queued.get().body, "b");
}

TEST_F(ServerTest, ModuleWhoseStartFunctionTrapsIsRefusedAtUpload) {
  Start();
  Client c(port());
  Reply r = c.Put("/v1/modules/bad_start", ReadBytes(Fixture("server_bad_start")));
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.error_code(), "invalid_module");
  EXPECT_THAT(r.body, HasSubstr("start function"));
  EXPECT_THAT(r.body, HasSubstr("unreachable"));
  EXPECT_EQ(c.Get("/v1/modules/bad_start").status, 404);
  EXPECT_EQ(c.PostJson("/v1/modules/add/call/add", R"({"args":[1,2]})").status, 200);
}

TEST_F(ServerTest, MethodNotAllowed) {
  Start();
  Client c(port());
  struct Case {
    http::verb method;
    std::string target;
    std::string allow;
  };
  for (const Case& k : {Case{http::verb::post, "/v1/modules", "GET, HEAD"},
                        Case{http::verb::patch, "/v1/modules/add", "GET, HEAD, PUT, DELETE"},
                        Case{http::verb::get, "/v1/modules/add/call/add", "POST"},
                        Case{http::verb::head, "/v1/modules/add/call/add", "POST"},
                        Case{http::verb::delete_, "/v1/jobs", "GET, HEAD, POST"},
                        Case{http::verb::put, "/v1/jobs/x", "GET, HEAD, DELETE"},
                        Case{http::verb::post, "/v1/jobs/x/result", "GET, HEAD"},
                        Case{http::verb::post, "/metrics", "GET, HEAD"}}) {
    Reply r = c.Send(k.method, k.target);
    EXPECT_EQ(r.status, 405) << k.target;
    EXPECT_EQ(r.header(http::field::allow), k.allow) << k.target;
  }
}

TEST_F(ServerTest, BodyOverLimitIs413) {
  Start([](ServerOptions& o) {
    o.max_body_bytes = 1024;
    o.max_module_bytes = 64 << 10;
  });
  Client c(port());
  Reply r = c.PostBytes("/v1/modules/add/call/echo", std::string(2048, 'x'));
  EXPECT_EQ(r.status, 413);
  EXPECT_EQ(r.error_code(), "resource_exhausted");
  EXPECT_EQ(c.PostBytes("/v1/modules/add/call/echo", std::string(1024, 'x')).status, 200);
  // Without Content-Length (chunked), the limit is found while reading.
  RawSocket s(port());
  std::string chunk(1500, 'y');
  char size[16];
  std::snprintf(size, sizeof size, "%zx", chunk.size());
  s.Write("POST /v1/modules/add/call/echo HTTP/1.1\r\n" + HostLine() + "Transfer-Encoding: chunked\r\n\r\n" +
          std::string(size) + "\r\n" + chunk + "\r\n0\r\n\r\n");
  EXPECT_THAT(s.ReadAll(), StartsWith("HTTP/1.1 413"));
  // Module uploads have their own limit.
  r = Client(port()).Put("/v1/modules/big", std::vector<uint8_t>(70 << 10, 0));
  EXPECT_EQ(r.status, 413);
  r = Client(port()).Put("/v1/modules/add2", ReadBytes(Guest("add")));
  EXPECT_EQ(r.status, 201);
}

TEST_F(ServerTest, HeaderOverLimitIs431) {
  Start([](ServerOptions& o) { o.max_header_bytes = 4096; });
  Reply r = Client(port()).Send(http::verb::get, "/healthz", "", "", {{"X-Big", std::string(8192, 'h')}});
  EXPECT_EQ(r.status, 431);
  EXPECT_EQ(Client(port()).Get("/healthz").status, 200);
}

TEST_F(ServerTest, MalformedRequestsAre400) {
  Start();
  for (const std::string& junk : {std::string("GARBAGE\r\n\r\n"), std::string("GET / HTTP/9.9\r\n\r\n"),
                                  std::string("GET / HTTP/1.1\r\nBad Header\r\n\r\n"),
                                  std::string("POST /v1/jobs HTTP/1.1\r\nContent-Length: nope\r\n\r\n")}) {
    RawSocket s(port());
    s.Write(junk);
    EXPECT_THAT(s.ReadAll(), StartsWith("HTTP/1.1 400")) << junk;
  }
  EXPECT_GE(Http().responses.size(), 1u);
}

TEST_F(ServerTest, KeepAliveAndPipelining) {
  Start();
  Client c(port());
  for (int i = 0; i < 20; ++i) EXPECT_EQ(c.PostJson("/v1/modules/add/call/add", "{\"args\":[1,1]}").status, 200);
  EXPECT_FALSE(c.closed());
  EXPECT_EQ(Http().connections_accepted, 1u);
  // Two requests in one write: both answered, in order.
  RawSocket s(port());
  std::string body = "{\"args\":[2,3]}";
  std::string one = "POST /v1/modules/add/call/add HTTP/1.1\r\n" + HostLine() + "Content-Type: application/json\r\n"
                    "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  s.Write(one + one);
  std::string out = s.ReadUntil("{\"results\":[5]}\n", 5s);
  out += s.ReadUntil("{\"results\":[5]}\n", 2s);
  size_t first = out.find("{\"results\":[5]}");
  ASSERT_NE(first, std::string::npos) << out;
  EXPECT_NE(out.find("{\"results\":[5]}", first + 1), std::string::npos) << out;
}

TEST_F(ServerTest, ExpectContinueAndHttp10) {
  Start();
  RawSocket s(port());
  s.Write("POST /v1/modules/add/call/echo HTTP/1.1\r\n" + HostLine() + "Content-Length: 5\r\nExpect: 100-continue\r\n\r\n");
  EXPECT_THAT(s.ReadUntil("\r\n\r\n"), StartsWith("HTTP/1.1 100 Continue"));
  s.Write("hello");
  EXPECT_THAT(s.ReadUntil("hello"), ::testing::AllOf(StartsWith("HTTP/1.1 200"), HasSubstr("hello")));
  // HTTP/1.0 without keep-alive: answered in 1.0, then closed.
  RawSocket old(port());
  old.Write("GET /healthz HTTP/1.0\r\n\r\n");
  std::string out = old.ReadAll();
  EXPECT_THAT(out, StartsWith("HTTP/1.0 200"));
  EXPECT_THAT(out, HasSubstr("{\"status\":\"ok\"}"));
}

TEST_F(ServerTest, BearerTokenGuardsV1) {
  Start([](ServerOptions& o) { o.token = "s3cret-token"; });
  Reply r = Client(port()).Get("/v1/modules");
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(r.header(http::field::www_authenticate), "Bearer");
  EXPECT_EQ(Client(port(), "wrong").Get("/v1/modules").status, 401);
  EXPECT_EQ(Client(port(), "s3cret-token-and-more").Get("/v1/modules").status, 401);
  EXPECT_EQ(Client(port(), "s3cret-token").Get("/v1/modules").status, 200);
  EXPECT_EQ(Client(port()).Send(http::verb::get, "/v1/status", "", "", {{"Authorization", "bearer s3cret-token"}}).status,
            200);
  // A refused upload is not read.
  r = Client(port()).Put("/v1/modules/x", ReadBytes(Guest("add")));
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(Client(port(), "s3cret-token").PostJson("/v1/modules/add/call/add", "{\"args\":[1,2]}").status, 200);
  // Health and the page itself stay open; the page's data and the metrics
  // (which name every module) do not.
  EXPECT_EQ(Client(port()).Get("/healthz").status, 200);
  EXPECT_EQ(Client(port()).Get("/readyz").status, 200);
  EXPECT_EQ(Client(port()).Get("/").status, 200);
  EXPECT_EQ(Client(port()).Get("/v1/status").status, 401);
  EXPECT_EQ(Client(port()).Get("/metrics").status, 401);
  EXPECT_EQ(Client(port(), "s3cret-token").Get("/metrics").status, 200);
}

TEST_F(ServerTest, RefusesNonLoopbackWithoutToken) {
  ServerOptions o = TestOptions(dir_.path());
  o.listen = "0.0.0.0:0";
  auto refused = Server::Start(o);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, ErrorCode::kInvalidArgument);
  EXPECT_THAT(refused.error().message, HasSubstr("token"));
  o.listen = "[::1]:0";
  auto v6 = Server::Start(o);
  if (v6) (*v6)->Shutdown(0ms);  // loopback is fine (if this host has IPv6)
  o.listen = "0.0.0.0:0";
  o.token = "t";
  auto allowed = Server::Start(o);
  ASSERT_TRUE(allowed) << allowed.error().ToString();
  (*allowed)->Shutdown(0ms);
}

// A client that goes away while its call runs detaches the call: the call
// finishes, its result goes to the detached sink, and the instance stays
// healthy.
TEST_F(ServerTest, DisconnectDetachesRunningCall) {
  Start([](ServerOptions& o) { o.instances = 1; });
  Upload("gate", Guest("hostile_gate"));
  {
    RawSocket s(port());
    s.Write("POST /v1/modules/gate/call/gated_echo HTTP/1.1\r\n" + HostLine() + "Content-Length: 5\r\n\r\nhello");
    ASSERT_TRUE(gate_.WaitEntered(1));
  }  // closed while the guest is inside phase one
  ASSERT_TRUE(Eventually([&] { return Http().disconnect_detached == 1; }));
  EXPECT_EQ(Metrics().resolved.detached, 1u);
  EXPECT_EQ(Metrics().running, 1);  // still running: detached, not interrupted
  gate_.Open();
  ASSERT_TRUE(Eventually([&] { return Http().detached_results == 1; }));
  MetricsSnapshot m = Metrics();
  EXPECT_EQ(m.detached_results, 1u);
  EXPECT_EQ(m.runs.run_ok, 1u);
  EXPECT_EQ(m.instances.poisoned, 0u);
  EXPECT_EQ(m.runs.run_interrupted, 0u);
  // The same instance serves the next call.
  Reply r = Client(port()).PostBytes("/v1/modules/gate/call/gated_echo", "again");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "again");
  EXPECT_EQ(Metrics().instances.created, Metrics().instances_live);
  std::string metrics = Client(port()).Get("/metrics").body;
  EXPECT_THAT(metrics, HasSubstr("keel_http_client_disconnects_total{call=\"detached\"} 1\n"));
  EXPECT_THAT(metrics, HasSubstr("keel_calls_resolved_total{cause=\"detached\"} 1\n"));
  EXPECT_THAT(metrics, HasSubstr("keel_detached_results_total 1\n"));
  json::value status = Client(port()).Get("/v1/status").json();
  EXPECT_EQ(status.at("recent").as_array().at(0).at("cause"), "detached");
}

TEST_F(ServerTest, DisconnectWithdrawsQueuedCall) {
  Start([](ServerOptions& o) { o.instances = 1; });
  Upload("gate", Guest("hostile_gate"));
  auto blocker = std::async(std::launch::async, [&] { return Client(port()).PostBytes("/v1/modules/gate/call/gated_echo", "a"); });
  ASSERT_TRUE(gate_.WaitEntered(1));
  {
    RawSocket s(port());
    s.Write("POST /v1/modules/gate/call/gated_echo HTTP/1.1\r\n" + HostLine() + "Content-Length: 1\r\n\r\nb");
    ASSERT_TRUE(Eventually([&] { return Metrics().queued == 1; }));
  }
  ASSERT_TRUE(Eventually([&] { return Http().disconnect_withdrawn == 1; }));
  EXPECT_EQ(Metrics().resolved.cancelled_queued, 1u);
  gate_.Open();
  EXPECT_EQ(blocker.get().body, "a");
  EXPECT_EQ(Metrics().runs.started, 1u);  // the withdrawn call never ran
  EXPECT_EQ(gate_.entered(), 2);          // phase one and post-return of the first call only
}

TEST_F(ServerTest, SlowClientsAreCutOff) {
  Start([](ServerOptions& o) {
    o.header_timeout = 200ms;
    o.idle_timeout = 300ms;
  });
  RawSocket slow(port());
  slow.Write("GET /healthz HTTP/1.1\r\n" + HostLine());  // never finishes the header
  EXPECT_TRUE(slow.WaitClosed(3s));
  RawSocket idle(port());
  EXPECT_TRUE(idle.WaitClosed(3s));
  EXPECT_GE(Http().timeouts, 2u);
}

TEST_F(ServerTest, ConnectionLimit) {
  Start([](ServerOptions& o) { o.max_connections = 2; });
  Client a(port()), b(port());
  EXPECT_EQ(a.Get("/healthz").status, 200);
  EXPECT_EQ(b.Get("/healthz").status, 200);
  RawSocket third(port());
  EXPECT_THAT(third.ReadAll(3s), StartsWith("HTTP/1.1 503"));
  EXPECT_EQ(Http().connections_rejected, 1u);
  EXPECT_EQ(a.Get("/healthz").status, 200);
}

TEST_F(ServerTest, Jobs) {
  Start();
  Client c(port());
  Reply r = c.PostJson("/v1/jobs", R"({"module": "sha256", "export": "hash", "input_base64": "YWJj",
                                     "timeout_ms": 5000, "idempotency_key": "k1", "max_attempts": 2})");
  ASSERT_EQ(r.status, 202) << r.body;
  std::string id(r.json().at("id").as_string());
  EXPECT_EQ(r.header(http::field::location), "/v1/jobs/" + id);
  ASSERT_TRUE(Eventually([&] { return c.Get("/v1/jobs/" + id).json().at("state") == "succeeded"; }));
  json::value job = c.Get("/v1/jobs/" + id).json();
  EXPECT_EQ(job.at("export"), "hash");
  EXPECT_EQ(job.at("attempts"), 1);
  EXPECT_EQ(job.at("max_attempts"), 2);
  EXPECT_EQ(job.at("result_bytes"), 64);
  r = c.Get("/v1/jobs/" + id + "/result");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");

  // The same job under the same idempotency key is that job; other work
  // under it is a conflict naming the job the key holds.
  r = c.PostJson("/v1/jobs", R"({"module": "sha256", "export": "hash", "input_base64": "YWJj",
                               "timeout_ms": 5000, "idempotency_key": "k1", "max_attempts": 2})");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(S(r.json().at("id")), id);
  EXPECT_EQ(r.json().at("created"), false);
  std::string digest = Sha256Hex(ReadBytes(Guest("sha256")));
  EXPECT_EQ(S(r.json().at("module_digest")), digest);
  for (const std::string& other :
       {std::string(R"({"module": "sha256", "export": "hash", "idempotency_key": "k1"})"),
        std::string(R"({"module": "add", "export": "echo", "input_base64": "YWJj",
                        "timeout_ms": 5000, "idempotency_key": "k1", "max_attempts": 2})")}) {
    r = c.PostJson("/v1/jobs", other);
    EXPECT_EQ(r.status, 409) << other;
    EXPECT_EQ(r.error_code(), "already_exists");
    EXPECT_EQ(S(r.json().at("error").at("id")), id);
    EXPECT_EQ(S(r.json().at("error").at("module_digest")), digest);
  }
  // A NUL in a key is refused, not cut short (which made "k1\u0000x" name k1).
  r = c.PostJson("/v1/jobs", R"({"module": "sha256", "export": "hash", "idempotency_key": "k1\u0000x"})");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.error_code(), "invalid_argument");
  EXPECT_THAT(S(r.json().at("error").at("message")), HasSubstr("NUL"));
  EXPECT_THAT(S(c.Get("/v1/jobs/" + id).json().at("started_at")), ::testing::Not(::testing::IsEmpty()));

  r = c.Get("/v1/jobs?state=succeeded&limit=10");
  ASSERT_EQ(r.status, 200);
  ASSERT_EQ(r.json().at("jobs").as_array().size(), 1u);
  EXPECT_EQ(S(r.json().at("jobs").at(0).at("id")), id);
  EXPECT_EQ(c.Get("/v1/jobs?state=queued").json().at("jobs").as_array().size(), 0u);
  EXPECT_EQ(c.Get("/v1/jobs?state=bogus").status, 400);
  EXPECT_EQ(c.Get("/v1/jobs?limit=0").status, 400);

  r = c.Send(http::verb::delete_, "/v1/jobs/" + id);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.json().at("outcome"), "too_late");
  EXPECT_EQ(c.Get("/v1/jobs/nope").status, 404);
  EXPECT_EQ(c.Get("/v1/jobs/nope/result").status, 404);
  EXPECT_EQ(c.Send(http::verb::delete_, "/v1/jobs/nope").status, 404);

  // A failing job: its result is refused with the job's error.
  r = c.PostJson("/v1/jobs", R"({"module": "json_transform", "export": "transform", "input_base64": "e30s",
                               "max_attempts": 1})");
  ASSERT_EQ(r.status, 202);
  std::string failed(r.json().at("id").as_string());
  // A trap may be retried, so with one attempt it ends dead.
  ASSERT_TRUE(Eventually([&] { return c.Get("/v1/jobs/" + failed).json().at("state") == "dead"; }));
  r = c.Get("/v1/jobs/" + failed + "/result");
  EXPECT_EQ(r.status, 409);
  EXPECT_EQ(r.error_code(), "failed_precondition");
  EXPECT_EQ(r.json().at("error").at("state"), "dead");
  EXPECT_EQ(c.Get("/v1/jobs/" + failed).json().at("error").at("code"), "trap");

  // Bad submissions.
  for (const std::string& body : {std::string(R"({"module": "nope", "export": "hash"})"),
                                  std::string(R"({"module": "sha256", "export": "nope"})")}) {
    EXPECT_EQ(c.PostJson("/v1/jobs", body).status, 404) << body;
  }
  for (const std::string& body :
       {std::string("{"), std::string("[]"), std::string(R"({"export": "hash"})"),
        std::string(R"({"module": "sha256"})"), std::string(R"({"module": "sha256", "export": "hash", "input_base64": "@@"})"),
        std::string(R"({"module": "sha256", "export": "hash", "timeout_ms": 0})"),
        std::string(R"({"module": "sha256", "export": "hash", "timeout_ms": 900001})"),
        std::string(R"({"module": "sha256", "export": "hash", "max_attempts": "3"})"),
        std::string(R"({"module": "sha256", "export": "hash", "bogus": 1})"),
        std::string(R"({"module": "add", "export": "fib"})")}) {
    Reply bad = c.PostJson("/v1/jobs", body);
    EXPECT_EQ(bad.status, 400) << body;
    EXPECT_EQ(bad.error_code(), "invalid_argument") << body;
  }
}

TEST_F(ServerTest, JobsRunTheModuleTheyWereSubmittedWith) {
  Start();
  Upload("m", Guest("sha256"));
  std::string old_digest = Sha256Hex(ReadBytes(Guest("sha256")));
  Upload("m", Guest("add"));
  Client c(port());
  // By digest: the replaced bytes still run, from the store.
  Reply r = c.PostJson("/v1/jobs", "{\"module_digest\": \"" + old_digest + "\", \"export\": \"hash\", \"input_base64\": \"YWJj\"}");
  ASSERT_EQ(r.status, 202) << r.body;
  std::string id(r.json().at("id").as_string());
  ASSERT_TRUE(Eventually([&] { return c.Get("/v1/jobs/" + id).json().at("state") == "succeeded"; }));
  EXPECT_EQ(c.Get("/v1/jobs/" + id + "/result").body,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  auto pool = server_->service().registry().PoolForDigest(old_digest);
  ASSERT_TRUE(pool);
  EXPECT_EQ((*pool)->module()->digest(), old_digest);
  r = c.PostJson("/v1/jobs", "{\"module_digest\": \"" + std::string(64, 'a') + "\", \"export\": \"hash\"}");
  EXPECT_EQ(r.status, 404);
}

TEST_F(ServerTest, CancelQueuedJob) {
  Start([](ServerOptions& o) { o.instances = 1; });
  Upload("gate", Guest("hostile_gate"));
  Client c(port());
  Reply r = c.PostJson("/v1/jobs", R"({"module": "gate", "export": "gated_echo", "input_base64": "YQ=="})");
  ASSERT_EQ(r.status, 202);
  std::string running(r.json().at("id").as_string());
  ASSERT_TRUE(gate_.WaitEntered(1));
  // The instance is busy: a second job waits (in the pool's queue or the
  // store's).
  r = c.PostJson("/v1/jobs", R"({"module": "gate", "export": "gated_echo", "input_base64": "Yg=="})");
  ASSERT_EQ(r.status, 202);
  std::string second(r.json().at("id").as_string());
  r = c.Send(http::verb::delete_, "/v1/jobs/" + running);
  EXPECT_EQ(r.json().at("outcome"), "detached");
  gate_.Open();
  ASSERT_TRUE(Eventually([&] { return c.Get("/v1/jobs/" + running).json().at("state") == "cancelled"; }));
  // A job cancelled while running keeps its result.
  EXPECT_EQ(c.Get("/v1/jobs/" + running + "/result").body, "a");
  ASSERT_TRUE(Eventually([&] { return c.Get("/v1/jobs/" + second).json().at("state") == "succeeded"; }));
}

// An operator's abort interrupts a running job at once, instead of letting
// it finish as a cancel does.
TEST_F(ServerTest, AbortRunningJob) {
  Start([](ServerOptions& o) { o.instances = 1; });
  Upload("gate", Guest("hostile_gate"));
  Client c(port());
  Reply r = c.PostJson("/v1/jobs", R"({"module": "gate", "export": "gated_echo", "input_base64": "YQ=="})");
  ASSERT_EQ(r.status, 202);
  std::string id(r.json().at("id").as_string());
  ASSERT_TRUE(gate_.WaitEntered(1));
  r = c.Send(http::verb::delete_, "/v1/jobs/" + id + "?abort=maybe");
  EXPECT_EQ(r.status, 400);
  EXPECT_THAT(r.body, HasSubstr("?abort= takes true or false"));
  r = c.Send(http::verb::delete_, "/v1/jobs/" + id + "?abort=true");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.json().at("outcome"), "aborted");
  // The gate never opened: the run was interrupted.
  ASSERT_TRUE(Eventually([&] { return c.Get("/v1/jobs/" + id).json().at("state") == "cancelled"; }));
  EXPECT_EQ(c.Get("/v1/jobs/" + id + "/result").status, 409);
  EXPECT_THAT(c.Get("/metrics").body, HasSubstr("keel_call_aborts_total 1\n"));
  // The instance was replaced; the next job runs on the new one.
  gate_.Open();
  r = c.PostJson("/v1/jobs", R"({"module": "gate", "export": "gated_echo", "input_base64": "Yg=="})");
  std::string next(r.json().at("id").as_string());
  ASSERT_TRUE(Eventually([&] { return c.Get("/v1/jobs/" + next).json().at("state") == "succeeded"; }));
  EXPECT_EQ(c.Get("/v1/jobs/" + next + "/result").body, "b");
  // Aborting a finished job is too late.
  EXPECT_EQ(c.Send(http::verb::delete_, "/v1/jobs/" + next + "?abort=true").json().at("outcome"), "too_late");
}

TEST_F(ServerTest, MetricsInPrometheusText) {
  Start();
  Client c(port());
  EXPECT_EQ(c.PostJson("/v1/modules/add/call/add", "{\"args\":[1,2]}").status, 200);
  Reply r = c.Get("/metrics");
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.header(http::field::content_type), "text/plain; version=0.0.4; charset=utf-8");
  for (const char* line :
       {"# TYPE keel_calls_submitted_total counter\n", "keel_calls_submitted_total 1\n",
        "keel_calls_resolved_total{cause=\"ok\"} 1\n", "keel_calls_resolved_total{cause=\"trap\"} 0\n",
        "keel_calls_trapped_total{kind=\"unreachable\"} 0\n", "keel_calls_rejected_total{reason=\"overloaded\"} 0\n",
        "# TYPE keel_call_seconds histogram\n", "keel_call_seconds_bucket{le=\"+Inf\"} 1\n", "keel_call_seconds_count 1\n",
        "keel_pool_instances{module=\"add\",digest=\"", "keel_jobs{state=\"queued\"} 0\n",
        "keel_job_attempts_total{outcome=\"claimed\"} 0\n", "keel_job_attempts_total{outcome=\"started\"} 0\n",
        "keel_job_attempts_total{outcome=\"released\"} 0\n", "keel_jobs_waiting 0\n", "keel_http_responses_total{code=\"200\"} 1\n",
        "keel_http_connections_open 1\n", "keel_draining 0\n", "keel_instance_events_total{event=\"poisoned\"} 0\n"}) {
    EXPECT_THAT(r.body, HasSubstr(line));
  }
}

TEST_F(ServerTest, StatusData) {
  Start();
  Client c(port());
  for (int i = 0; i < 10; ++i) c.PostJson("/v1/modules/add/call/add", "{\"args\":[1,2]}");
  ASSERT_TRUE(Eventually([&] { return c.Get("/v1/status").json().at("series").as_array().size() >= 2; }, 5s));
  json::value s = c.Get("/v1/status").json();
  EXPECT_EQ(s.at("draining"), false);
  bool add = false;
  for (const auto& p : s.at("pools").as_array()) {
    if (p.at("module") == "add") {
      add = true;
      EXPECT_EQ(p.at("target"), 2);
    }
  }
  EXPECT_TRUE(add);
  EXPECT_GE(s.at("runtime").at("ok").to_number<uint64_t>(), 10u);
  EXPECT_TRUE(s.at("jobs").as_object().contains("queued"));
}

TEST_F(ServerTest, UploadsSurviveRestart) {
  std::string digest = Sha256Hex(ReadBytes(Guest("wordfreq")));
  std::string job;
  {
    Start();
    Upload("words", Guest("wordfreq"));
    Reply r = Client(port()).PostJson("/v1/jobs", R"({"module": "words", "export": "count", "input_base64": "YSBiIGE="})");
    ASSERT_EQ(r.status, 202);
    job = std::string(r.json().at("id").as_string());
    ASSERT_TRUE(Eventually([&] { return Client(port()).Get("/v1/jobs/" + job).json().at("state") == "succeeded"; }));
    server_->Shutdown(1s);
    server_.reset();
  }
  Start();
  Client c(port());
  Reply r = c.Get("/v1/modules/words");
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(S(r.json().at("digest")), digest);
  EXPECT_EQ(r.json().at("source"), "upload");
  EXPECT_EQ(c.PostBytes("/v1/modules/words/call/count", "x y x").body, "x 2\ny 1\n");
  EXPECT_EQ(c.Get("/v1/jobs/" + job + "/result").body, "a 2\nb 1\n");
  // Deleting removes the persisted name too.
  EXPECT_EQ(c.Send(http::verb::delete_, "/v1/modules/words").status, 200);
  server_->Shutdown(1s);
  server_.reset();
  Start();
  EXPECT_EQ(Client(port()).Get("/v1/modules/words").status, 404);
}

// Names an older keel kept as files <data>/modules/<name> ("digest\nstate
// X") move into the store at start, policy and all, and stay there.
TEST_F(ServerTest, NameFilesOfAnOlderKeelMoveIntoTheStore) {
  const std::string digest = Sha256Hex(ReadBytes(Guest("wordfreq")));
  {
    Start();
    Upload("words", Guest("wordfreq"));  // puts the bytes in the store
    server_->Shutdown(1s);
    server_.reset();
  }
  std::filesystem::create_directories(dir_.path() + "/modules");
  std::ofstream(dir_.path() + "/modules/legacy") << digest << "\nstate keep\n";
  std::ofstream(dir_.path() + "/modules/no_digest") << "not a digest\n";
  for (int run = 0; run < 2; ++run) {
    Start();
    Reply r = Client(port()).Get("/v1/modules/legacy");
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(S(r.json().at("digest")), digest);
    EXPECT_EQ(r.json().at("state"), "keep");
    EXPECT_EQ(r.json().at("source"), "upload");
    EXPECT_EQ(Client(port()).PostBytes("/v1/modules/legacy/call/count", "x y x").body, "x 2\ny 1\n");
    EXPECT_EQ(Client(port()).Get("/v1/modules/no_digest").status, 404);
    server_->Shutdown(1s);
    server_.reset();
    // Moved aside once in the store; the file that was no name stays.
    EXPECT_FALSE(std::filesystem::exists(dir_.path() + "/modules/legacy"));
    EXPECT_TRUE(std::filesystem::exists(dir_.path() + "/modules.migrated/legacy"));
    EXPECT_TRUE(std::filesystem::exists(dir_.path() + "/modules/no_digest"));
  }
}

// Bytes that no name and no job refer to are deleted from the store; those
// a job refers to stay, and so do those of --modules names (not stored).
TEST_F(ServerTest, DeletingANameDeletesBytesNothingElseUses) {
  Start();
  auto stored = [&] {
    auto store = jobs::OpenStore(dir_.path());
    std::set<std::string> found;
    for (const char* guest : {"hostile_post_trap", "hostile_loop", "wordfreq"}) {
      if ((*store)->GetModule(Sha256Hex(ReadBytes(Guest(guest))))) found.insert(guest);
    }
    return found;
  };
  Upload("unused", Guest("hostile_post_trap"));
  Upload("loop", Guest("hostile_loop"));
  Upload("words", Guest("wordfreq"));  // also the --modules name "wordfreq"
  Reply r = Client(port()).PostJson(
      "/v1/jobs", R"({"module": "loop", "export": "spin_bytes", "timeout_ms": 50, "max_attempts": 1})");
  ASSERT_EQ(r.status, 202) << r.body;
  EXPECT_EQ(stored(), (std::set<std::string>{"hostile_post_trap", "hostile_loop", "wordfreq"}));
  Client c(port());
  for (const char* name : {"unused", "loop", "words"}) {
    EXPECT_EQ(c.Send(http::verb::delete_, std::string("/v1/modules/") + name).status, 200);
  }
  EXPECT_EQ(stored(), (std::set<std::string>{"hostile_loop", "wordfreq"}));
}

// A draining node claims no more jobs: one submitted afterwards is left in
// the queue for other nodes (here: a claim of the test's own).
TEST_F(ServerTest, DrainingNodeStopsClaiming) {
  Start();
  server_->service().SetDraining();
  jobs::JobStore& store = server_->service().store();
  jobs::JobSpec spec;
  spec.module_digest = Sha256Hex(ReadBytes(Guest("sha256")));
  spec.export_name = "hash";
  auto submitted = store.Submit(spec);
  ASSERT_TRUE(submitted) << submitted.error().ToString();
  auto claimed = store.Claim({.runner = "another-node", .max_jobs = 1, .lease = 30s, .wait = 10s});
  ASSERT_TRUE(claimed) << claimed.error().ToString();
  ASSERT_EQ(claimed->size(), 1u);
  EXPECT_EQ((*claimed)[0].id, submitted->id);
  EXPECT_EQ(Client(port()).Get("/readyz").status, 503);
}

TEST_F(ServerTest, ShutdownDrainsCallsInFlight) {
  Start();
  Upload("gate", Guest("hostile_gate"));
  auto held = std::async(std::launch::async, [&] {
    return Client(port()).PostBytes("/v1/modules/gate/call/gated_echo?timeout=30s", "drained whole");
  });
  // The call is running: its guest is blocked in the gate.
  ASSERT_TRUE(gate_.WaitEntered(1));
  Client idle(port());
  EXPECT_EQ(idle.Get("/healthz").status, 200);
  std::atomic<bool> released{false};
  auto stopping = std::async(std::launch::async, [&] {
    server_->Shutdown(30s);
    // Shutdown must not return before the gate let the call finish.
    return released.load();
  });
  ASSERT_TRUE(Eventually([&] { return server_->service().draining(); }));
  // New requests are refused while the call drains.
  Reply refused = idle.Get("/readyz");
  EXPECT_TRUE(refused.status == 503 || refused.status == 0) << refused.status;
  EXPECT_NE(stopping.wait_for(0s), std::future_status::ready) << "shutdown did not wait for the call";
  released.store(true);
  gate_.Open();
  Reply r = held.get();
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "drained whole");
  EXPECT_TRUE(stopping.get()) << "shutdown returned while the call was still held";
  EXPECT_EQ(Metrics().resolved.shutting_down, 0u);
  EXPECT_EQ(Metrics().resolved.ok, 1u);
}

TEST_F(ServerTest, ShutdownInterruptsAfterGrace) {
  Start();
  Upload("loop", Guest("hostile_loop"));
  auto slow = std::async(std::launch::async, [&] {
    return Client(port()).PostJson("/v1/modules/loop/call/spin?timeout=30s", "{}");
  });
  ASSERT_TRUE(Eventually([&] { return Metrics().running == 1; }));
  auto before = std::chrono::steady_clock::now();
  server_->Shutdown(200ms);
  EXPECT_LT(std::chrono::steady_clock::now() - before, 5s);
  Reply r = slow.get();
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.error_code(), "shutting_down");
}

// Isolation: with no setting, every call starts from the module's snapshot.
TEST_F(ServerTest, EveryCallSeesFreshStateByDefault) {
  // One instance per module, so that kept state shows from call to call.
  Start([](ServerOptions& o) { o.instances = 1; });
  Client c(port());
  std::vector<uint8_t> bytes = ReadBytes(Fixture("reset_guest"));
  Reply put = c.Put("/v1/modules/counter", bytes);
  ASSERT_EQ(put.status, 201) << put.body;
  EXPECT_EQ(put.json().at("state"), "reset");
  for (int i = 0; i < 40; ++i) {
    Reply bump = c.PostJson("/v1/modules/counter/call/bump", "{\"args\":[]}");
    ASSERT_EQ(bump.status, 200) << bump.body;
    ASSERT_EQ(bump.body, "{\"results\":[1101]}\n") << "call " << i << " saw an earlier call's state";
    Reply visit = c.PostJson("/v1/modules/counter/call/visit", "{\"args\":[" + std::to_string(7000 + i) + "]}");
    ASSERT_EQ(visit.body, "{\"results\":[0]}\n") << "call " << i << " saw the previous input";
  }
  EXPECT_EQ(c.Get("/v1/modules/counter").json().at("state"), "reset");
  ASSERT_TRUE(Eventually([&] {
    return c.Get("/metrics").body.find("keel_instance_resets_total{how=\"fresh_fallback\"} 0\n") !=
           std::string::npos;
  }, 5s));

  // keep: state carries over; the same bytes under another policy get a
  // pool of their own.
  ASSERT_EQ(c.Put("/v1/modules/session?state=keep", bytes).status, 201);
  EXPECT_EQ(c.Get("/v1/modules/session").json().at("state"), "keep");
  EXPECT_EQ(c.PostJson("/v1/modules/session/call/bump", "{\"args\":[]}").body, "{\"results\":[1101]}\n");
  EXPECT_EQ(c.PostJson("/v1/modules/session/call/bump", "{\"args\":[]}").body, "{\"results\":[2102]}\n");
  EXPECT_EQ(c.PostJson("/v1/modules/counter/call/bump", "{\"args\":[]}").body, "{\"results\":[1101]}\n");
  // Changing only the policy is a change.
  EXPECT_EQ(c.Put("/v1/modules/session?state=keep", bytes).status, 200);
  Reply fresh = c.Put("/v1/modules/session?state=fresh", bytes);
  ASSERT_EQ(fresh.status, 200);
  EXPECT_EQ(fresh.json().at("state"), "fresh");
  EXPECT_EQ(c.PostJson("/v1/modules/session/call/bump", "{\"args\":[]}").body, "{\"results\":[1101]}\n");

  Reply bad = c.Put("/v1/modules/other?state=sometimes", bytes);
  EXPECT_EQ(bad.status, 400);
  EXPECT_THAT(bad.body, HasSubstr("unknown state policy 'sometimes' (reset, keep or fresh)"));
  EXPECT_EQ(c.Get("/v1/modules/other").status, 404);
}

}  // namespace
}  // namespace keel::server
