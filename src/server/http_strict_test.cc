// The service as a strict HTTP/1.1 server (RFC 9112 framing, HEAD, Expect,
// timeouts, escapes, valid JSON errors), safe for a loopback service without
// a token (Host and Origin checks), strict about its JSON (no duplicate
// keys) and its exports (internal ones are not callable), and bounded in
// the work a request can cause on an HTTP thread. Real sockets throughout;
// raw ones where a well-behaved client could not send the request.
#include <fstream>
#include <future>
#include <map>

#include <boost/asio/post.hpp>
#include <boost/json.hpp>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "server/service.h"
#include "server/test_util.h"

namespace keel::server {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;
using testing::Client;
using testing::Eventually;
using testing::Fixture;
using testing::Guest;
using testing::RawSocket;
using testing::ReadBytes;
using testing::Reply;
namespace json = boost::json;
namespace http = boost::beast::http;

using StrictHttpTest = testing::ServerTestBase;

size_t Count(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

// The body of a raw answer (after its header).
std::string BodyOf(const std::string& answer) {
  size_t end = answer.find("\r\n\r\n");
  return end == std::string::npos ? "" : answer.substr(end + 4);
}

// The status code of a raw answer, e.g. "403".
std::string StatusOf(const std::string& answer) { return answer.size() >= 12 ? answer.substr(9, 3) : answer; }

// Peak resident memory of this process in KiB, since the last ResetPeak().
long PeakRssKb() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.starts_with("VmHWM:")) return std::stol(line.substr(6));
  }
  return -1;
}
void ResetPeakRss() { std::ofstream("/proc/self/clear_refs") << "5"; }

// --- RFC 9112 -----------------------------------------------------------------------

