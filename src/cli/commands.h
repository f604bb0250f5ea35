// The `keel` command's subcommands. Each returns the process exit code.
#ifndef KEEL_CLI_COMMANDS_H_
#define KEEL_CLI_COMMANDS_H_

#include <string>
#include <vector>

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
  std::string invoke;                   // export to call
  std::vector<std::string> values;      // its arguments, as text
};
int Run(const RunArgs& args);

}  // namespace keel::cli

#endif  // KEEL_CLI_COMMANDS_H_
