// keel: inspect and run WebAssembly modules, run job workers, serve.
#include <CLI/CLI.hpp>

#include "base/duration.h"
#include "cli/commands.h"

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

}  // namespace

int main(int argc, char** argv) {
  using namespace keel::cli;
  CLI::App app{"keel: runs WebAssembly calls safely under cancellation"};
  app.require_subcommand(1);

  InspectArgs inspect;
  auto* inspect_cmd = app.add_subcommand("inspect", "Print a module's imports and exports");
  inspect_cmd->add_option("module", inspect.module_path, "Path to a .wasm file")->required();

  RunArgs run;
  std::string run_timeout;
  auto* run_cmd = app.add_subcommand(
      "run", "Run a WASI program's _start, or call one export (--invoke) with numbers or bytes");
  run_cmd->add_option("module", run.module_path, "Path to a .wasm file")->required();
  run_cmd->add_option("--invoke", run.invoke, "Export to call instead of _start");
  run_cmd->add_option("--input", run.input, "With --invoke: make a byte call with this file's bytes (- for stdin)");
  // One value per flag (repeat the flag for more), so that
  // `--dir H::G prog.wasm` does not take prog.wasm as a second directory:
  // CLI11 2.1 lets a vector option take extra values despite expected(1).
  for (auto* repeated : {run_cmd->add_option("--dir", run.dirs, "Preopen HOST[::GUEST] read-write"),
                         run_cmd->add_option("--dir-ro", run.dirs_ro, "Preopen HOST[::GUEST] read-only"),
                         run_cmd->add_option("--env", run.env, "Set K=V in the guest's environment")}) {
    repeated->expected(1)->allow_extra_args(false)->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  }
  run_cmd->add_option("--timeout", run_timeout, "Deadline, e.g. 250ms or 2s")
      ->check(CLI::Validator(DurationInto(&run.timeout), "DURATION"));
  run_cmd->add_option("args", run.values, "Numeric arguments of --invoke, or the program's arguments after --");

  WorkerArgs worker;
  std::string lease;
  auto* worker_cmd = app.add_subcommand("worker", "Run jobs from a shared queue until SIGTERM");
  worker_cmd->add_option("--store", worker.store, "Data directory (SQLite) or postgresql:// URL")->required();
  worker_cmd->add_option("--workers", worker.workers, "Worker threads (default: one per core)");
  worker_cmd->add_option("--name", worker.name, "Lease holder name (default host:pid)");
  worker_cmd->add_option("--max-in-flight", worker.max_in_flight, "Jobs claimed at once");
  worker_cmd->add_option("--lease", lease, "Lease duration, e.g. 30s")
      ->check(CLI::Validator(DurationInto(&worker.lease), "DURATION"));

  ServeArgs serve;
  auto* serve_cmd = AddServeCommand(app, serve);  // serve.cc

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? kExitOk : kExitUsage;
  }
  if (*inspect_cmd) return Inspect(inspect);
  if (*run_cmd) return Run(run);
  if (*worker_cmd) return Worker(worker);
  if (*serve_cmd) return Serve(serve);
  return kExitUsage;
}