// A body framed by anything but a final `chunked` cannot be read reliably:
// the request is refused and the connection closed, so bytes after the
// header are never taken for a request (smuggling).
TEST_F(StrictHttpTest, TransferEncodingMustEndInChunked) {
  Start();
  const std::string smuggled = "DELETE /v1/modules/add HTTP/1.1\r\n" + HostLine() + "\r\n";
  struct Case {
    std::string fields;
    std::string status;
  };
  for (const Case& k : {Case{"Transfer-Encoding: xchunked\r\n", "400"},
                        Case{"Transfer-Encoding: chunked, gzip\r\n", "400"},
                        Case{"Transfer-Encoding: chunked;ext=1\r\n", "400"},
                        Case{"Transfer-Encoding: chunked, chunked\r\n", "400"},
                        Case{"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", "501"},
                        Case{"Transfer-Encoding: gzip, chunked\r\n", "501"},
                        Case{"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", "400"},
                        Case{"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n", "400"}}) {
    RawSocket s(port());
    s.Write("POST /v1/modules/add/call/echo HTTP/1.1\r\n" + HostLine() + k.fields + "\r\n" + smuggled);
    std::string out = s.ReadAll(5s);
    EXPECT_THAT(out, StartsWith("HTTP/1.1 " + k.status)) << k.fields;
    EXPECT_EQ(Count(out, "HTTP/1.1 "), 1u) << "one answer, then closed: " << out;
    EXPECT_FALSE((Reply{0, BodyOf(out)}.json().is_null())) << out;
  }
  // HTTP/1.0 has no Transfer-Encoding.
  RawSocket old(port());
  old.Write("POST /v1/modules/add/call/echo HTTP/1.0\r\n" + HostLine() + "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
  EXPECT_THAT(old.ReadAll(5s), StartsWith("HTTP/1.0 400"));
  // Nothing smuggled ran.
  EXPECT_EQ(Client(port()).Get("/v1/modules/add").status, 200);
  // A plain chunked body is fine.
  RawSocket chunked(port());
  chunked.Write("POST /v1/modules/add/call/echo HTTP/1.1\r\n" + HostLine() +
                "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n");
  EXPECT_THAT(chunked.ReadUntil("abcde", 5s), ::testing::AllOf(StartsWith("HTTP/1.1 200"), HasSubstr("abcde")));
}

// HEAD is answered on every GET route with the GET's header (its
// Content-Length too) and no body, errors included, so keep-alive stays in
// step.
TEST_F(StrictHttpTest, HeadAnswersEveryGetRouteWithoutABody) {
  Start();
  Client c(port());
  Reply job = c.PostJson("/v1/jobs", R"({"module": "sha256", "export": "hash", "input_base64": "YWJj"})");
  ASSERT_EQ(job.status, 202) << job.body;
  std::string id(job.json().at("id").as_string());
  ASSERT_TRUE(Eventually([&] { return c.Get("/v1/jobs/" + id).json().at("state") == "succeeded"; }));
  for (const std::string& target :
       {std::string("/"), std::string("/healthz"), std::string("/readyz"), std::string("/metrics"),
        std::string("/v1/status"), std::string("/v1/modules"), std::string("/v1/modules/add"), std::string("/v1/jobs"),
        "/v1/jobs/" + id, "/v1/jobs/" + id + "/result", std::string("/nope"), std::string("/v1/modules/nope"),
        std::string("/v1/modules/add/call/add")}) {
    // A GET follows on the same connection: it must start right after the
    // HEAD's header.
    RawSocket s(port());
    s.Write("HEAD " + target + " HTTP/1.1\r\n" + HostLine() + "\r\nGET /healthz HTTP/1.1\r\n" + HostLine() + "\r\n");
    std::string out = s.ReadUntil("{\"status\":\"ok\"}\n", 5s);
    EXPECT_THAT(BodyOf(out), StartsWith("HTTP/1.1 200 OK\r\n")) << target << ": " << out;
    EXPECT_THAT(out, HasSubstr("Content-Length: ")) << target;
  }
  for (const std::string& target : {std::string("/"), std::string("/healthz"), std::string("/v1/modules/add"),
                                    "/v1/jobs/" + id + "/result", std::string("/nope")}) {
    Reply get = c.Get(target);
    Reply head = c.Send(http::verb::head, target);
    EXPECT_EQ(head.status, get.status) << target;
    EXPECT_EQ(head.header(http::field::content_length), std::to_string(get.body.size())) << target;
    EXPECT_EQ(head.header(http::field::content_type), get.header(http::field::content_type)) << target;
    EXPECT_TRUE(head.body.empty()) << target;
  }
  EXPECT_FALSE(c.closed());
}

TEST_F(StrictHttpTest, OnlyOneExpectationIsUnderstood) {
  Start();
  for (const std::string& expect : {std::string("fancy"), std::string("100-continue, fancy")}) {
    RawSocket s(port());
    s.Write("POST /v1/modules/add/call/echo HTTP/1.1\r\n" + HostLine() + "Content-Length: 5\r\nExpect: " + expect +
            "\r\n\r\n");
    std::string out = s.ReadAll(5s);
    EXPECT_THAT(out, StartsWith("HTTP/1.1 417")) << expect;
    EXPECT_THAT(out, HasSubstr("fancy"));
  }
  // HTTP/1.0 clients get no interim answer (RFC 9110 §10.1.1): the body
  // follows at once and the answer is the call's.
  RawSocket old(port());
  old.Write("POST /v1/modules/add/call/echo HTTP/1.0\r\n" + HostLine() +
            "Content-Length: 5\r\nExpect: 100-continue\r\n\r\nhello");
  std::string out = old.ReadAll(5s);
  EXPECT_THAT(out, StartsWith("HTTP/1.0 200"));
  EXPECT_THAT(out, HasSubstr("hello"));
  EXPECT_THAT(out, Not(HasSubstr("100 Continue")));
}

TEST_F(StrictHttpTest, SlowRequestsAre408) {
  Start([](ServerOptions& o) {
    o.header_timeout = 200ms;
    o.body_timeout = 200ms;
  });
  RawSocket header(port());
  header.Write("GET /healthz HTTP/1.1\r\n" + HostLine());  // never finishes the header
  std::string out = header.ReadAll(5s);
  EXPECT_THAT(out, StartsWith("HTTP/1.1 408"));
  EXPECT_THAT(out, HasSubstr("\"code\":\"deadline_exceeded\""));
  RawSocket body(port());
  body.Write("POST /v1/modules/add/call/echo HTTP/1.1\r\n" + HostLine() + "Content-Length: 10\r\n\r\nabc");
  EXPECT_THAT(body.ReadAll(5s), StartsWith("HTTP/1.1 408"));
  EXPECT_GE(Http().timeouts, 2u);
}

TEST_F(StrictHttpTest, MalformedEscapesAndDurationsAre400) {
  Start();
  Client c(port());
  for (const std::string query : {"timeout=%ZZ", "timeout=%2", "x=%G1&timeout=1s", "timeout=9223372036854775807ns",
                                   "timeout=99999999999999999h"}) {
    Reply r = c.PostJson("/v1/modules/add/call/add?" + query, "{\"args\":[1,2]}");
    EXPECT_EQ(r.status, 400) << query << ": " << r.body;
    EXPECT_EQ(r.error_code(), "invalid_argument") << query;
  }
  for (const std::string query : {"state=%ZZ", "limit=%ZZ", "order=%Z"}) {
    Reply r = c.Get("/v1/jobs?" + query);
    EXPECT_EQ(r.status, 400) << query << ": " << r.body;
    EXPECT_THAT(r.body, HasSubstr("percent-escape")) << query;
  }
  EXPECT_EQ(c.PostJson("/v1/modules/add/call/add?timeout=1s", "{\"args\":[1,2]}").status, 200);
  EXPECT_EQ(c.Get("/v1/jobs?state=queued").status, 200);
}

// Bytes a client sent that are not UTF-8 are replaced when an error
// message quotes them: every error body parses as JSON.
TEST_F(StrictHttpTest, ErrorBodiesAreValidJson) {
  Start();
  Client c(port());
  auto check = [](const std::string& body, const std::string& what) {
    json::error_code ec;
    json::value v = json::parse(body, ec);  // Boost.JSON refuses invalid UTF-8
    ASSERT_FALSE(ec) << what << ": " << body;
    EXPECT_THAT(std::string(v.at("error").at("message").as_string()), HasSubstr("\xEF\xBF\xBD")) << what;
  };
  check(c.Get("/v1/modules/%FF%FEname").body, "module name");
  check(c.PostBytes("/v1/modules/add/call/%C0%AFx", "x").body, "export name");
  check(c.Send(http::verb::get, "/healthz", "", "", {{"Host", "\xFF\xFE:1"}}).body, "host");
  RawSocket s(port());
  s.Write("POST /v1/modules/add/call/echo HTTP/1.1\r\n" + HostLine() + "Transfer-Encoding: \xFF\xFE\r\n\r\n");
  check(BodyOf(s.ReadAll(5s)), "transfer coding");
}

// --- Whose request it is ----------------------------------------------------------

// Without a token, a page the user visits could reach the service through
// DNS rebinding (its Host is then the page's name): only this machine's
// names for the service are served.
TEST_F(StrictHttpTest, WithoutATokenOnlyLocalHostsAreServed) {
  Start();
  std::string p = std::to_string(port());
  auto status = [&](const std::string& request) {
    RawSocket s(port());
    s.Write(request);
    return StatusOf(s.ReadUntil("\r\n\r\n", 5s));
  };
  auto get = [&](const std::string& host) { return status("GET /healthz HTTP/1.1\r\nHost: " + host + "\r\n\r\n"); };
  for (const std::string& host : {"127.0.0.1:" + p, "localhost:" + p, "LocalHost:" + p, "127.8.9.10:" + p,
                                  "[::1]:" + p, "[::ffff:127.0.0.1]:" + p}) {
    EXPECT_EQ(get(host), "200") << host;
  }
  for (const std::string& host :
       {"attacker.example:" + p, std::string("attacker.example"), std::string("127.0.0.1"),
        "127.0.0.1:" + std::to_string(port() + 1), "localhost.attacker.example:" + p, "127.0.0.1.nip.io:" + p,
        "192.168.1.1:" + p, "[::2]:" + p, "::1:" + p, "127.0.0.1:" + p + "0", "127.0.0.1:+" + p}) {
    EXPECT_EQ(get(host), "403") << host;
  }
  EXPECT_EQ(status("GET /healthz HTTP/1.1\r\n\r\n"), "400");  // HTTP/1.1 needs a Host
  EXPECT_EQ(status("GET /healthz HTTP/1.1\r\nHost: localhost:" + p + "\r\nHost: localhost:" + p + "\r\n\r\n"), "400");
  EXPECT_EQ(status("GET /healthz HTTP/1.0\r\n\r\n"), "200");
  // Every route, and the answer says why.
  Client c(port());
  Reply r = c.Send(http::verb::get, "/v1/modules", "", "", {{"Host", "attacker.example:" + p}});
  EXPECT_EQ(r.status, 403);
  EXPECT_THAT(r.body, HasSubstr("Host 'attacker.example:" + p + "' is not this service"));
  EXPECT_EQ(c.Send(http::verb::post, "/v1/jobs", "{}", "application/json", {{"Host", "attacker.example:" + p}}).status,
            403);
}

// Without a token, a page on another origin may still send the browser's
// "simple" requests; state-changing ones are refused unless they come from
// the service's own origin (or from a client that sends no Origin).
TEST_F(StrictHttpTest, WithoutATokenCrossOriginWritesAreRefused) {
  Start();
  Client c(port());
  std::string p = std::to_string(port());
  const std::string job = R"({"module": "sha256", "export": "hash", "input_base64": "YWJj"})";
  auto submit = [&](const std::string& origin) {
    std::map<std::string, std::string> headers;
    if (!origin.empty()) headers["Origin"] = origin;
    return c.Send(http::verb::post, "/v1/jobs", job, "text/plain", headers);
  };
  for (const std::string& origin : {std::string("http://attacker.example"), std::string("null"),
                                    "http://localhost:" + p, "https://127.0.0.1:" + p, "http://127.0.0.1:" + p + "0"}) {
    Reply r = submit(origin);
    EXPECT_EQ(r.status, 403) << origin;
    EXPECT_THAT(r.body, HasSubstr("cross-origin")) << origin;
  }
  EXPECT_EQ(submit("http://127.0.0.1:" + p).status, 202);
  EXPECT_EQ(submit("").status, 202);
  const std::map<std::string, std::string> evil{{"Origin", "http://attacker.example"}};
  EXPECT_EQ(c.Send(http::verb::put, "/v1/modules/x", std::string(8, 'x'), "application/wasm", evil).status, 403);
  EXPECT_EQ(c.Send(http::verb::delete_, "/v1/modules/add", "", "", evil).status, 403);
  EXPECT_EQ(c.Send(http::verb::post, "/v1/modules/add/call/echo", "hi", "text/plain", evil).status, 403);
  // Reads are not refused: the browser does not let the page see them.
  EXPECT_EQ(c.Send(http::verb::get, "/v1/modules/add", "", "", evil).status, 200);
  EXPECT_EQ(c.Get("/v1/jobs").json().at("jobs").as_array().size(), 2u);
}

TEST_F(StrictHttpTest, WithATokenHostsAreFreeAndMetricsMayBePublic) {
  Start([](ServerOptions& o) {
    o.token = "t0ken";
    o.public_metrics = true;
  });
  EXPECT_EQ(Client(port()).Get("/metrics").status, 200);
  EXPECT_EQ(Client(port()).Get("/v1/status").status, 401);
  Reply r = Client(port(), "t0ken").Send(http::verb::post, "/v1/modules/add/call/add", "{\"args\":[1,2]}",
                                         "application/json",
                                         {{"Host", "keel.example.com"}, {"Origin", "https://keel.example.com"}});
  EXPECT_EQ(r.status, 200) << r.body;
}

// --- JSON and exports -------------------------------------------------------------

TEST_F(StrictHttpTest, DuplicateKeysAre400) {
  Start();
  Client c(port());
  for (const std::string body : {R"({"args": [1, 2], "args": [3, 4]})", R"({"x": 1, "x": 2, "args": [1, 2]})",
                                  R"({"x": {"a": 1, "a": 2}, "args": [1, 2]})"}) {
    Reply r = c.PostJson("/v1/modules/add/call/add", body);
    EXPECT_EQ(r.status, 400) << body;
    EXPECT_THAT(r.body, HasSubstr("appears twice")) << body;
  }
  for (const std::string body :
       {R"({"module": "sha256", "export": "hash", "export": "nope", "input_base64": "YWJj"})",
        R"({"module": "sha256", "export": "hash", "input_base64": "YWJj", "idempotency_key": "a", "idempotency_key": "b"})",
        R"({"module": "sha256", "export": "hash", "input_base64": "", "input_base64": "YWJj"})"}) {
    Reply r = c.PostJson("/v1/jobs", body);
    EXPECT_EQ(r.status, 400) << body;
    EXPECT_THAT(r.body, HasSubstr("appears twice")) << body;
  }
  EXPECT_TRUE(c.Get("/v1/jobs").json().at("jobs").as_array().empty());
}

TEST_F(StrictHttpTest, InternalExportsAreNotCallable) {
  Start();
  Client c(port());
  struct Case {
    std::string name;
    std::string args;
  };
  for (const Case& k : {Case{"cabi_realloc", "[0, 0, 1, 16]"}, Case{"cabi_post_echo", "[16]"}, Case{"_initialize", "[]"}}) {
    Reply r = c.PostJson("/v1/modules/add/call/" + k.name, "{\"args\": " + k.args + "}");
    EXPECT_EQ(r.status, 404) << k.name << ": " << r.body;
    EXPECT_THAT(r.body, HasSubstr("is internal")) << k.name;
    EXPECT_EQ(c.PostBytes("/v1/modules/add/call/" + k.name, "abc").status, 404) << k.name;
    Reply submitted = c.PostJson("/v1/jobs", R"({"module": "add", "input_base64": "", "export": ")" + k.name + "\"}");
    EXPECT_EQ(submitted.status, 404) << k.name << ": " << submitted.body;
  }
  json::value module = c.Get("/v1/modules/add").json();
  std::map<std::string, bool> internal;
  for (const auto& e : module.at("exports").as_array()) {
    const json::object& o = e.as_object();
    internal[std::string(o.at("name").as_string())] = o.contains("internal") && o.at("internal").as_bool();
  }
  EXPECT_TRUE(internal.at("cabi_realloc"));
  EXPECT_TRUE(internal.at("cabi_post_echo"));
  EXPECT_TRUE(internal.at("_initialize"));
  EXPECT_FALSE(internal.at("add"));
  EXPECT_FALSE(internal.at("echo"));
  EXPECT_EQ(c.PostJson("/v1/modules/add/call/add", "{\"args\": [1, 2]}").status, 200);
}

