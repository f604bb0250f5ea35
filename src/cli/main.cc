// keel: inspect and run WebAssembly modules (and, later, serve them).
#include <CLI/CLI.hpp>

#include "cli/commands.h"

int main(int argc, char** argv) {
  using namespace keel::cli;
  CLI::App app{"keel: runs WebAssembly calls safely under cancellation"};
  app.require_subcommand(1);

  InspectArgs inspect;
  auto* inspect_cmd = app.add_subcommand("inspect", "Print a module's imports and exports");
  inspect_cmd->add_option("module", inspect.module_path, "Path to a .wasm file")->required();

  RunArgs run;
  auto* run_cmd = app.add_subcommand("run", "Call an export of a module");
  run_cmd->add_option("module", run.module_path, "Path to a .wasm file")->required();
  run_cmd->add_option("--invoke", run.invoke, "Export to call with numeric arguments")->required();
  run_cmd->add_option("args", run.values, "Arguments of the export, as text");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? kExitOk : kExitUsage;
  }
  if (*inspect_cmd) return Inspect(inspect);
  if (*run_cmd) return Run(run);
  return kExitUsage;
}
