// The HTTP API: routing and the handlers behind each route. Handlers never
// run guest code (calls go through pools) and never block an HTTP thread
// (store commits and compilation go to the service's blocking threads).
//
// Every GET route answers HEAD too (headers only).
//
//   GET    /                                  status page (HTML)
//   GET    /healthz /readyz /metrics
//   GET    /v1/status                         the status page's data
//   GET    /v1/modules                        list
//   PUT    /v1/modules/{name}                 upload (wasm bytes)
//   GET    /v1/modules/{name}
//   DELETE /v1/modules/{name}
//   POST   /v1/modules/{name}/call/{export}   synchronous call
//   POST   /v1/jobs                           submit a durable job
//   GET    /v1/jobs?state=&limit=&order=
//   GET    /v1/jobs/{id}
//   GET    /v1/jobs/{id}/result
//   DELETE /v1/jobs/{id}                      cancel
#ifndef KEEL_SERVER_API_H_
#define KEEL_SERVER_API_H_

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include <boost/asio/awaitable.hpp>

#include "keel/call.h"
#include "server/http.h"
#include "server/service.h"

namespace keel::server {

struct RequestContext {
  Request& request;        // HEAD requests arrive here as GET (the session drops the body)
  std::string_view path;   // without the query
  std::string_view query;  // after '?', or empty
};

// Splits a request target into path and query.
std::pair<std::string_view, std::string_view> SplitTarget(std::string_view target);
// True for routes that need the bearer token (when one is configured):
// /v1/* and, unless --public-metrics, /metrics.
bool NeedsAuth(const ServerOptions& options, std::string_view path);
// The body limit for this request, known from its header.
size_t BodyLimit(const ServerOptions& options, http::verb method, std::string_view path);

// Every route but the synchronous call (see StartCall).
boost::asio::awaitable<Response> Route(Service& service, RequestContext& ctx);

// The (percent-decoded) module and export of a call route's path,
// /v1/modules/{module}/call/{export}; nullopt for any other path.
std::optional<std::pair<std::string, std::string>> CallTarget(std::string_view path);

// A synchronous call submitted on behalf of a client, until it resolves.
struct PendingCall {
  Call call;
  std::shared_ptr<const ModuleEntry> entry;  // keeps the pool open
  std::string module;
  std::string export_name;
  bool json = false;  // a numeric call (JSON), else a byte call
};
// POST /v1/modules/{module}/call/{export}: submits the call to `entry`
// (the module's, from Registry::Find or Load; nullptr: no such module), or
// answers at once when it is refused (bad input, unknown names, admission
// control). Never blocks and never waits: the connection waits for `call`.
std::variant<Response, PendingCall> StartCall(Service& service, RequestContext& ctx,
                                              std::shared_ptr<const ModuleEntry> entry,
                                              std::string module, std::string export_name);
// The answer of a call that succeeded: its body, sent with this content type
// and the call's id (X-Keel-Call-Id). Kept apart from Response, whose
// fields cost allocations on the hottest path.
struct CallAnswer {
  std::string_view content_type;
  std::string body;
  CallId id = 0;
};
// The answer of a call that resolved with `result`: a CallAnswer, or an
// error Response.
std::variant<Response, CallAnswer> FinishCall(Service& service, const PendingCall& pending,
                                              const CallResult& result);
// The client went away before `pending` resolved: a queued call is
// withdrawn, a running one detached (never interrupted); counted and
// recorded. The call then resolves at once (kCancelled).
void AbandonCall(Service& service, PendingCall& pending);

// Exports that belong to the calling convention or to the toolchain, not to
// the module's API: `_initialize`, and names starting with `cabi_` (e.g.
// cabi_realloc, cabi_post_*) or `__`. Not callable over HTTP; marked
// "internal" in listings. The reason (for a 404) if `name` is one.
std::optional<std::string> InternalExportReason(std::string_view name);

// Handlers, by route family (api_*.cc). `segments` are the path's
// percent-decoded segments after "/v1/<family>".
boost::asio::awaitable<Response> HandleModules(Service& service, RequestContext& ctx,
                                               const std::vector<std::string>& segments);
boost::asio::awaitable<Response> HandleJobs(Service& service, RequestContext& ctx,
                                            const std::vector<std::string>& segments);
boost::asio::awaitable<Response> HandleOps(Service& service, RequestContext& ctx);

// 405 naming the methods allowed (HEAD is added wherever GET is).
Response MethodNotAllowed(std::string_view allowed);

}  // namespace keel::server

#endif  // KEEL_SERVER_API_H_