// --- Bounded work on the HTTP threads ------------------------------------------------

// 8 MiB of arguments for add(i32, i32): refused at the third one, and
// nothing of them is kept (a parse that collected them first took hundreds
// of MB).
TEST_F(StrictHttpTest, ArgumentsBeyondTheCountStopTheParse) {
  Start();
  std::string body = "{\"args\": [";
  for (int i = 0; i < (4 << 20); ++i) body += "1,";
  body += "1]}";
  Client c(port());
  ASSERT_EQ(c.Get("/healthz").status, 200);
  ResetPeakRss();
  long before = PeakRssKb();
  Reply r = c.PostJson("/v1/modules/add/call/add", body);
  long grown = PeakRssKb() - before;
  EXPECT_EQ(r.status, 400);
  EXPECT_THAT(r.body, HasSubstr("expected 2 arguments"));
  EXPECT_THAT(r.body, HasSubstr("got more"));
  // The client's copy and the server's body: about 2 x 8 MiB.
  EXPECT_LT(grown, 64 << 10) << "KiB";
}

// Uploads compile on threads of their own: a query is answered while every
// compile thread is taken.
TEST_F(StrictHttpTest, UploadsDoNotHoldUpQueries) {
  Start([](ServerOptions& o) {
    o.compile_threads = 1;
    o.blocking_threads = 1;
  });
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::promise<void> taken;
  boost::asio::post(server_->service().compiling(), [released, &taken] {
    taken.set_value();
    released.wait();
  });
  taken.get_future().wait();
  auto upload = std::async(std::launch::async,
                           [&] { return Client(port()).Put("/v1/modules/late", ReadBytes(Fixture("server_values"))); });
  EXPECT_EQ(Client(port()).Get("/v1/jobs").status, 200);
  EXPECT_EQ(Client(port()).Get("/v1/modules/add").status, 200);
  EXPECT_EQ(upload.wait_for(0s), std::future_status::timeout);  // it needs the compile thread
  release.set_value();
  EXPECT_EQ(upload.get().status, 201);
}

