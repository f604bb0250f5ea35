// POST /v1/modules/{name}/call/{export}: a synchronous call.
#include <boost/beast/core/string.hpp>
#include <boost/json.hpp>

#include "base/duration.h"
#include "server/api.h"
#include "server/call_args.h"

namespace keel::server {

namespace json = boost::json;
using std::chrono::milliseconds;
using std::chrono::nanoseconds;

namespace {

bool IsJson(const Request& req) {
  auto type = req[http::field::content_type];
  std::string_view media(type.data(), type.size());
  media = media.substr(0, media.find(';'));
  while (!media.empty() && media.back() == ' ') media.remove_suffix(1);
  return boost::beast::iequals(media, "application/json");
}

// The call's deadline from ?timeout=, within the service's maximum.
Result<nanoseconds> CallTimeout(const ServerOptions& options, std::string_view query) {
  auto text = QueryParam(query, "timeout");
  if (!text) return nanoseconds(options.default_call_timeout);
  auto timeout = ParseDuration(*text);
  if (!timeout) return MakeError(timeout.error());
  if (timeout->count() <= 0) return MakeError(ErrorCode::kInvalidArgument, "timeout must be positive");
  return std::min(*timeout, nanoseconds(options.max_call_timeout));
}

std::string CauseOf(const Error& error) {
  switch (error.code) {
    case ErrorCode::kTrap: return "trap";
    case ErrorCode::kDeadlineExceeded: return "deadline";
    case ErrorCode::kCancelled: return "cancelled";
    case ErrorCode::kShuttingDown: return "shutting_down";
    case ErrorCode::kUnavailable: return "unavailable";
    default: return "error";
  }
}

// Seconds a client should wait before retrying a refused call.
std::chrono::seconds RetryAfter(const Error& error, const Pool& pool) {
  if (error.code == ErrorCode::kUnavailable) {
    PoolStats stats = pool.Stats();
    return std::chrono::ceil<std::chrono::seconds>(stats.quarantine_remaining);
  }
  return std::chrono::seconds(1);
}

}  // namespace

boost::asio::awaitable<Response> HandleCall(Service& service, RequestContext& ctx, const std::string& module,
                                            const std::string& export_name) {
  auto timeout = CallTimeout(service.options(), ctx.query);
  if (!timeout) co_return ErrorResponse(timeout.error());
  bool json_call = IsJson(ctx.request);

  auto entry = service.registry().Find(module);
  if (!entry) co_return ErrorResponse(Error(ErrorCode::kNotFound, "no module named '" + module + "'"));
  const Module::Export* exp = entry->module->FindExport(export_name);
  if (!exp || exp->kind != ExternKind::kFunc) {
    co_return ErrorResponse(
        Error(ErrorCode::kNotFound, "module '" + module + "' has no function export '" + export_name + "'"));
  }
  // The entry keeps its pool open: the registry closes a replaced module's
  // pool only after it has been idle for a long while.
  CallOptions options;
  options.timeout = std::chrono::ceil<std::chrono::milliseconds>(*timeout);
  Result<Call> call;
  if (json_call) {
    const auto& body = ctx.request.body();
    auto args = ParseCallArgs(std::string_view(reinterpret_cast<const char*>(body.data()), body.size()), exp->type);
    if (!args) co_return ErrorResponse(args.error());
    call = entry->pool->Submit(export_name, std::move(*args), options);
  } else {
    call = entry->pool->SubmitBytes(export_name, std::move(ctx.request.body()), options);
  }
  if (!call) {
    const Error& error = call.error();
    co_return ErrorResponse(StatusForError(error), error, {}, RetryAfter(error, *entry->pool));
  }

  service.http().calls_in_flight++;
  bool client_stayed = co_await ctx.waiter.Await(*call);
  service.http().calls_in_flight--;
  if (!client_stayed) {
    // Running calls are detached, never interrupted: the instance stays
    // healthy and the result goes to the detached sink.
    service.NoteDetaching(call->id(), module, export_name);
    CancelOutcome outcome = call->Cancel();
    if (outcome != CancelOutcome::kDetached) service.ForgetDetaching(call->id());
    if (outcome != CancelOutcome::kTooLate) {
      bool detached = outcome == CancelOutcome::kDetached;
      (detached ? service.http().disconnect_detached : service.http().disconnect_withdrawn)++;
      service.RecordTermination({std::chrono::system_clock::now(), call->id(), module, export_name,
                                 detached ? "detached" : "withdrawn",
                                 detached ? "client disconnected; the call runs on, detached"
                                          : "client disconnected before the call started"});
    }
    co_return ErrorResponse(499, Error(ErrorCode::kCancelled, "client disconnected"));
  }

  const CallResult& result = call->Wait();  // resolved: returns at once
  if (!result) {
    const Error& error = result.error();
    service.RecordTermination(
        {std::chrono::system_clock::now(), call->id(), module, export_name, CauseOf(error), error.ToString()});
    json::object extra{{"call_id", call->id()}};
    co_return ErrorResponse(StatusForCallError(error), error, std::move(extra), RetryAfter(error, *entry->pool));
  }
  Response res;
  if (json_call) {
    res = JsonResponse(200, "{\"results\":" + FormatResults(result->values) + "}");
  } else {
    res.result(http::status::ok);
    res.set(http::field::content_type, "application/octet-stream");
    res.body().assign(result->bytes.begin(), result->bytes.end());
  }
  res.set("X-Keel-Call-Id", std::to_string(call->id()));
  co_return res;
}

}  // namespace keel::server
