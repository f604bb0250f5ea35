#include "abi/bytecall.h"

#include <cstring>
#include <string>

namespace keel::abi {
namespace {

const FuncType kBytesFnType{{ValType::kI32, ValType::kI32}, {ValType::kI32}};
const FuncType kReallocType{{ValType::kI32, ValType::kI32, ValType::kI32, ValType::kI32},
                            {ValType::kI32}};
const FuncType kPostType{{ValType::kI32}, {}};

std::string Range(uint64_t ptr, uint64_t len) {
  return "[" + std::to_string(ptr) + ", +" + std::to_string(len) + ")";
}

// A guest broke the convention: its state is suspect, so the instance is
// never used again.
tl::unexpected<Error> Violation(engine::Instance& instance, ErrorCode code, std::string message) {
  instance.Poison(message);
  return MakeError(code, std::move(message));
}

uint32_t LoadU32(std::span<const uint8_t> memory, uint64_t at) {
  uint32_t v;
  std::memcpy(&v, memory.data() + at, 4);  // wasm memory is little-endian, as is the host
  return v;
}

}  // namespace

Result<void> CheckByteExport(const engine::ModuleInfo& info, std::string_view export_name) {
  const engine::ExportInfo* fn = info.FindFuncExport(export_name);
  if (!fn) return MakeError(ErrorCode::kNotFound, "no function export named '" + std::string(export_name) + "'");
  if (!(fn->func == kBytesFnType)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "export '" + std::string(export_name) + "' has type " + fn->func.ToString() +
                         "; a byte call needs " + kBytesFnType.ToString());
  }
  const engine::ExportInfo* realloc = info.FindFuncExport(kReallocExport);
  if (!realloc) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "module does not export cabi_realloc, which byte calls need");
  }
  if (!(realloc->func == kReallocType)) {
    return MakeError(ErrorCode::kInvalidArgument, "cabi_realloc has type " +
                                                      realloc->func.ToString() + ", expected " +
                                                      kReallocType.ToString());
  }
  std::string post_name = std::string(kPostPrefix) + std::string(export_name);
  if (const engine::ExportInfo* post = info.FindFuncExport(post_name); post && !(post->func == kPostType)) {
    return MakeError(ErrorCode::kInvalidArgument, post_name + " has type " + post->func.ToString() +
                                                      ", expected " + kPostType.ToString());
  }
  return {};
}

Result<std::vector<uint8_t>> CallBytes(engine::Instance& instance, std::string_view export_name,
                                       std::span<const uint8_t> input, const ByteLimits& limits,
                                       uint64_t call_tag, const std::function<void()>& on_phase_two) {
  const engine::ModuleInfo& info = instance.module().info();
  if (auto ok = CheckByteExport(info, export_name); !ok) return MakeError(ok.error());
  if (input.size() > limits.max_input_bytes) {
    return MakeError(ErrorCode::kResourceExhausted,
                     "input of " + std::to_string(input.size()) + " bytes exceeds the limit of " +
                         std::to_string(limits.max_input_bytes));
  }
  auto fn = instance.Lookup(export_name);
  auto realloc = instance.Lookup(kReallocExport);
  if (!fn || !realloc) return MakeError(ErrorCode::kInternal, "byte call exports vanished");

  // Phase one: allocate, copy in, call.
  Value out[1];
  const Value realloc_args[4] = {Value::I32(0), Value::I32(0), Value::I32(1),
                                 Value::I32(static_cast<int32_t>(input.size()))};
  if (auto ok = instance.Call(*realloc, realloc_args, out, call_tag); !ok) return MakeError(ok.error());
  uint32_t in_ptr = static_cast<uint32_t>(out[0].i32());
  if (auto ok = instance.WriteMemory(in_ptr, input); !ok) {
    return Violation(instance, ErrorCode::kInvalidArgument,
                     "cabi_realloc returned a buffer " + Range(in_ptr, input.size()) +
                         " outside linear memory of " + std::to_string(instance.Memory().size()) +
                         " bytes");
  }
  const Value fn_args[2] = {Value::I32(static_cast<int32_t>(in_ptr)),
                            Value::I32(static_cast<int32_t>(input.size()))};
  if (auto ok = instance.Call(*fn, fn_args, out, call_tag); !ok) return MakeError(ok.error());
  uint32_t pair = static_cast<uint32_t>(out[0].i32());

  std::span<uint8_t> memory = instance.Memory();
  if (uint64_t{pair} + 8 > memory.size()) {
    return Violation(instance, ErrorCode::kInvalidArgument,
                     "export '" + std::string(export_name) + "' returned an output pair at " +
                         Range(pair, 8) + " outside linear memory of " +
                         std::to_string(memory.size()) + " bytes");
  }
  uint32_t out_ptr = LoadU32(memory, pair);
  uint32_t out_len = LoadU32(memory, uint64_t{pair} + 4);
  if (out_len > limits.max_output_bytes) {
    return Violation(instance, ErrorCode::kResourceExhausted,
                     "output of " + std::to_string(out_len) + " bytes exceeds the limit of " +
                         std::to_string(limits.max_output_bytes));
  }
  if (uint64_t{out_ptr} + out_len > memory.size()) {
    return Violation(instance, ErrorCode::kInvalidArgument,
                     "export '" + std::string(export_name) + "' returned output " +
                         Range(out_ptr, out_len) + " outside linear memory of " +
                         std::to_string(memory.size()) + " bytes");
  }
  std::vector<uint8_t> output(memory.begin() + out_ptr, memory.begin() + out_ptr + out_len);

  // Phase two: let the guest free what it returned.
  auto post = instance.Lookup(std::string(kPostPrefix) + std::string(export_name));
  if (post) {
    if (on_phase_two) on_phase_two();
    const Value post_args[1] = {Value::I32(static_cast<int32_t>(pair))};
    if (auto ok = instance.Call(*post, post_args, {}, call_tag); !ok) return MakeError(ok.error());
  }
  return output;
}

}  // namespace keel::abi
