// Runs a program as a child process, feeding stdin and capturing stdout,
// stderr and the exit status. For tests of keel's own binaries.
#ifndef KEEL_TESTS_TESTING_SUBPROCESS_H_
#define KEEL_TESTS_TESTING_SUBPROCESS_H_

#include <string>
#include <vector>

namespace keel::testing {

struct ProcessResult {
  int exit_code = -1;   // or 128 + signal
  std::string out;
  std::string err;
};

// Runs argv[0] with argv (no shell), waiting for it to exit.
ProcessResult RunProcess(const std::vector<std::string>& argv, const std::string& stdin_data = "");

// Starts argv[0] with argv in the background, stdin from /dev/null and
// stdout/stderr to `log_path` (appended). Returns its pid, or -1.
int SpawnProcess(const std::vector<std::string>& argv, const std::string& log_path);

// Waits for `pid` to exit; returns its exit code, or 128 + signal.
int WaitProcess(int pid);

}  // namespace keel::testing

#endif  // KEEL_TESTS_TESTING_SUBPROCESS_H_
