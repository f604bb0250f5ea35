// /v1/modules: upload, list, inspect and delete modules.
#include <map>

#include <boost/json.hpp>

#include "server/api.h"

namespace keel::server {

namespace json = boost::json;

namespace {

json::array Types(const std::vector<ValType>& types) {
  json::array out;
  for (ValType t : types) out.push_back(json::string(ToString(t)));
  return out;
}

json::object ModuleJson(const ModuleEntry& entry, bool detail) {
  const Module& module = *entry.module;
  json::array exports;
  for (const Module::Export& e : module.exports()) {
    if (e.kind != ExternKind::kFunc) continue;  // memories and globals cannot be called
    json::object exp{
        {"name", e.name},
        {"type", e.type.ToString()},
        {"params", Types(e.type.params)},
        {"results", Types(e.type.results)},
        {"byte_callable", e.byte_callable},
    };
    if (InternalExportReason(e.name)) exp["internal"] = true;
    exports.push_back(std::move(exp));
  }
  json::object out{
      {"name", entry.name},
      {"digest", module.digest()},
      {"size_bytes", module.size_bytes()},
      {"source", entry.persisted ? "upload" : "directory"},
      {"state", ToString(entry.state)},
      {"loaded_at", FormatTime(entry.loaded_at)},
      {"exports", std::move(exports)},
      {"compiled", true},
  };
  // The registry version of the upload, shared by every node.
  if (entry.persisted) out["version"] = entry.version;
  if (detail) {
    json::array imports;
    for (const Module::Import& i : module.imports()) {
      imports.push_back({{"module", i.module}, {"name", i.name}, {"type", i.description}});
    }
    out["imports"] = std::move(imports);
    PoolStats stats = entry.pool->Stats();
    out["pool"] = {
        {"target", stats.target_instances},
        {"healthy", stats.healthy_instances},
        {"busy", stats.busy_instances},
        {"queued", stats.queued},
        {"quarantined", stats.quarantined},
        {"quarantine_reason", stats.quarantine_reason},
    };
  }
  return out;
}

// Every name, sorted; names another node uploaded and nobody has used here
// yet have no exports to show (not compiled: "compiled": false).
json::array ModulesJson(const Registry& registry) {
  std::map<std::string, json::object> sorted;
  for (const auto& entry : registry.List()) sorted[entry->name] = ModuleJson(*entry, /*detail=*/false);
  for (const jobs::ModuleName& known : registry.Unloaded()) {
    sorted[known.name] = {
        {"name", known.name},   {"digest", known.digest}, {"source", "upload"},
        {"state", known.state}, {"version", known.version}, {"compiled", false},
    };
  }
  json::array out;
  for (auto& [name, module] : sorted) out.push_back(std::move(module));
  return out;
}

}  // namespace

boost::asio::awaitable<Response> HandleModules(Service& service, RequestContext& ctx,
                                               const std::vector<std::string>& segments) {
  http::verb method = ctx.request.method();
  Registry& registry = service.registry();
  if (segments.empty()) {
    if (method != http::verb::get) co_return MethodNotAllowed("GET");
    co_return JsonResponse(200, json::value{{"modules", ModulesJson(registry)}});
  }
  const std::string& name = segments[0];
  switch (method) {
    case http::verb::get: {
      auto loading = service.LoadModule(name);
      auto entry = co_await std::move(loading);
      if (!entry) co_return ErrorResponse(entry.error());
      co_return JsonResponse(200, ModuleJson(**entry, /*detail=*/true));
    }
    case http::verb::put: {
      auto state_text = QueryParam(ctx.query, "state");
      if (!state_text) co_return ErrorResponse(state_text.error());
      std::optional<StatePolicy> state;
      if (*state_text) {
        auto parsed = ParseStatePolicy(**state_text);
        if (!parsed) co_return ErrorResponse(Error(ErrorCode::kInvalidArgument, "?state=: " + parsed.error().message));
        state = *parsed;
      }
      std::vector<uint8_t> bytes = std::move(ctx.request.body());
      // Compiling and committing the bytes can take a while: on the
      // compile threads, so that queries are not held up.
      auto put = [&registry, name, bytes = std::move(bytes), state]() -> Response {
        auto added = registry.Put(name, bytes, /*persist=*/true, state);
        if (!added) {
          // A module the service cannot run is the client's problem.
          int status = added.error().code == ErrorCode::kResourceExhausted ? 400 : StatusForError(added.error());
          return ErrorResponse(status, added.error());
        }
        return JsonResponse(added->created ? 201 : 200, ModuleJson(*added->entry, /*detail=*/true));
      };
      co_return co_await OffThread(service.compiling(), std::move(put));
    }
    case http::verb::delete_: {
      auto remove = [&registry, name] { return registry.Remove(name); };
      auto removed = co_await OffThread(service, std::move(remove));
      if (!removed) co_return ErrorResponse(removed.error());
      co_return JsonResponse(200, json::value{{"name", name}, {"digest", *removed}, {"deleted", true}});
    }
    default:
      co_return MethodNotAllowed("GET, PUT, DELETE");
  }
}

}  // namespace keel::server
