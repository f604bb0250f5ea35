// The command line of `keel run [OPTIONS] MODULE [ARGS...]`, parsed by hand:
// keel's options may stand before or after MODULE, every other word after
// MODULE goes to the guest in order (even one that starts with '-'), `--`
// ends keel's options, and an option's value is taken verbatim (the empty
// string, or a word that starts with '-', included). CLI11 splits words
// differently (it reads `--invoke=` as wanting the next word and drops a
// trailing `--`), so this subcommand does not go through it.
#ifndef KEEL_CLI_RUN_ARGS_H_
#define KEEL_CLI_RUN_ARGS_H_

#include <string>
#include <vector>

#include "cli/commands.h"
#include "keel/status.h"

namespace keel::cli {

struct RunCommandLine {
  RunArgs args;
  bool help = false;  // -h or --help before `--`: print RunUsage() and exit
};

// `words` are the words after `run`. Errors name the word that was wrong.
[[nodiscard]] Result<RunCommandLine> ParseRunCommandLine(const std::vector<std::string>& words);

// The text of `keel run --help`, with the rule above.
std::string RunUsage();

// Parses `words` (those after `run`), then runs; returns the exit code.
int RunCommand(const std::vector<std::string>& words);

}  // namespace keel::cli

#endif  // KEEL_CLI_RUN_ARGS_H_
