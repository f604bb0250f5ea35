// The `keel` command's subcommands. Each returns the process exit code.
#ifndef KEEL_CLI_COMMANDS_H_
#define KEEL_CLI_COMMANDS_H_

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "server/options.h"

namespace CLI {
class App;
}  // namespace CLI

namespace keel::cli {

// sysexits-style exit codes, shared by every subcommand.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 64;
inline constexpr int kExitBadModule = 65;    // invalid or not instantiable
inline constexpr int kExitNoInput = 66;      // module file missing or unreadable
inline constexpr int kExitDeadline = 124;    // as timeout(1)
inline constexpr int kExitTrap = 134;        // as a process killed by SIGABRT

struct InspectArgs {
  std::string module_path;
};
int Inspect(const InspectArgs& args);

struct RunArgs {
  std::string module_path;
  std::optional<std::string> invoke;    // export to call (any name, "" too); none: _start
  std::string input;                    // with invoke: a byte call's input file, "-" for stdin
  std::vector<std::string> values;      // numeric arguments, or the program's arguments
  std::vector<std::string> dirs;        // HOST[::GUEST], read-write
  std::vector<std::string> dirs_ro;     // HOST[::GUEST], read-only
  std::vector<std::string> env;         // K=V
  std::chrono::nanoseconds timeout{0};  // 0: none
  EngineKind engine = EngineKind::kSpiderMonkey;
};
int Run(const RunArgs& args);  // run.cc; run_args.h parses the command line

struct WorkerArgs {
  std::string store;                    // data directory or postgresql:// URL
  int workers = 0;
  std::string name;
  size_t max_in_flight = 256;
  std::chrono::nanoseconds lease{std::chrono::seconds(30)};
  size_t commit_lanes = 0;  // PostgreSQL write connections; 0: the store's default
};
// Runs jobs from a shared queue until SIGTERM or SIGINT.
int Worker(const WorkerArgs& args);

// `keel serve` (serve.cc): the HTTP service, until SIGTERM or SIGINT.
struct ServeArgs {
  server::ServerOptions options;
  std::string token_file;
};
// Registers the subcommand and its options, filling `args` when parsed.
CLI::App* AddServeCommand(CLI::App& app, ServeArgs& args);
// --commit-lanes N (1..64) on `cmd` (serve, worker), into `lanes`.
void AddCommitLanesOption(CLI::App& cmd, size_t& lanes);
int Serve(const ServeArgs& args);

}  // namespace keel::cli

#endif  // KEEL_CLI_COMMANDS_H_
