// `keel run`: a WASI program's _start with stdio passed through, or one
// export called with numbers or bytes. It runs the way an embedder would,
// through the public API only: a runtime with one worker, a pool of one
// instance with the WASI options of keel/wasi.h, and one call whose
// deadline is --timeout (queue time, instantiation and the run).
#include <unistd.h>

#include <cstdio>
#include <optional>
#include <vector>

#include "base/file.h"
#include "cli/commands.h"
#include "keel/runtime.h"
#include "keel/wasi.h"

namespace keel::cli {
namespace {

using std::chrono::milliseconds;

// A bound for instantiation and the start check when --timeout is not
// given: keel run then waits for the guest as long as it takes.
constexpr milliseconds kNoTimeout = std::chrono::hours(24 * 365);

int ExitCodeFor(const Error& error) {
  switch (error.code) {
    case ErrorCode::kInvalidModule:
    case ErrorCode::kLinkError:
    case ErrorCode::kUnavailable:  // the instance could not be built
      return kExitBadModule;
    case ErrorCode::kTrap:
      return error.trap == TrapKind::kExit ? error.exit_code : kExitTrap;
    case ErrorCode::kDeadlineExceeded:
    case ErrorCode::kInterrupted:
      return kExitDeadline;
    case ErrorCode::kInvalidArgument:
    case ErrorCode::kNotFound:
      return kExitUsage;
    default:
      return kExitFailure;
  }
}

int Fail(Error error) {
  if (error.code == ErrorCode::kTrap && error.trap == TrapKind::kExit) return error.exit_code;
  if (error.code == ErrorCode::kDeadlineExceeded) {
    error.message = "the run exceeded its --timeout (" + error.message + ")";
  }
  std::fprintf(stderr, "keel: %s\n", error.ToString().c_str());
  if (!error.backtrace.empty()) std::fprintf(stderr, "wasm backtrace:\n%s", error.backtrace.c_str());
  return ExitCodeFor(error);
}

Result<WasiPreopen> ParseDir(const std::string& spec, bool read_only) {
  size_t sep = spec.find("::");
  WasiPreopen preopen;
  preopen.host_path = sep == std::string::npos ? spec : spec.substr(0, sep);
  preopen.guest_path = sep == std::string::npos ? spec : spec.substr(sep + 2);
  preopen.read_only = read_only;
  if (preopen.host_path.empty() || preopen.guest_path.empty()) {
    return MakeError(ErrorCode::kInvalidArgument, "--dir wants HOST[::GUEST], got '" + spec + "'");
  }
  return preopen;
}

Result<WasiOptions> MakeWasi(const RunArgs& args, bool program) {
  WasiOptions wasi;
  wasi.args.push_back(args.module_path);
  if (program) wasi.args.insert(wasi.args.end(), args.values.begin(), args.values.end());
  for (const std::string& kv : args.env) {
    size_t eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) {
      return MakeError(ErrorCode::kInvalidArgument, "--env wants K=V, got '" + kv + "'");
    }
    wasi.env.emplace_back(kv.substr(0, eq), kv.substr(eq + 1));
  }
  for (const auto& [dirs, read_only] : {std::pair{&args.dirs, false}, std::pair{&args.dirs_ro, true}}) {
    for (const std::string& d : *dirs) {
      auto p = ParseDir(d, read_only);
      if (!p) return MakeError(p.error());
      wasi.preopens.push_back(*p);
    }
  }
  // A byte call reads its input from --input, so only programs get stdin.
  wasi.stdin_io = program ? WasiStdio::Inherit(0) : WasiStdio::Null();
  wasi.stdout_io = WasiStdio::Inherit(1);
  wasi.stderr_io = WasiStdio::Inherit(2);
  return wasi;
}

Result<std::vector<Value>> ParseArgs(const Module& module, const RunArgs& args) {
  const Module::Export* exp = module.FindExport(*args.invoke);
  if (exp == nullptr || exp->kind != ExternKind::kFunc) return std::vector<Value>{};  // Submit says why
  const FuncType& type = exp->type;
  if (args.values.size() != type.params.size()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "export '" + *args.invoke + "' takes " + std::to_string(type.params.size()) +
                         " argument(s) " + type.ToString() + ", got " + std::to_string(args.values.size()));
  }
  std::vector<Value> values;
  for (size_t i = 0; i < type.params.size(); ++i) {
    auto v = ParseValue(type.params[i], args.values[i]);
    if (!v) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "argument " + std::to_string(i + 1) + " '" + args.values[i] + "' is not a valid " +
                           std::string(ToString(type.params[i])));
    }
    values.push_back(*v);
  }
  return values;
}