// /metrics and /v1/status: the counters are current; the per-pool parts
// (O(modules)) are rendered at most once a second, so a new module shows
// up within about a second.
TEST_F(StrictHttpTest, MetricsCountersAreCurrentAndPoolsFollow) {
  Start();
  Client c(port());
  EXPECT_THAT(c.Get("/metrics").body, HasSubstr("keel_pool_instances{module=\"add\","));
  Upload("fresh", Fixture("server_values"));
  Upload("fresh2", Fixture("server_values"));  // the same bytes: one pool, two names
  EXPECT_EQ(c.PostJson("/v1/modules/add/call/add", "{\"args\":[1,2]}").status, 200);
  std::string text = c.Get("/metrics").body;
  EXPECT_THAT(text, HasSubstr("keel_calls_resolved_total{cause=\"ok\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("keel_http_responses_total{code=\"201\"} 2\n"));
  ASSERT_TRUE(Eventually([&] {
    return c.Get("/metrics").body.find("keel_pool_queued{module=\"fresh,fresh2\",") != std::string::npos;
  }, 5s));
  ASSERT_TRUE(Eventually([&] {
    json::value status = c.Get("/v1/status").json();
    for (const auto& p : status.at("pools").as_array()) {
      if (p.at("module") == "fresh,fresh2") return true;
    }
    return false;
  }, 5s));
  EXPECT_EQ(c.Get("/v1/status").json().at("runtime").at("ok"), 1);
}

}  // namespace
}  // namespace keel::server
