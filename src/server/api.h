// The HTTP API: routing and the handlers behind each route. Handlers never
// run guest code (calls go through pools) and never block an HTTP thread
// (store commits and compilation go to the service's blocking threads).
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

#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/awaitable.hpp>

#include "keel/call.h"
#include "server/http.h"
#include "server/service.h"

namespace keel::server {

// Waits for a call on behalf of a client connection.
class CallWaiter {
 public:
  virtual ~CallWaiter() = default;
  // Resumes once `call` has resolved (true), or once the client has gone
  // away (false; the call may still be running).
  virtual boost::asio::awaitable<bool> Await(const Call& call) = 0;
};

struct RequestContext {
  Request& request;
  std::string_view path;   // without the query
  std::string_view query;  // after '?', or empty
  CallWaiter& waiter;
};

// Splits a request target into path and query.
std::pair<std::string_view, std::string_view> SplitTarget(std::string_view target);
// True for routes that need the bearer token (when one is configured).
bool NeedsAuth(std::string_view path);
// The body limit for this request, known from its header.
size_t BodyLimit(const ServerOptions& options, http::verb method, std::string_view path);

boost::asio::awaitable<Response> Route(Service& service, RequestContext& ctx);

// Handlers, by route family (api_*.cc). `segments` are the path's
// percent-decoded segments after "/v1/<family>".
boost::asio::awaitable<Response> HandleModules(Service& service, RequestContext& ctx,
                                               const std::vector<std::string>& segments);
boost::asio::awaitable<Response> HandleCall(Service& service, RequestContext& ctx, const std::string& module,
                                            const std::string& export_name);
boost::asio::awaitable<Response> HandleJobs(Service& service, RequestContext& ctx,
                                            const std::vector<std::string>& segments);
boost::asio::awaitable<Response> HandleOps(Service& service, RequestContext& ctx);

// 405 naming the methods allowed.
Response MethodNotAllowed(std::string_view allowed);

}  // namespace keel::server

#endif  // KEEL_SERVER_API_H_