int WriteAll(const std::vector<uint8_t>& bytes) {
  std::fflush(stdout);
  size_t written = 0;
  while (written < bytes.size()) {
    ssize_t n = ::write(1, bytes.data() + written, bytes.size() - written);
    if (n <= 0) return kExitFailure;
    written += static_cast<size_t>(n);
  }
  return kExitOk;
}

// Submits the run's one call: _start, a byte call of `input` or a numeric
// one.
Result<Call> SubmitRun(Pool& pool, const Module& module, const RunArgs& args,
                       std::optional<std::vector<uint8_t>> input, const CallOptions& options) {
  if (!args.invoke) return pool.Submit("_start", {}, options);
  if (input) return pool.SubmitBytes(*args.invoke, std::move(*input), options);
  auto values = ParseArgs(module, args);
  if (!values) return MakeError(values.error());
  return pool.Submit(*args.invoke, std::move(*values), options);
}

// The pool of the run: one instance, built once (a failure to build it
// fails the call at once instead of being retried), byte limits as keel's.
Result<std::shared_ptr<Pool>> MakePool(Runtime& runtime, std::shared_ptr<const Module> module,
                                       const RunArgs& args, milliseconds timeout) {
  auto wasi = MakeWasi(args, !args.invoke);
  if (!wasi) return MakeError(wasi.error());
  auto options = WithWasi({.instances = 1,
                           .max_queue = 1,
                           .quarantine = {.failures = 1},
                           .instantiate_timeout = timeout.count() > 0 ? timeout : kNoTimeout},
                          std::move(*wasi));
  if (!options) return MakeError(options.error());
  return runtime.CreatePool(std::move(module), std::move(*options));
}

int Finish(const RunArgs& args, const CallResult& result) {
  if (!result) return Fail(result.error());
  if (!args.invoke) return kExitOk;
  if (!args.input.empty()) return WriteAll(result->bytes);
  for (const Value& r : result->values) std::printf("%s\n", r.ToString().c_str());
  return kExitOk;
}

}  // namespace

int Run(const RunArgs& args) {
  auto bytes = ReadFile(args.module_path);
  if (!bytes) {
    std::fprintf(stderr, "keel: %s\n", bytes.error().message.c_str());
    return kExitNoInput;
  }
  if (!args.input.empty() && !args.invoke) {
    return Fail(Error(ErrorCode::kInvalidArgument, "--input needs --invoke NAME"));
  }
  auto timeout = std::chrono::ceil<milliseconds>(args.timeout);
  auto runtime = Runtime::Create({.engine = args.engine, .workers = 1});
  if (!runtime) return Fail(runtime.error());
  auto module = (*runtime)->Compile(
      *bytes, {.name = args.module_path, .start_timeout = timeout.count() > 0 ? timeout : kNoTimeout});
  if (!module) return Fail(module.error());
  if (!args.invoke && (*module)->FindExport("_start") == nullptr) {
    return Fail(Error(ErrorCode::kInvalidArgument, "the module has no _start: name an export with --invoke NAME"));
  }
  auto pool = MakePool(**runtime, *module, args, timeout);
  if (!pool) return Fail(pool.error());
  std::optional<std::vector<uint8_t>> input;
  if (!args.input.empty()) {
    auto read = args.input == "-" ? ReadAll(0) : ReadFile(args.input);
    if (!read) {
      std::fprintf(stderr, "keel: %s\n", read.error().message.c_str());
      return kExitNoInput;
    }
    input = std::move(*read);
  }
  auto call = SubmitRun(**pool, **module, args, std::move(input), {.timeout = timeout});
  if (!call) return Fail(call.error());
  int code = Finish(args, call->Wait());
  std::fflush(stdout);
  return code;
}

}  // namespace keel::cli
