// `keel run`: a WASI program's _start with stdio passed through, or one
// export called with numbers or bytes. Runs on this thread with the engine
// directly; a deadline thread interrupts the guest when --timeout passes.
#include <unistd.h>

#include <cstdio>
#include <thread>

#include "abi/bytecall.h"
#include "abi/wasi.h"
#include "base/file.h"
#include "base/mutex.h"
#include "cli/commands.h"
#include "engine/engine.h"

namespace keel::cli {
namespace {

int ExitCodeFor(const Error& error) {
  switch (error.code) {
    case ErrorCode::kInvalidModule:
    case ErrorCode::kLinkError:
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

int Fail(Error error, bool deadline_fired = false) {
  if (error.code == ErrorCode::kTrap && error.trap == TrapKind::kExit) return error.exit_code;
  if (error.code == ErrorCode::kInterrupted && deadline_fired) {
    error = Error(ErrorCode::kDeadlineExceeded, "the run exceeded its --timeout");
  }
  std::fprintf(stderr, "keel: %s\n", error.ToString().c_str());
  if (!error.backtrace.empty()) std::fprintf(stderr, "wasm backtrace:\n%s", error.backtrace.c_str());
  return ExitCodeFor(error);
}

// Interrupts the run when the deadline passes, unless disarmed first.
class DeadlineThread {
 public:
  DeadlineThread(std::shared_ptr<engine::Interrupter> interrupter, std::chrono::nanoseconds timeout)
      : interrupter_(std::move(interrupter)) {
    if (timeout.count() <= 0) return;
    const auto until = std::chrono::steady_clock::now() + timeout;
    thread_ = std::thread([this, until] { Watch(until); });
  }
  ~DeadlineThread() {
    {
      MutexLock lock(mu_);
      done_ = true;
    }
    cv_.SignalAll();
    if (thread_.joinable()) thread_.join();
  }
  bool fired() EXCLUDES(mu_) {
    MutexLock lock(mu_);
    return fired_;
  }
  // Every engine call of this run (start, _initialize, the call itself)
  // shares one tag: the deadline covers all of them.
  static constexpr uint64_t kTag = 1;

 private:
  void Watch(std::chrono::steady_clock::time_point until) EXCLUDES(mu_) {
    MutexLock lock(mu_);
    while (!done_ && std::chrono::steady_clock::now() < until) cv_.WaitUntil(mu_, until);
    if (done_) return;
    fired_ = true;
    // Under the lock so the run cannot end between the check and the
    // request (Request only flags the engine; it runs no callback).
    interrupter_->Request(kTag);
  }

  std::shared_ptr<engine::Interrupter> interrupter_;
  Mutex mu_;
  CondVar cv_;
  bool done_ GUARDED_BY(mu_) = false;
  bool fired_ GUARDED_BY(mu_) = false;
  std::thread thread_;
};

Result<abi::WasiPreopen> ParseDir(const std::string& spec, bool read_only) {
  size_t sep = spec.find("::");
  abi::WasiPreopen preopen;
  preopen.host_path = sep == std::string::npos ? spec : spec.substr(0, sep);
  preopen.guest_path = sep == std::string::npos ? spec : spec.substr(sep + 2);
  preopen.read_only = read_only;
  if (preopen.host_path.empty() || preopen.guest_path.empty()) {
    return MakeError(ErrorCode::kInvalidArgument, "--dir wants HOST[::GUEST], got '" + spec + "'");
  }
  return preopen;
}

Result<abi::WasiConfig> MakeWasiConfig(const RunArgs& args, bool program) {
  abi::WasiConfig config;
  config.args.push_back(args.module_path);
  if (program) config.args.insert(config.args.end(), args.values.begin(), args.values.end());
  for (const std::string& kv : args.env) {
    size_t eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) {
      return MakeError(ErrorCode::kInvalidArgument, "--env wants K=V, got '" + kv + "'");
    }
    config.env.emplace_back(kv.substr(0, eq), kv.substr(eq + 1));
  }
  for (const std::string& d : args.dirs) {
    auto p = ParseDir(d, false);
    if (!p) return MakeError(p.error());
    config.preopens.push_back(*p);
  }
  for (const std::string& d : args.dirs_ro) {
    auto p = ParseDir(d, true);
    if (!p) return MakeError(p.error());
    config.preopens.push_back(*p);
  }
  // A byte call reads its input from --input, so only programs get stdin.
  config.stdin_io = program ? abi::WasiStdio::Inherit(0) : abi::WasiStdio::Null();
  config.stdout_io = abi::WasiStdio::Inherit(1);
  config.stderr_io = abi::WasiStdio::Inherit(2);
  return config;
}

int CallNumeric(engine::Instance& instance, const RunArgs& args, DeadlineThread& deadline) {
  auto func = instance.Lookup(*args.invoke);
  if (!func) return Fail(func.error());
  const FuncType& type = *func->type;
  if (args.values.size() != type.params.size()) {
    return Fail(Error(ErrorCode::kInvalidArgument,
                      "export '" + *args.invoke + "' takes " + std::to_string(type.params.size()) +
                          " argument(s) " + type.ToString() + ", got " +
                          std::to_string(args.values.size())));
  }
  std::vector<Value> values;
  for (size_t i = 0; i < type.params.size(); ++i) {
    auto v = ParseValue(type.params[i], args.values[i]);
    if (!v) {
      return Fail(Error(ErrorCode::kInvalidArgument,
                        "argument " + std::to_string(i + 1) + " '" + args.values[i] +
                            "' is not a valid " + std::string(ToString(type.params[i]))));
    }
    values.push_back(*v);
  }
  std::vector<Value> results(type.results.size());
  auto called = instance.Call(*func, values, results, DeadlineThread::kTag);
  if (!called) return Fail(called.error(), deadline.fired());
  for (const Value& r : results) std::printf("%s\n", r.ToString().c_str());
  return kExitOk;
}

int CallBytes(engine::Instance& instance, const RunArgs& args, DeadlineThread& deadline) {
  auto input = args.input == "-" ? ReadAll(0) : ReadFile(args.input);
  if (!input) {
    std::fprintf(stderr, "keel: %s\n", input.error().message.c_str());
    return kExitNoInput;
  }
  auto output = abi::CallBytes(instance, *args.invoke, *input, {}, DeadlineThread::kTag);
  if (!output) return Fail(output.error(), deadline.fired());
  std::fflush(stdout);
  size_t written = 0;
  while (written < output->size()) {
    ssize_t n = ::write(1, output->data() + written, output->size() - written);
    if (n <= 0) return kExitFailure;
    written += static_cast<size_t>(n);
  }
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
  engine::Engine& engine = engine::DefaultEngine();
  auto module = engine.Compile(*bytes);
  if (!module) return Fail(module.error());
  bool program = !args.invoke;
  if (program && !(*module)->info().FindFuncExport("_start")) {
    return Fail(Error(ErrorCode::kInvalidArgument,
                      "the module has no _start: name an export with --invoke NAME"));
  }
  auto config = MakeWasiConfig(args, program);
  if (!config) return Fail(config.error());
  auto wasi = abi::WasiContext::Create(*config);
  if (!wasi) return Fail(wasi.error());
  auto linker = std::make_shared<engine::Linker>();
  abi::AddWasiToLinker(*linker);

  auto ctx = engine.NewContext();
  if (!ctx) return Fail(ctx.error());
  int code;
  {
    DeadlineThread deadline((*ctx)->interrupter(), args.timeout);
    auto instance = (*ctx)->Instantiate(*module, linker, std::move(*wasi), DeadlineThread::kTag);
    if (!instance) {
      Error error = instance.error();
      if (error.code == ErrorCode::kTrap && error.trap != TrapKind::kExit) {
        std::fprintf(stderr, "keel: instantiation failed: %s\n", error.ToString().c_str());
        return kExitBadModule;
      }
      return Fail(error, deadline.fired());
    }
    if (program) {
      auto run = (*instance)->Invoke("_start", {}, DeadlineThread::kTag);
      code = run ? kExitOk : Fail(run.error(), deadline.fired());
    } else if (!args.input.empty()) {
      code = CallBytes(**instance, args, deadline);
    } else {
      code = CallNumeric(**instance, args, deadline);
    }
  }
  std::fflush(stdout);
  return code;
}

}  // namespace keel::cli
