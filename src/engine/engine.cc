#include "engine/engine.h"

#include <cstring>
#include <string>

#include "base/names.h"

namespace keel {
namespace {

// Returns the subspan [offset, offset+len) of `memory`, or an error naming
// the range when it does not fit (checked without overflow).
Result<std::span<uint8_t>> Slice(std::span<uint8_t> memory, uint64_t offset, uint64_t len) {
  if (offset > memory.size() || len > memory.size() - offset) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "memory range [" + std::to_string(offset) + ", +" + std::to_string(len) +
                         ") is outside linear memory of " + std::to_string(memory.size()) +
                         " bytes");
  }
  return memory.subspan(offset, len);
}

Result<void> CopyOut(std::span<uint8_t> memory, uint64_t offset, std::span<uint8_t> out) {
  auto src = Slice(memory, offset, out.size());
  if (!src) return MakeError(src.error());
  if (!out.empty()) std::memcpy(out.data(), src->data(), out.size());
  return {};
}

Result<void> CopyIn(std::span<uint8_t> memory, uint64_t offset, std::span<const uint8_t> in) {
  auto dst = Slice(memory, offset, in.size());
  if (!dst) return MakeError(dst.error());
  if (!in.empty()) std::memcpy(dst->data(), in.data(), in.size());
  return {};
}

}  // namespace

Result<void> Caller::Read(uint64_t offset, std::span<uint8_t> out) {
  return CopyOut(Memory(), offset, out);
}

Result<void> Caller::Write(uint64_t offset, std::span<const uint8_t> in) {
  return CopyIn(Memory(), offset, in);
}

void Linker::Define(std::string module, std::string name, FuncType type, HostFunc fn) {
  entries_[{std::move(module), std::move(name)}] = Entry{std::move(type), std::move(fn)};
}

const Linker::Entry* Linker::Find(std::string_view module, std::string_view name) const {
  auto it = entries_.find(std::pair<std::string, std::string>(module, name));
  return it == entries_.end() ? nullptr : &it->second;
}

}  // namespace keel

namespace keel::engine {

Result<void> Instance::Snapshot(const SnapshotOptions&) {
  return MakeError(ErrorCode::kFailedPrecondition, "this engine cannot snapshot instances");
}

Result<ResetStats> Instance::Reset() {
  Poison("reset failed: this engine cannot reset instances");
  return MakeError(ErrorCode::kFailedPrecondition, "this engine cannot reset instances");
}

Result<void> Instance::ReadMemory(uint64_t offset, std::span<uint8_t> out) {
  return CopyOut(Memory(), offset, out);
}

Result<void> Instance::WriteMemory(uint64_t offset, std::span<const uint8_t> in) {
  return CopyIn(Memory(), offset, in);
}

Result<std::vector<Value>> Instance::Invoke(std::string_view name, std::span<const Value> args,
                                            uint64_t call_tag) {
  auto func = Lookup(name);
  if (!func) return MakeError(func.error());
  std::vector<Value> results(func->type->results.size());
  if (auto ok = Call(*func, args, results, call_tag); !ok) return MakeError(ok.error());
  return results;
}

Result<Func> LookupFunc(const ModuleInfo& info, std::string_view name) {
  for (uint32_t i = 0; i < info.exports.size(); ++i) {
    const ExportInfo& e = info.exports[i];
    if (e.name != name) continue;
    if (e.kind != ExternKind::kFunc) {
      return MakeError(ErrorCode::kNotFound, "export " + MessageName(name) + " is not a function");
    }
    if (!e.func_supported) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "export " + MessageName(name) + " has type " + e.signature +
                           ": keel passes only i32, i64, f32 and f64 (not v128 or references)");
    }
    return Func{i, &e.func};
  }
  return MakeError(ErrorCode::kNotFound, "no export named " + MessageName(name));
}

Result<const ExportInfo*> CheckCall(const ModuleInfo& info, const Func& func,
                                   std::span<const Value> args, size_t result_count) {
  if (func.export_index >= info.exports.size() ||
      info.exports[func.export_index].kind != ExternKind::kFunc) {
    return MakeError(ErrorCode::kInvalidArgument, "not a function of this instance");
  }
  const ExportInfo& exp = info.exports[func.export_index];
  const FuncType& type = exp.func;
  if (args.size() != type.params.size()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "export '" + exp.name + "' takes " + std::to_string(type.params.size()) +
                         " argument(s) " + type.ToString() + ", got " +
                         std::to_string(args.size()));
  }
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i].type() != type.params[i]) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "export '" + exp.name + "' argument " + std::to_string(i + 1) + " is " +
                           std::string(ToString(type.params[i])) + ", got " +
                           std::string(ToString(args[i].type())));
    }
  }
  if (result_count != type.results.size()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "export '" + exp.name + "' returns " + std::to_string(type.results.size()) +
                         " value(s), space for " + std::to_string(result_count) + " given");
  }
  return &exp;
}

Result<void> CheckImports(const ModuleInfo& info, const Linker* linker) {
  for (const ImportInfo& imp : info.imports) {
    std::string name = MessageName(imp.module) + "." + MessageName(imp.name);
    if (imp.kind != ExternKind::kFunc) {
      return MakeError(ErrorCode::kLinkError, "import " + name + " is a " + Describe(imp) +
                                                  "; the host provides only functions");
    }
    if (!imp.func_supported) {
      return MakeError(ErrorCode::kLinkError,
                       "import " + name + " has type " + imp.signature +
                           ": the host provides only functions of i32, i64, f32 and f64 "
                           "(not v128 or references)");
    }
    const Linker::Entry* entry = linker ? linker->Find(imp.module, imp.name) : nullptr;
    if (!entry) {
      return MakeError(ErrorCode::kLinkError,
                       "missing import " + name + " of type " + imp.func.ToString());
    }
    if (!(entry->type == imp.func)) {
      return MakeError(ErrorCode::kLinkError, "import " + name + " has type " +
                                                  imp.func.ToString() + " but the host defines " +
                                                  entry->type.ToString());
    }
  }
  return {};
}

std::string_view ToString(EngineKind kind) {
  switch (kind) {
    case EngineKind::kSpiderMonkey: return "spidermonkey";
    case EngineKind::kWasmtime: return "wasmtime";
  }
  return "unknown";
}

std::optional<EngineKind> ParseEngineKind(std::string_view name) {
  for (EngineKind kind : {EngineKind::kSpiderMonkey, EngineKind::kWasmtime}) {
    if (name == ToString(kind)) return kind;
  }
  return std::nullopt;
}

}  // namespace keel::engine
