// Routing, and the operational routes: status page, health, metrics.
#include <boost/json.hpp>

#include "server/api.h"
#include "server/metrics_text.h"
#include "server/status_page.h"

namespace keel::server {

namespace json = boost::json;

std::pair<std::string_view, std::string_view> SplitTarget(std::string_view target) {
  size_t q = target.find('?');
  if (q == std::string_view::npos) return {target, {}};
  return {target.substr(0, q), target.substr(q + 1)};
}

bool NeedsAuth(const ServerOptions& options, std::string_view path) {
  if (path == "/metrics") return !options.public_metrics;
  return path == "/v1" || path.starts_with("/v1/");
}

size_t BodyLimit(const ServerOptions& options, http::verb method, std::string_view path) {
  bool module_upload = method == http::verb::put && path.starts_with("/v1/modules/") &&
                       path.find('/', std::string_view("/v1/modules/").size()) == std::string_view::npos;
  return module_upload ? options.max_module_bytes : options.max_body_bytes;
}

Response MethodNotAllowed(std::string_view allowed) {
  std::string methods(allowed);
  if (methods.starts_with("GET")) methods.insert(3, ", HEAD");
  Response res = ErrorResponse(405, Error(ErrorCode::kInvalidArgument, "method not allowed; use " + methods));
  res.set(http::field::allow, methods);
  return res;
}

namespace {

Response NoRoute(std::string_view path) {
  return ErrorResponse(Error(ErrorCode::kNotFound, "no route for " + std::string(path)));
}

Response Text(std::string content_type, std::string body) {
  Response res(http::status::ok, 11);
  res.set(http::field::content_type, content_type);
  res.set(http::field::cache_control, "no-store");
  res.body() = std::move(body);
  return res;
}

}  // namespace

boost::asio::awaitable<Response> HandleOps(Service& service, RequestContext& ctx) {
  http::verb method = ctx.request.method();
  std::string_view path = ctx.path;
  if (method != http::verb::get) co_return MethodNotAllowed("GET");
  if (path == "/") co_return Text("text/html; charset=utf-8", std::string(StatusPageHtml()));
  if (path == "/healthz") co_return JsonResponse(200, json::value{{"status", "ok"}});
  if (path == "/readyz") {
    if (service.draining()) {
      co_return ErrorResponse(Error(ErrorCode::kShuttingDown, "the service is draining"));
    }
    co_return JsonResponse(200, json::value{{"status", "ready"}});
  }
  std::shared_ptr<const Service::PoolsRendering> pools = co_await service.CachedPools();
  if (path == "/metrics") {
    MetricsInput in = service.CollectMetrics();
    in.pool_families = &pools->metrics;
    co_return Text("text/plain; version=0.0.4; charset=utf-8", RenderPrometheus(in));
  }
  Response res = JsonResponse(200, service.StatusJson(pools->status_json));  // /v1/status
  res.set(http::field::cache_control, "no-store");
  co_return res;
}

boost::asio::awaitable<Response> Route(Service& service, RequestContext& ctx) {
  std::string_view path = ctx.path;
  if (path == "/" || path == "/healthz" || path == "/readyz" || path == "/metrics" || path == "/v1/status") {
    co_return co_await HandleOps(service, ctx);
  }
  if (!path.starts_with("/v1/")) co_return NoRoute(path);
  std::vector<std::string> segments;
  std::string_view rest = path.substr(4);
  if (rest.ends_with('/')) rest.remove_suffix(1);
  while (true) {
    size_t slash = rest.find('/');
    auto segment = PercentDecode(rest.substr(0, slash));
    if (!segment) co_return ErrorResponse(Error(ErrorCode::kInvalidArgument, "malformed percent-escape in path"));
    if (segment->empty()) co_return NoRoute(path);
    segments.push_back(std::move(*segment));
    if (slash == std::string_view::npos) break;
    rest = rest.substr(slash + 1);
  }
  std::string family = segments.front();
  segments.erase(segments.begin());
  if (family == "modules") {
    // POST is taken by the session (StartCall) before routing.
    if (segments.size() == 3 && segments[1] == "call") co_return MethodNotAllowed("POST");
    if (segments.size() <= 1) co_return co_await HandleModules(service, ctx, segments);
  } else if (family == "nodes" && segments.empty()) {
    if (ctx.request.method() != http::verb::get) co_return MethodNotAllowed("GET");
    auto query = [&service] { return service.NodesJson(); };
    Result<std::string> nodes = co_await OffThread(service, std::move(query));
    if (!nodes) co_return ErrorResponse(nodes.error());
    co_return JsonResponse(200, *nodes);
  } else if (family == "jobs") {
    if (segments.size() <= 1 || (segments.size() == 2 && segments[1] == "result")) {
      co_return co_await HandleJobs(service, ctx, segments);
    }
  }
  co_return NoRoute(path);
}

}  // namespace keel::server
