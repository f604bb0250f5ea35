// libFuzzer target: argument text through keel's value parsers (the one
// `keel run --invoke` uses, and the HTTP API's JSON one), into real engine
// calls on values_exact.wat, and the results printed. Nothing may crash;
// every value must print as text that reads back to the same bits; exports
// that hand back their arguments must give back exactly those bits.
//
// Input: byte 0 picks the export; if the rest starts with '{' it is a JSON
// call body, else one argument per line.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/file.h"
#include "engine/engine.h"
#include "server/call_args.h"

namespace {

using keel::Value;
using keel::ValType;

struct Target {
  const char* name;
  bool identity;  // results are the arguments (possibly reordered: see swap)
};

constexpr Target kTargets[] = {
    {"id_f32", true},        {"id_f64", true},          {"call_echo_f32", true},
    {"call_echo_f64", true}, {"reexport_f32", true},    {"indirect_f32", false},
    {"ref_f64", true},       {"swap", false},           {"bits_f32", false},
    {"bits_f64", false},     {"from_bits_f32", false},  {"from_bits_f64", false},
    {"call_pair", false},    {"trunc", false},          {"neg_nan_f64", false},
};

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "value_fuzz: %s\n", what.c_str());
  std::abort();
}

using Args = std::span<const Value>;
using Results = std::span<Value>;

std::shared_ptr<keel::Linker> HostLinker() {
  auto linker = std::make_shared<keel::Linker>();
  auto echo = [](keel::Caller&, Args a, Results r) -> keel::Result<void> {
    r[0] = a[0];
    return {};
  };
  linker->Define("host", "echo_f32", {{ValType::kF32}, {ValType::kF32}}, echo);
  linker->Define("host", "echo_f64", {{ValType::kF64}, {ValType::kF64}}, echo);
  linker->Define("host", "pair", {{ValType::kF32, ValType::kF64, ValType::kI32},
                                  {ValType::kF64, ValType::kF32, ValType::kI32}},
                 [](keel::Caller&, Args a, Results r) -> keel::Result<void> {
                   r[0] = a[1];
                   r[1] = a[0];
                   r[2] = a[2];
                   return {};
                 });
  linker->Define("host", "count", {{}, {ValType::kI32}},
                 [](keel::Caller&, Args, Results r) -> keel::Result<void> {
                   r[0] = Value::I32(0);
                   return {};
                 });
  return linker;
}

class Harness {
 public:
  Harness() {
    auto bytes = keel::ReadFile(std::string(KEEL_FIXTURE_DIR) + "/values_exact.wasm");
    if (!bytes) Die(bytes.error().ToString());
    auto module = keel::engine::DefaultEngine().Compile(*bytes);
    if (!module) Die(module.error().ToString());
    module_ = *module;
    auto ctx = keel::engine::DefaultEngine().NewContext();
    if (!ctx) Die(ctx.error().ToString());
    ctx_ = std::move(*ctx);
    linker_ = HostLinker();
  }

  const keel::engine::Module& module() const { return *module_; }

  // A healthy instance: a trap poisons the one before.
  keel::engine::Instance& instance() {
    if (!instance_ || instance_->poisoned()) {
      auto instance = ctx_->Instantiate(module_, linker_, nullptr, ++tag_);
      if (!instance) Die(instance.error().ToString());
      instance_ = std::move(*instance);
    }
    return *instance_;
  }
  uint64_t NextTag() { return ++tag_; }

 private:
  std::shared_ptr<const keel::engine::Module> module_;
  std::unique_ptr<keel::engine::Context> ctx_;
  std::shared_ptr<keel::Linker> linker_;
  std::unique_ptr<keel::engine::Instance> instance_;
  uint64_t tag_ = 0;
};

void CheckPrintsBack(const Value& v) {
  auto back = keel::ParseValue(v.type(), v.ToString());
  if (!back || !(*back == v)) Die("'" + v.ToString() + "' does not read back to its bits");
}

std::vector<std::string_view> Lines(std::string_view text) {
  std::vector<std::string_view> out;
  while (!text.empty()) {
    size_t eol = text.find('\n');
    out.push_back(text.substr(0, eol));
    if (eol == std::string_view::npos) break;
    text.remove_prefix(eol + 1);
  }
  return out;
}

// Parsed arguments, or nullopt when the text is not a valid argument list.
std::optional<std::vector<Value>> ParseArgs(std::string_view text, const keel::FuncType& type) {
  if (!text.empty() && text[0] == '{') {
    auto args = keel::server::ParseCallArgs(text, type);
    if (!args) return std::nullopt;
    return *args;
  }
  std::vector<std::string_view> lines = Lines(text);
  if (lines.size() != type.params.size()) return std::nullopt;
  std::vector<Value> args;
  for (size_t i = 0; i < lines.size(); ++i) {
    auto v = keel::ParseValue(type.params[i], lines[i]);
    if (!v) return std::nullopt;
    args.push_back(*v);
  }
  return args;
}

void CheckIdentity(const Target& target, const std::vector<Value>& args,
                   const std::vector<Value>& results) {
  if (!target.identity) return;
  if (args != results) {
    Die(std::string(target.name) + " changed its argument " + args[0].ToString());
  }
}

Harness* harness = nullptr;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (!harness) {
    harness = new Harness();
    // Registered after the engine's own exit hook, so it runs first: the
    // engine shuts SpiderMonkey down only once no context is left.
    std::atexit([] { delete harness; });
  }
  if (size == 0) return 0;
  const Target& target = kTargets[data[0] % std::size(kTargets)];
  std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  auto func = harness->instance().Lookup(target.name);
  if (!func) Die(func.error().ToString());
  auto args = ParseArgs(text, *func->type);
  if (!args) return 0;
  for (const Value& v : *args) CheckPrintsBack(v);
  std::vector<Value> results(func->type->results.size());
  auto called = harness->instance().Call(*func, *args, results, harness->NextTag());
  if (!called) {
    if (called.error().code != keel::ErrorCode::kTrap) Die(called.error().ToString());
    return 0;
  }
  for (const Value& v : results) CheckPrintsBack(v);
  CheckIdentity(target, *args, results);
  (void)keel::server::FormatResults(results);
  return 0;
}
