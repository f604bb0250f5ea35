// keel: inspect and run WebAssembly modules, run job workers, serve.
#include <CLI/CLI.hpp>

#include "base/duration.h"
#include "cli/commands.h"
#include "cli/run_args.h"
#include "keel/runtime.h"
#include "keel/version.h"

namespace {

// CLI11 validator+converter for durations like 250ms or 2s.
std::function<std::string(const std::string&)> DurationInto(std::chrono::nanoseconds* out) {
  return [out](const std::string& text) -> std::string {
    auto d = keel::ParseDuration(text);
    if (!d) return d.error().message;
    *out = *d;
    return "";
  };
}

// "keel 0.1.0 (engines: spidermonkey, wasmtime)": the engines this build
// has, which scripts (the WASI test suite's runner) read to test each.
std::string VersionLine() {
  std::string line = "keel " KEEL_VERSION_STRING " (engines:";
  const char* separator = " ";
  for (keel::EngineKind kind : keel::AvailableEngines()) {
    line.append(separator).append(keel::ToString(kind));
    separator = ", ";
  }
  return line + ")";
}

}  // namespace

int main(int argc, char** argv) {
  using namespace keel::cli;
  if (argc >= 2 && std::string_view(argv[1]) == "run") {
    return RunCommand(std::vector<std::string>(argv + 2, argv + argc));
  }
  CLI::App app{"keel: runs WebAssembly calls safely under cancellation"};
  app.require_subcommand(1);
  app.set_version_flag("--version", VersionLine());

  InspectArgs inspect;
  auto* inspect_cmd = app.add_subcommand("inspect", "Print a module's imports and exports");
  inspect_cmd->add_option("module", inspect.module_path, "Path to a .wasm file")->required();

  // Listed here for `keel --help`; its words are parsed by run_args.cc.
  app.add_subcommand("run",
                     "Run a WASI program's _start, or call one export (--invoke) with numbers or bytes");

  WorkerArgs worker;
  std::string lease;
  auto* worker_cmd = app.add_subcommand("worker", "Run jobs from a shared queue until SIGTERM");
  worker_cmd->add_option("--store", worker.store, "Data directory (SQLite) or postgresql:// URL")->required();
  worker_cmd->add_option("--workers", worker.workers, "Worker threads (default: one per core)");
  worker_cmd->add_option("--name", worker.name, "Lease holder name (default host:pid)");
  worker_cmd->add_option("--max-in-flight", worker.max_in_flight, "Jobs claimed at once");
  worker_cmd->add_option("--lease", lease, "Lease duration, e.g. 30s")
      ->check(CLI::Validator(DurationInto(&worker.lease), "DURATION"));
  AddCommitLanesOption(*worker_cmd, worker.commit_lanes);

  ServeArgs serve;
  auto* serve_cmd = AddServeCommand(app, serve);  // serve.cc

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? kExitOk : kExitUsage;
  }
  if (*inspect_cmd) return Inspect(inspect);
  if (*worker_cmd) return Worker(worker);
  if (*serve_cmd) return Serve(serve);
  return kExitUsage;
}
