#include <cstdio>

#include "base/file.h"
#include "cli/commands.h"
#include "engine/engine.h"

namespace keel::cli {
namespace {

int ExitCodeFor(const Error& error) {
  switch (error.code) {
    case ErrorCode::kInvalidModule:
    case ErrorCode::kLinkError:
    case ErrorCode::kResourceExhausted:
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

int Fail(const Error& error) {
  std::fprintf(stderr, "keel: %s\n", error.ToString().c_str());
  if (!error.backtrace.empty()) std::fprintf(stderr, "wasm backtrace:\n%s", error.backtrace.c_str());
  return ExitCodeFor(error);
}

}  // namespace

int Run(const RunArgs& args) {
  auto bytes = ReadFile(args.module_path);
  if (!bytes) {
    std::fprintf(stderr, "keel: %s\n", bytes.error().message.c_str());
    return kExitNoInput;
  }
  engine::Engine& engine = engine::DefaultEngine();
  auto module = engine.Compile(*bytes);
  if (!module) return Fail(module.error());
  auto ctx = engine.NewContext();
  if (!ctx) return Fail(ctx.error());

  uint64_t tag = 0;
  int code = kExitOk;
  {
    auto instance = (*ctx)->Instantiate(*module, std::make_shared<engine::Linker>(), nullptr, ++tag);
    if (!instance) {
      // A trap while starting means the module cannot be instantiated.
      Error error = instance.error();
      if (error.code == ErrorCode::kTrap && error.trap != TrapKind::kExit) {
        std::fprintf(stderr, "keel: instantiation failed: %s\n", error.ToString().c_str());
        return kExitBadModule;
      }
      return Fail(error);
    }
    auto func = (*instance)->Lookup(args.invoke);
    if (!func) return Fail(func.error());
    const FuncType& type = *func->type;
    if (args.values.size() != type.params.size()) {
      return Fail(Error(ErrorCode::kInvalidArgument,
                        "export '" + args.invoke + "' takes " + std::to_string(type.params.size()) +
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
    auto called = (*instance)->Call(*func, values, results, ++tag);
    if (!called) {
      code = Fail(called.error());
    } else {
      for (const Value& r : results) std::printf("%s\n", r.ToString().c_str());
    }
  }
  return code;
}

}  // namespace keel::cli
