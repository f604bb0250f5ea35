// POST /v1/modules/{name}/call/{export}: a synchronous call. The connection
// (session.cc) submits it with StartCall and answers with FinishCall.
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
  if (!text) return MakeError(text.error());
  if (!*text) return nanoseconds(options.default_call_timeout);
  auto timeout = ParseDuration(**text);
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

std::optional<std::pair<std::string, std::string>> CallTarget(std::string_view path) {
  constexpr std::string_view kPrefix = "/v1/modules/";
  if (!path.starts_with(kPrefix)) return std::nullopt;
  std::string_view rest = path.substr(kPrefix.size());
  size_t slash = rest.find('/');
  if (slash == std::string_view::npos || rest.substr(slash, 6) != "/call/") return std::nullopt;
  std::string_view export_text = rest.substr(slash + 6);
  if (slash == 0 || export_text.empty() || export_text.find('/') != std::string_view::npos) return std::nullopt;
  auto module = PercentDecode(rest.substr(0, slash));
  auto export_name = PercentDecode(export_text);
  if (!module || !export_name) return std::nullopt;
  return std::pair{std::move(*module), std::move(*export_name)};
}

std::optional<std::string> InternalExportReason(std::string_view name) {
  if (name == "_initialize") {
    return "'_initialize' is internal: it initialises a WASI reactor once, before any call";
  }
  if (name.starts_with("cabi_")) {
    return "'" + std::string(name) + "' is internal: names starting with cabi_ belong to the byte calling convention";
  }
  if (name.starts_with("__")) {
    return "'" + std::string(name) + "' is internal: names starting with __ belong to the toolchain";
  }
  return std::nullopt;
}

std::variant<Response, PendingCall> StartCall(Service& service, RequestContext& ctx,
                                              std::shared_ptr<const ModuleEntry> entry,
                                              std::string module, std::string export_name) {
  auto timeout = CallTimeout(service.options(), ctx.query);
  if (!timeout) return ErrorResponse(timeout.error());
  PendingCall pending;
  pending.json = IsJson(ctx.request);
  pending.entry = std::move(entry);
  if (!pending.entry) return ErrorResponse(Error(ErrorCode::kNotFound, "no module named '" + module + "'"));
  const Module::Export* exp = pending.entry->module->FindExport(export_name);
  if (!exp || exp->kind != ExternKind::kFunc) {
    return ErrorResponse(
        Error(ErrorCode::kNotFound, "module '" + module + "' has no function export '" + export_name + "'"));
  }
  if (auto why = InternalExportReason(export_name)) {
    return ErrorResponse(Error(ErrorCode::kNotFound, "module '" + module + "' export " + *why));
  }
  // The entry keeps its pool open: the registry closes a replaced module's
  // pool only after it has been idle for a long while.
  CallOptions options;
  options.timeout = std::chrono::ceil<std::chrono::milliseconds>(*timeout);
  Pool& pool = *pending.entry->pool;
  Result<Call> call;
  if (pending.json) {
    const auto& body = ctx.request.body();
    auto args = ParseCallArgs(std::string_view(reinterpret_cast<const char*>(body.data()), body.size()), exp->type);
    if (!args) return ErrorResponse(args.error());
    call = pool.Submit(export_name, std::move(*args), options);
  } else {
    call = pool.SubmitBytes(export_name, std::move(ctx.request.body()), options);
  }
  if (!call) {
    const Error& error = call.error();
    return ErrorResponse(StatusForError(error), error, {}, RetryAfter(error, pool));
  }
  pending.call = std::move(*call);
  pending.module = std::move(module);
  pending.export_name = std::move(export_name);
  return pending;
}

void AbandonCall(Service& service, PendingCall& pending) {
  CallId id = pending.call.id();
  // Running calls are detached, never interrupted: the instance stays
  // healthy and the result goes to the detached sink.
  service.NoteDetaching(id, pending.module, pending.export_name);
  CancelOutcome outcome = pending.call.Cancel();
  if (outcome != CancelOutcome::kDetached) service.ForgetDetaching(id);
  if (outcome == CancelOutcome::kTooLate) return;
  bool detached = outcome == CancelOutcome::kDetached;
  (detached ? service.http().disconnect_detached : service.http().disconnect_withdrawn)++;
  service.RecordTermination({std::chrono::system_clock::now(), id, pending.module, pending.export_name,
                             detached ? "detached" : "withdrawn",
                             detached ? "client disconnected; the call runs on, detached"
                                      : "client disconnected before the call started"});
}

std::variant<Response, CallAnswer> FinishCall(Service& service, const PendingCall& pending,
                                              const CallResult& result) {
  CallId id = pending.call.id();
  if (!result) {
    const Error& error = result.error();
    service.RecordTermination(
        {std::chrono::system_clock::now(), id, pending.module, pending.export_name, CauseOf(error), error.ToString()});
    json::object extra{{"call_id", id}};
    return ErrorResponse(StatusForCallError(error), error, std::move(extra), RetryAfter(error, *pending.entry->pool));
  }
  CallAnswer answer;
  answer.id = id;
  if (pending.json) {
    answer.content_type = "application/json";
    answer.body = "{\"results\":";
    answer.body += FormatResults(result->values);
    answer.body += "}\n";
  } else {
    answer.content_type = "application/octet-stream";
    answer.body.assign(result->bytes.begin(), result->bytes.end());
  }
  return answer;
}

}  // namespace keel::server
