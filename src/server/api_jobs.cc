// /v1/jobs: durable jobs, run by this process's runner (and any `keel
// worker` sharing the store).
#include <charconv>

#include <boost/json.hpp>

#include "server/api.h"
#include "server/json_text.h"

namespace keel::server {

namespace json = boost::json;

namespace {

constexpr int64_t kMaxAttempts = 100;
constexpr size_t kMaxIdempotencyKey = 256;
constexpr size_t kMaxListLimit = 1000;

Response BadRequest(std::string message) { return ErrorResponse(Error(ErrorCode::kInvalidArgument, std::move(message))); }

json::object JobJson(const jobs::Job& job) {
  json::object out{
      {"id", job.id},
      {"module_digest", job.spec.module_digest},
      {"export", job.spec.export_name},
      {"state", jobs::ToString(job.state)},
      {"attempts", job.attempts},
      {"max_attempts", job.spec.max_attempts},
      {"timeout_ms", job.spec.deadline.count()},
      {"idempotency_key", job.spec.idempotency_key},
      {"cancel_requested", job.cancel_requested},
      {"created_at", FormatTime(job.created_at)},
      {"updated_at", FormatTime(job.updated_at)},
  };
  // The node holding (or that last held) its lease.
  if (!job.runner.empty()) out["runner"] = job.runner;
  if (job.started_at) out["started_at"] = FormatTime(*job.started_at);
  if (job.finished_at) out["finished_at"] = FormatTime(*job.finished_at);
  if (job.state == jobs::JobState::kSucceeded || !job.result.empty()) out["result_bytes"] = job.result.size();
  if (job.error) out["error"] = {{"code", ToString(job.error->code)}, {"message", job.error->message}};
  return out;
}

// A submit body: the spec, and the module's name when the body names one
// (the spec's digest is then the name's, set by UseModule).
struct ParsedJob {
  jobs::JobSpec spec;
  std::string module_name;
};

// Reads the submit body; the module is named by `module` (a name, resolved
// to its current digest by UseModule) or `module_digest`.
Result<ParsedJob> ParseJobSpec(Service& service, std::string_view body) {
  auto bad = [](std::string m) { return MakeError(ErrorCode::kInvalidArgument, std::move(m)); };
  auto parsed = ParseJson(body);
  if (!parsed) return MakeError(parsed.error());
  const json::value& doc = *parsed;
  if (!doc.is_object()) return bad("the body must be a JSON object");
  jobs::JobSpec spec;
  std::string module_name;
  for (const auto& entry : doc.as_object()) {
    // Named, not a structured binding: clang 14 cannot capture those.
    json::string_view key = entry.key();
    const json::value& value = entry.value();
    auto text = [&](std::string* out) -> Result<void> {
      if (!value.is_string()) return bad("\"" + std::string(key) + "\" must be a string");
      *out = std::string(value.as_string());
      return {};
    };
    auto integer = [&](int64_t lo, int64_t hi) -> Result<int64_t> {
      if (!value.is_int64() || value.as_int64() < lo || value.as_int64() > hi) {
        return bad("\"" + std::string(key) + "\" must be an integer in " + std::to_string(lo) + ".." +
                   std::to_string(hi));
      }
      return value.as_int64();
    };
    Result<void> ok;
    if (key == "module") {
      ok = text(&module_name);
    } else if (key == "module_digest") {
      ok = text(&spec.module_digest);
    } else if (key == "export") {
      ok = text(&spec.export_name);
    } else if (key == "input_base64") {
      std::string b64;
      ok = text(&b64);
      if (ok) {
        auto input = DecodeBase64(b64);
        if (!input) return MakeError(input.error());
        spec.input = std::move(*input);
      }
    } else if (key == "timeout_ms") {
      auto v = integer(1, service.options().max_job_timeout.count());
      if (!v) return MakeError(v.error());
      spec.deadline = std::chrono::milliseconds(*v);
    } else if (key == "max_attempts") {
      auto v = integer(1, kMaxAttempts);
      if (!v) return MakeError(v.error());
      spec.max_attempts = static_cast<uint32_t>(*v);
    } else if (key == "retry_backoff_ms") {
      auto v = integer(0, std::chrono::milliseconds(jobs::kMaxRetryDelay).count());
      if (!v) return MakeError(v.error());
      spec.retry_backoff = std::chrono::milliseconds(*v);
    } else if (key == "idempotency_key") {
      ok = text(&spec.idempotency_key);
      if (ok && spec.idempotency_key.size() > kMaxIdempotencyKey) return bad("idempotency_key is too long");
    } else {
      return bad("unknown field \"" + std::string(key) + "\"");
    }
    if (!ok) return MakeError(ok.error());
  }
  if (spec.export_name.empty()) return bad("\"export\" is required");
  if (auto why = InternalExportReason(spec.export_name)) return MakeError(ErrorCode::kNotFound, *why);
  if (module_name.empty() == spec.module_digest.empty()) return bad("give one of \"module\" or \"module_digest\"");
  return ParsedJob{std::move(spec), std::move(module_name)};
}

// Checks the job's export against `entry`, the module named in the body,
// and makes the job run that module's bytes.
Result<void> UseModule(const ModuleEntry& entry, ParsedJob& job) {
  jobs::JobSpec& spec = job.spec;
  const Module::Export* exp = entry.module->FindExport(spec.export_name);
  if (!exp || exp->kind != ExternKind::kFunc) {
    return MakeError(ErrorCode::kNotFound,
                     "module '" + job.module_name + "' has no function export '" + spec.export_name + "'");
  }
  if (!exp->byte_callable) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "jobs are byte calls, and '" + spec.export_name + "' does not follow the byte convention");
  }
  spec.module_digest = entry.module->digest();
  return {};
}

boost::asio::awaitable<Response> Submit(Service& service, RequestContext& ctx) {
  const auto& body = ctx.request.body();
  auto job = ParseJobSpec(service, std::string_view(reinterpret_cast<const char*>(body.data()), body.size()));
  if (!job) co_return ErrorResponse(job.error());
  if (!job->module_name.empty()) {
    auto loading = service.LoadModule(job->module_name);
    auto entry = co_await std::move(loading);
    if (!entry) co_return ErrorResponse(entry.error());
    if (auto used = UseModule(**entry, *job); !used) co_return ErrorResponse(used.error());
  }
  auto submit = [&service, spec = std::move(job->spec)] { return service.store().Submit(spec); };
  auto submitted = co_await OffThread(service, std::move(submit));
  // NUL or invalid UTF-8 in the key: 400 from the store, never truncated.
  if (!submitted) co_return ErrorResponse(submitted.error());
  Response res;
  if (submitted->conflict) {
    // The key already names other work: it stays that job's.
    json::object existing{{"id", submitted->id}, {"module_digest", submitted->module_digest}};
    Error taken(ErrorCode::kAlreadyExists,
                "the idempotency key names job " + submitted->id + ", submitted with other work");
    res = ErrorResponse(409, taken, std::move(existing));
  } else {
    res = JsonResponse(submitted->created ? 202 : 200,
                       json::value{{"id", submitted->id},
                                   {"created", submitted->created},
                                   {"module_digest", submitted->module_digest}});
  }
  res.set(http::field::location, "/v1/jobs/" + submitted->id);
  co_return res;
}

boost::asio::awaitable<Response> List(Service& service, RequestContext& ctx) {
  jobs::ListFilter filter;
  auto state = QueryParam(ctx.query, "state");
  auto limit = QueryParam(ctx.query, "limit");
  auto order = QueryParam(ctx.query, "order");
  for (const auto* param : {&state, &limit, &order}) {
    if (!*param) co_return ErrorResponse(param->error());
  }
  if (*state && !(*state)->empty()) {
    filter.state = jobs::ParseJobState(**state);
    if (!filter.state) co_return BadRequest("unknown job state '" + **state + "'");
  }
  if (*limit) {
    const std::string& text = **limit;
    size_t n = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
    if (ec != std::errc() || end != text.data() + text.size() || n == 0 || n > kMaxListLimit) {
      co_return BadRequest("limit must be 1.." + std::to_string(kMaxListLimit));
    }
    filter.limit = n;
  }
  if (*order) {
    if (**order != "newest" && **order != "oldest") co_return BadRequest("order must be newest or oldest");
    filter.newest_first = **order == "newest";
  }
  auto query = [&service, filter] { return service.store().List(filter); };
  auto list = co_await OffThread(service, std::move(query));
  if (!list) co_return ErrorResponse(list.error());
  json::array items;
  for (const jobs::Job& job : *list) items.push_back(JobJson(job));
  co_return JsonResponse(200, json::value{{"jobs", std::move(items)}});
}

}  // namespace

boost::asio::awaitable<Response> HandleJobs(Service& service, RequestContext& ctx,
                                            const std::vector<std::string>& segments) {
  http::verb method = ctx.request.method();
  if (segments.empty()) {
    if (method == http::verb::post) co_return co_await Submit(service, ctx);
    if (method == http::verb::get) co_return co_await List(service, ctx);
    co_return MethodNotAllowed("GET, POST");
  }
  std::string id = segments[0];
  if (segments.size() == 2) {  // .../result
    if (method != http::verb::get) co_return MethodNotAllowed("GET");
    auto get = [&service, id] { return service.store().Get(id); };
    auto job = co_await OffThread(service, std::move(get));
    if (!job) co_return ErrorResponse(job.error());
    // A cancelled job that was running keeps its result.
    if (job->state == jobs::JobState::kSucceeded || (job->state == jobs::JobState::kCancelled && !job->result.empty())) {
      Response res(http::status::ok, 11);
      res.set(http::field::content_type, "application/octet-stream");
      res.body().assign(job->result.begin(), job->result.end());
      co_return res;
    }
    std::string message = "job " + id + " is " + std::string(jobs::ToString(job->state));
    if (job->error) message += ": " + job->error->ToString();
    json::object extra{{"state", jobs::ToString(job->state)}};
    co_return ErrorResponse(409, Error(ErrorCode::kFailedPrecondition, message), std::move(extra));
  }
  if (method == http::verb::get) {
    auto get = [&service, id] { return service.store().Get(id); };
    auto job = co_await OffThread(service, std::move(get));
    if (!job) co_return ErrorResponse(job.error());
    co_return JsonResponse(200, JobJson(*job));
  }
  if (method == http::verb::delete_) {
    auto abort_text = QueryParam(ctx.query, "abort");
    if (!abort_text) co_return ErrorResponse(abort_text.error());
    const bool abort = *abort_text && **abort_text == "true";
    if (*abort_text && !abort && **abort_text != "false") {
      co_return ErrorResponse(Error(ErrorCode::kInvalidArgument, "?abort= takes true or false"));
    }
    auto cancel = [&service, id, abort] { return service.CancelJob(id, abort); };
    auto outcome = co_await OffThread(service, std::move(cancel));
    if (!outcome) co_return ErrorResponse(outcome.error());
    co_return JsonResponse(200, json::value{{"id", id}, {"outcome", ToString(*outcome)}});
  }
  co_return MethodNotAllowed("GET, DELETE");
}

}  // namespace keel::server
