// The Wasmtime backend of keel's engine interface, through Wasmtime's C API.
// The only file in keel that includes Wasmtime's headers.
//
// Shape: one wasm_engine_t per keel engine (plus a fuel-metered one, made
// on first use of CompileOptions::fuel, since metering changes the compiled
// code). Modules compile on any thread and are shared by all. Every
// instance owns one Store, so dropping it frees all it made and returns its
// pooling-allocator slot; a context caches one InstancePre per (module,
// linker) so instantiation does no import resolution. Calls use the
// unchecked entry points with raw values (exact bits, NaN payloads
// included) after keel checked them against the module's signatures.
//
// Modules are compiled as keel's rewriter leaves them (module_rewrite.h):
// every mutable global exported, under a reserved name where the module
// keeps it to itself, so that a snapshot can save and restore it through
// wasmtime_global_get/set; the code scanned for instructions that change
// tables or segments, which a reset cannot undo. keel shows the original
// module (ModuleInfo, code offsets in backtraces).
//
// Snapshots: the linear memory through dirty_pages.h on the range Wasmtime
// reports (re-read before every reset), the mutable globals as values, the
// host state through its hooks. Wasmtime's own reset of a pooling slot
// (decommit to the copy-on-write image when the instance is dropped) costs
// a new instance and faults on every page touched again; a reset copies
// back only the pages the call wrote.
//
// Interrupts use epoch interruption. Every entry into the guest sets the
// store's deadline one epoch ahead; a request for the running call's tag
// bumps the engine's epoch, which sends every running store of the engine
// into its deadline callback. The callback stops only a store whose running
// tag is the requested one; the others extend their deadline and go on.

#include <wasmtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <unordered_map>

#include "base/mutex.h"
#include "engine/dirty_pages.h"
#include "engine/engine.h"
#include "engine/module_rewrite.h"
#include "engine/value_buffer.h"
#include "engine/wasmtime/wt_engine.h"

namespace keel::engine {
namespace {

// Native stack a guest may use, engine-wide in Wasmtime.
constexpr size_t kMaxWasmStack = size_t{1} << 20;
// Pool slot limits: what one instance may have.
constexpr uint32_t kPoolTablesPerModule = 8;
constexpr size_t kPoolMemoryBytes = size_t{1} << 32;

struct Deleter {
  void operator()(wasmtime_error_t* p) const { wasmtime_error_delete(p); }
  void operator()(wasm_trap_t* p) const { wasm_trap_delete(p); }
  void operator()(wasmtime_module_t* p) const { wasmtime_module_delete(p); }
  void operator()(wasmtime_store_t* p) const { wasmtime_store_delete(p); }
  void operator()(wasmtime_linker_t* p) const { wasmtime_linker_delete(p); }
  void operator()(wasmtime_instance_pre_t* p) const { wasmtime_instance_pre_delete(p); }
  void operator()(wasm_functype_t* p) const { wasm_functype_delete(p); }
  void operator()(wasm_engine_t* p) const { wasm_engine_delete(p); }
};
template <typename T>
using Owned = std::unique_ptr<T, Deleter>;

// ---------------------------------------------------------------------------
// Errors

std::string TakeBytes(wasm_byte_vec_t* vec) {
  std::string out(vec->data, vec->size);
  wasm_byte_vec_delete(vec);
  while (!out.empty() && out.back() == '\0') out.pop_back();
  return out;
}

std::string ErrorText(const wasmtime_error_t* error) {
  wasm_name_t text;
  wasmtime_error_message(error, &text);
  return TakeBytes(&text);
}

std::string TrapText(const wasm_trap_t* trap) {
  wasm_message_t text;
  wasm_trap_message(trap, &text);
  return TakeBytes(&text);
}

// Wasmtime renders an error with its chain of causes:
//   "top\n\nCaused by:\n    0: a\n    1: b"   (or "...\n    a" for one).
// Returns the messages, outermost first.
std::vector<std::string> ErrorChain(std::string_view text) {
  constexpr std::string_view kCausedBy = "\n\nCaused by:\n";
  std::vector<std::string> out;
  size_t at = text.find(kCausedBy);
  out.emplace_back(text.substr(0, at));
  if (at == std::string_view::npos) return out;
  std::string_view rest = text.substr(at + kCausedBy.size());
  while (!rest.empty()) {
    size_t eol = rest.find('\n');
    std::string_view line = rest.substr(0, eol);
    rest = eol == std::string_view::npos ? std::string_view() : rest.substr(eol + 1);
    line.remove_prefix(std::min(line.find_first_not_of(' '), line.size()));
    size_t digits = line.find_first_not_of("0123456789");
    if (digits > 0 && digits != std::string_view::npos && line.substr(digits, 2) == ": ") {
      line.remove_prefix(digits + 2);
    }
    if (!line.empty()) out.emplace_back(line);
  }
  return out;
}

// The chain as one line, without a leading wasm backtrace (keel carries
// that separately).
std::string JoinChain(const std::vector<std::string>& chain) {
  std::string out;
  for (const std::string& part : chain) {
    if (part.starts_with("error while executing at wasm backtrace")) continue;
    if (!out.empty()) out += ": ";
    out += part;
  }
  return out;
}

TrapKind TrapKindFor(wasmtime_trap_code_t code) {
  switch (code) {
    case WASMTIME_TRAP_CODE_STACK_OVERFLOW: return TrapKind::kStackOverflow;
    case WASMTIME_TRAP_CODE_MEMORY_OUT_OF_BOUNDS: return TrapKind::kMemoryOutOfBounds;
    case WASMTIME_TRAP_CODE_TABLE_OUT_OF_BOUNDS: return TrapKind::kTableOutOfBounds;
    case WASMTIME_TRAP_CODE_INDIRECT_CALL_TO_NULL: return TrapKind::kIndirectCallToNull;
    case WASMTIME_TRAP_CODE_BAD_SIGNATURE: return TrapKind::kIndirectCallTypeMismatch;
    case WASMTIME_TRAP_CODE_INTEGER_OVERFLOW: return TrapKind::kIntegerOverflow;
    case WASMTIME_TRAP_CODE_INTEGER_DIVISION_BY_ZERO: return TrapKind::kIntegerDivideByZero;
    case WASMTIME_TRAP_CODE_BAD_CONVERSION_TO_INTEGER: return TrapKind::kInvalidConversion;
    case WASMTIME_TRAP_CODE_UNREACHABLE_CODE_REACHED: return TrapKind::kUnreachable;
    case WASMTIME_TRAP_CODE_OUT_OF_FUEL: return TrapKind::kOutOfFuel;
    case WASMTIME_TRAP_CODE_ALLOCATION_TOO_LARGE: return TrapKind::kOutOfMemory;
    default: return TrapKind::kOther;
  }
}

// What a host function's error becomes for the guest's caller.
Error HostError(Error error) {
  if (error.code != ErrorCode::kInterrupted && error.code != ErrorCode::kTrap) {
    return Error::Trap(TrapKind::kHostError, error.ToString());
  }
  if (error.code == ErrorCode::kTrap && error.trap == TrapKind::kNone) {
    error.trap = TrapKind::kHostError;
  }
  return error;
}

// ---------------------------------------------------------------------------
// Values

wasm_valkind_t KindOf(ValType type) {
  switch (type) {
    case ValType::kI32: return WASM_I32;
    case ValType::kI64: return WASM_I64;
    case ValType::kF32: return WASM_F32;
    case ValType::kF64: return WASM_F64;
  }
  return WASM_I32;
}

wasm_valtype_vec_t ValTypes(const std::vector<ValType>& types) {
  wasm_valtype_vec_t vec;
  if (types.empty()) {
    wasm_valtype_vec_new_empty(&vec);
    return vec;
  }
  std::vector<wasm_valtype_t*> items;
  for (ValType t : types) items.push_back(wasm_valtype_new(KindOf(t)));
  wasm_valtype_vec_new(&vec, items.size(), items.data());
  return vec;
}

Owned<wasm_functype_t> NewFuncType(const FuncType& type) {
  wasm_valtype_vec_t params = ValTypes(type.params);
  wasm_valtype_vec_t results = ValTypes(type.results);
  return Owned<wasm_functype_t>(wasm_functype_new(&params, &results));
}

bool SameKinds(const wasm_valtype_vec_t* vec, const std::vector<ValType>& types) {
  if (vec->size != types.size()) return false;
  for (size_t i = 0; i < types.size(); ++i) {
    if (wasm_valtype_kind(vec->data[i]) != KindOf(types[i])) return false;
  }
  return true;
}

// Raw values carry the exact bits, floats included.
wasmtime_val_raw_t ToRaw(const Value& v) {
  wasmtime_val_raw_t raw;
  std::memset(&raw, 0, sizeof raw);
  uint64_t bits = v.bits();
  switch (v.type()) {
    case ValType::kI32: raw.i32 = v.i32(); break;
    case ValType::kI64: raw.i64 = v.i64(); break;
    case ValType::kF32: {
      uint32_t low = static_cast<uint32_t>(bits);
      std::memcpy(&raw.f32, &low, sizeof low);
      break;
    }
    case ValType::kF64: std::memcpy(&raw.f64, &bits, sizeof bits); break;
  }
  return raw;
}

Value FromRaw(ValType type, const wasmtime_val_raw_t& raw) {
  switch (type) {
    case ValType::kI32: return Value::I32(raw.i32);
    case ValType::kI64: return Value::I64(raw.i64);
    case ValType::kF32: {
      uint32_t bits;
      std::memcpy(&bits, &raw.f32, sizeof bits);
      return Value::FromBits(type, bits);
    }
    case ValType::kF64: {
      uint64_t bits;
      std::memcpy(&bits, &raw.f64, sizeof bits);
      return Value::FromBits(type, bits);
    }
  }
  return Value();
}

// ---------------------------------------------------------------------------
// Engines

// The wasm_engine_t handles of one keel engine, shared with its modules and
// with the interrupt state of its contexts, so that they stay valid as long
// as anything might use them.
class EngineSet {
 public:
  static Result<std::shared_ptr<EngineSet>> Create(const WasmtimeOptions& options) {
    auto set = std::shared_ptr<EngineSet>(new EngineSet(options));
    set->plain_.reset(NewEngine(options, /*fuel=*/false));
    if (!set->plain_) return MakeError(ErrorCode::kInternal, "Wasmtime could not create an engine");
    return set;
  }

  wasm_engine_t* plain() const { return plain_.get(); }

  // The fuel-metered engine, made on first use.
  wasm_engine_t* fuel() {
    std::call_once(fuel_once_, [this] { fuel_.reset(NewEngine(options_, /*fuel=*/true)); });
    return fuel_.get();
  }

 private:
  explicit EngineSet(const WasmtimeOptions& options) : options_(options) {}

  static wasm_engine_t* NewEngine(const WasmtimeOptions& options, bool fuel) {
    wasm_config_t* config = wasm_config_new();
    wasmtime_config_strategy_set(config, WASMTIME_STRATEGY_CRANELIFT);
    wasmtime_config_epoch_interruption_set(config, true);
    wasmtime_config_consume_fuel_set(config, fuel);
    wasmtime_config_max_wasm_stack_set(config, kMaxWasmStack);
    wasmtime_config_parallel_compilation_set(config, true);
    wasmtime_config_memory_init_cow_set(config, options.memory_init_cow);
    if (options.pooling_allocator) {
      wasmtime_pooling_allocation_config_t* pool = wasmtime_pooling_allocation_config_new();
      wasmtime_pooling_allocation_config_total_core_instances_set(pool, options.pool_slots);
      wasmtime_pooling_allocation_config_total_memories_set(pool, options.pool_slots);
      wasmtime_pooling_allocation_config_total_tables_set(pool, options.pool_slots);
      wasmtime_pooling_allocation_config_max_tables_per_module_set(pool, kPoolTablesPerModule);
      wasmtime_pooling_allocation_config_max_memory_size_set(pool, kPoolMemoryBytes);
      wasmtime_pooling_allocation_strategy_set(config, pool);
      wasmtime_pooling_allocation_config_delete(pool);
    }
    return wasm_engine_new_with_config(config);  // takes the config
  }

  WasmtimeOptions options_;
  Owned<wasm_engine_t> plain_;
  std::once_flag fuel_once_;
  Owned<wasm_engine_t> fuel_;
};

// ---------------------------------------------------------------------------
// Modules

// A module as keel shows it (info_) and as Wasmtime compiled it: rewritten
// (rewrite_, without its bytes), or as given where keel's decoder cannot
// read the code (then its instances cannot be reset).
class WtModule final : public Module {
 public:
  WtModule(ModuleInfo info, CompileOptions options, std::optional<RewriteResult> rewrite,
           std::optional<std::string> reset_blocker, std::shared_ptr<EngineSet> engines,
           wasm_engine_t* engine, Owned<wasmtime_module_t> module)
      : info_(std::move(info)),
        options_(options),
        rewrite_(std::move(rewrite)),
        reset_blocker_(std::move(reset_blocker)),
        engines_(std::move(engines)),
        engine_(engine),
        module_(std::move(module)) {
    for (const ExportInfo& e : info_.exports) {
      if (e.kind != ExternKind::kFunc) continue;
      func_names_.emplace(e.index, e.name);
      raw_slots_ = std::max({raw_slots_, e.func.params.size(), e.func.results.size()});
    }
  }
  const ModuleInfo& info() const override { return info_; }
  const CompileOptions& options() const override { return options_; }
  wasm_engine_t* engine() const { return engine_; }
  const wasmtime_module_t* module() const { return module_.get(); }
  // Whether the code may grow its memory (unknown where it compiled as
  // given: then it may).
  bool may_grow() const { return !rewrite_ || rewrite_->features.memory_grow; }
  // Raw value slots a call of any export needs (arguments, then results).
  size_t raw_slots() const { return raw_slots_; }
  const std::string* FuncName(uint32_t index) const {
    auto it = func_names_.find(index);
    return it == func_names_.end() ? nullptr : &it->second;
  }
  // The offset in the module as given of byte `offset` of the compiled one.
  size_t OriginalOffset(size_t offset) const {
    return rewrite_ ? rewrite_->OriginalOffset(offset).value_or(offset) : offset;
  }
  // The exports of every mutable global: the module's own and keel's.
  std::span<const GlobalExport> global_exports() const {
    if (!rewrite_) return {};
    return rewrite_->globals;
  }
  // Why instances cannot be reset; nullopt if they can.
  const std::optional<std::string>& reset_blocker() const { return reset_blocker_; }

 private:
  ModuleInfo info_;
  CompileOptions options_;
  std::optional<RewriteResult> rewrite_;
  std::optional<std::string> reset_blocker_;
  std::shared_ptr<EngineSet> engines_;  // keeps engine_ alive
  wasm_engine_t* engine_;
  Owned<wasmtime_module_t> module_;
  std::map<uint32_t, std::string> func_names_;
  size_t raw_slots_ = 1;
};

// ---------------------------------------------------------------------------
// Interrupts

// Shared by a context, its instances and its Interrupter handles. Calls on
// one context carry tags that never decrease, so "the largest tag ever
// requested" remembers a request that raced ahead of its call, and a stale
// request can never match a later call.
class InterruptState {
 public:
  explicit InterruptState(std::shared_ptr<EngineSet> engines) : engines_(std::move(engines)) {}

  // Marks the start of guest call `tag` on a store of `engine`, whose epoch
  // deadline is already set. False when an interrupt for it was already
  // requested: the call must then not enter the guest.
  bool BeginCall(uint64_t tag, wasm_engine_t* engine) {
    running_engine_.store(engine);
    running_tag_.store(tag);
    return requested_tag_.load() != tag;
  }

  void EndCall() EXCLUDES(mu_) {
    running_tag_.store(0);
    ClearHook();
  }

  bool InterruptedNow() const {
    uint64_t running = running_tag_.load();
    return running != 0 && requested_tag_.load() == running;
  }

  // Any thread. Marks `tag` as interrupted and, if it is running, makes the
  // guest stop at its next epoch check. Returns the wake-up of the host
  // function it is blocked in, run by the caller without keel's locks:
  // ClearHook, right after the host function returns, waits for such a run
  // to finish, and a wake-up run later than that does nothing.
  static std::function<void()> RequestDeferred(const std::shared_ptr<InterruptState>& self,
                                               uint64_t tag) {
    if (tag == 0) return {};
    uint64_t prev = self->requested_tag_.load();
    while (prev < tag && !self->requested_tag_.compare_exchange_weak(prev, tag)) {
    }
    if (self->running_tag_.load() != tag) return {};
    if (wasm_engine_t* engine = self->running_engine_.load()) {
      wasmtime_engine_increment_epoch(engine);
    }
    std::shared_ptr<Hook> hook;
    {
      MutexLock lock(self->mu_);
      if (self->running_tag_.load() != tag || !self->hook_) return {};
      hook = self->hook_;
    }
    return [self, hook = std::move(hook)] { RunHook(self, hook); };
  }

  // The guest thread, during a host call. Runs `hook` at once if the
  // running call is already interrupted.
  void SetHook(std::function<void()> fn) EXCLUDES(mu_) {
    auto hook = fn ? std::make_shared<Hook>(Hook{std::move(fn)}) : nullptr;
    bool now;
    {
      MutexLock lock(mu_);
      hook_ = hook;
      now = InterruptedNow();
    }
    hook_set_ = true;
    if (now && hook) hook->fn();
  }

  // The guest thread. Returns once no wake-up runs the hook any more.
  void ClearHook() EXCLUDES(mu_) {
    if (!hook_set_) return;
    hook_set_ = false;
    MutexLock lock(mu_);
    hook_ = nullptr;
    while (hooks_running_ > 0) hooks_done_.Wait(mu_);
  }

 private:
  struct Hook {
    std::function<void()> fn;
  };

  // Runs `hook` unless it was cleared or replaced in the meantime. A hook
  // that throws is the host's bug; it must not stay counted as running
  // (its host function could then never return).
  static void RunHook(const std::shared_ptr<InterruptState>& self,
                      const std::shared_ptr<Hook>& hook) {
    {
      MutexLock lock(self->mu_);
      if (self->hook_ != hook) return;
      ++self->hooks_running_;
    }
    std::exception_ptr thrown;
    try {
      hook->fn();
    } catch (...) {
      thrown = std::current_exception();
    }
    {
      MutexLock lock(self->mu_);
      if (--self->hooks_running_ == 0) self->hooks_done_.SignalAll();
    }
    if (thrown) std::rethrow_exception(thrown);
  }

  std::shared_ptr<EngineSet> engines_;  // keeps running_engine_ valid
  std::atomic<uint64_t> running_tag_{0};
  std::atomic<uint64_t> requested_tag_{0};
  std::atomic<wasm_engine_t*> running_engine_{nullptr};
  Mutex mu_;
  CondVar hooks_done_;
  std::shared_ptr<Hook> hook_ GUARDED_BY(mu_);
  int hooks_running_ GUARDED_BY(mu_) = 0;
  // Whether hook_ may be set. Only the guest thread sets hooks and reads
  // this, so a call that set none ends without taking mu_.
  bool hook_set_ = false;
};

class WtInterrupter final : public Interrupter {
 public:
  explicit WtInterrupter(std::shared_ptr<InterruptState> state) : state_(std::move(state)) {}
  std::function<void()> RequestDeferred(uint64_t call_tag) override {
    return InterruptState::RequestDeferred(state_, call_tag);
  }

 private:
  std::shared_ptr<InterruptState> state_;
};

// ---------------------------------------------------------------------------
// Instances

// Exported linear memories of live instances, for Engine::memory_stats.
// Wasmtime frees a store's memories when it is dropped: nothing waits for a
// collection. The pooling allocator reserves its slots' address space once,
// when the engine is made, so no reservation is counted per memory.
struct MemoryCounters {
  std::atomic<int64_t> live{0};
  std::atomic<uint64_t> bytes{0};
};
MemoryCounters memory_counters;

// ---------------------------------------------------------------------------
// Snapshots

// A mutable global and its value at the snapshot: a number or a v128, plain
// data with nothing to root.
struct SavedGlobal {
  wasmtime_global_t global;
  wasmtime_val_t value;
};

struct InstanceSnapshot {
  std::unique_ptr<MemorySnapshot> memory;  // null without a linear memory
  std::vector<SavedGlobal> globals;
};

bool SavableKind(wasmtime_valkind_t kind) {
  return kind == WASMTIME_I32 || kind == WASMTIME_I64 || kind == WASMTIME_F32 ||
         kind == WASMTIME_F64 || kind == WASMTIME_V128;
}

// Bit for bit: a NaN is the same NaN, -0.0 is not 0.0.
bool SameBits(const wasmtime_val_t& a, const wasmtime_val_t& b) {
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case WASMTIME_I32: return a.of.i32 == b.of.i32;
    case WASMTIME_I64: return a.of.i64 == b.of.i64;
    case WASMTIME_F32: return std::memcmp(&a.of.f32, &b.of.f32, sizeof a.of.f32) == 0;
    case WASMTIME_F64: return std::memcmp(&a.of.f64, &b.of.f64, sizeof a.of.f64) == 0;
    case WASMTIME_V128: return std::memcmp(a.of.v128, b.of.v128, sizeof a.of.v128) == 0;
    default: return false;
  }
}

class WtInstance final : public Instance, public Caller {
 public:
  WtInstance(std::shared_ptr<InterruptState> interrupt, std::shared_ptr<const WtModule> module,
             std::shared_ptr<const Linker> linker, std::unique_ptr<HostState> host_state);
  ~WtInstance() override;

  // Instantiates from `pre` (start function included) and runs _initialize.
  Result<void> Initialize(const wasmtime_instance_pre_t* pre, uint64_t call_tag);
  // Charges the memory instantiation left to `budget`; kResourceExhausted
  // when it does not fit.
  Result<void> ChargeTo(std::shared_ptr<MemoryBudget> budget);

  // Instance
  Result<Func> Lookup(std::string_view name) const override {
    return LookupFunc(module_->info(), name);
  }
  Result<void> Call(const Func& func, std::span<const Value> args, std::span<Value> results,
                    uint64_t call_tag) override;
  std::span<uint8_t> Memory() override;
  bool poisoned() const override { return !poison_reason_.empty(); }
  void Poison(std::string reason) override {
    if (poison_reason_.empty()) poison_reason_ = reason.empty() ? "poisoned" : std::move(reason);
  }
  const std::string& poison_reason() const override { return poison_reason_; }
  const Module& module() const override { return *module_; }
  HostState* host_state() override { return host_state_.get(); }
  Result<void> Snapshot(const SnapshotOptions& options) override;
  Result<ResetStats> Reset() override;
  bool has_snapshot() const override { return snapshot_ != nullptr; }

  // Caller
  bool interrupted() const override { return interrupt_->InterruptedNow(); }
  void SetInterruptHook(std::function<void()> hook) override {
    interrupt_->SetHook(std::move(hook));
  }

  static wasm_trap_t* HostTrampoline(void* env, wasmtime_caller_t* caller, wasmtime_val_raw_t* raw,
                                     size_t raw_len);

 private:
  struct Outcome {
    Owned<wasmtime_error_t> error;
    Owned<wasm_trap_t> trap;
  };

  static wasmtime_error_t* OnEpochDeadline(wasmtime_context_t* cx, void* self, uint64_t* delta,
                                           wasmtime_update_deadline_kind_t* kind);

  // Runs fn(&trap) (which enters the guest and returns a wasmtime_error_t*)
  // as the call `call_tag`, and turns a failure into an Error, poisoning
  // the instance.
  template <typename Fn>
  Result<void> Guarded(uint64_t call_tag, std::string_view what, Fn&& fn);
  Error Describe(const Outcome& outcome, std::string_view what);
  std::string Backtrace(const wasm_frame_vec_t& frames) const;
  Result<const wasmtime_func_t*> ResolveFunc(uint32_t export_index);
  wasm_trap_t* RunHost(const Linker::Entry& entry, wasmtime_context_t* cx, wasmtime_val_raw_t* raw);
  void FindMemory();
  // Brings memory_counters up to date with this instance's memory size.
  void CountMemory();
  Result<void> CheckResettable() const;
  Result<void> SaveGlobals(InstanceSnapshot& snapshot);
  Result<ResetStats> ResetToSnapshot();
  Result<uint32_t> RestoreGlobals();
  // What the memory's snapshot must know of its uses (MemorySnapshot::NoteAccess).
  void NoteMemoryUse() {
    if (snapshot_ && snapshot_->memory) snapshot_->memory->NoteAccess();
  }
  void NoteForeignWrites() {
    if (snapshot_ && snapshot_->memory) snapshot_->memory->NoteForeignWrites();
  }
  uint64_t MemoryBytes() const { return memory_ ? wasmtime_memory_data_size(cx_, &*memory_) : 0; }
  // Around a call on a budget: the store's limiter lets memory.grow take
  // what the budget has free (up to the cap); then the call's memory is
  // charged and the rest returned.
  void GrantForCall();
  // The store limiter's bound on the memory's size.
  void SetLimit(uint64_t bytes);

  std::shared_ptr<InterruptState> interrupt_;
  std::shared_ptr<const WtModule> module_;
  std::shared_ptr<const Linker> linker_;  // host functions' entries live here
  std::unique_ptr<HostState> host_state_;
  Owned<wasmtime_store_t> store_;
  wasmtime_context_t* cx_;
  wasmtime_context_t* host_cx_ = nullptr;  // the caller's context during a host call
  wasmtime_instance_t instance_{};
  std::optional<wasmtime_memory_t> memory_;
  uint64_t counted_bytes_ = 0;  // this memory's share of memory_counters.bytes
  uint64_t cap_bytes_ = 0;      // the per-instance cap
  uint64_t limit_bytes_ = 0;    // what the store limiter allows now
  std::optional<MemoryCharge> charge_;  // with a budget and a memory
  // Exported functions by export index, resolved on first call.
  std::vector<std::optional<wasmtime_func_t>> funcs_;
  std::vector<wasmtime_val_raw_t> raw_;  // arguments in, results out
  std::string poison_reason_;
  bool in_call_ = false;
  bool interrupt_hit_ = false;       // the deadline callback stopped the call
  std::optional<Error> host_error_;  // the error a host function ended the call with
  // Declared last: dropped before the store, while its memory is still
  // this instance's.
  std::unique_ptr<InstanceSnapshot> snapshot_;
};

WtInstance::WtInstance(std::shared_ptr<InterruptState> interrupt,
                       std::shared_ptr<const WtModule> module, std::shared_ptr<const Linker> linker,
                       std::unique_ptr<HostState> host_state)
    : interrupt_(std::move(interrupt)),
      module_(std::move(module)),
      linker_(std::move(linker)),
      host_state_(std::move(host_state)),
      store_(wasmtime_store_new(module_->engine(), this, nullptr)),
      cx_(wasmtime_store_context(store_.get())),
      funcs_(module_->info().exports.size()),
      raw_(module_->raw_slots()) {
  // Instantiation (start function, _initialize) grows within the cap; a
  // budget is charged when it ends (ChargeTo).
  cap_bytes_ = uint64_t{module_->options().max_memory_pages} * kWasmPageSize;
  SetLimit(cap_bytes_);
  wasmtime_store_epoch_deadline_callback(store_.get(), &WtInstance::OnEpochDeadline, this, nullptr);
}

WtInstance::~WtInstance() {
  if (!memory_) return;
  // The pooling allocator keeps the mapping for the slot's next instance.
  if (snapshot_ && snapshot_->memory) snapshot_->memory->StopTracking(Memory());
  memory_counters.live.fetch_sub(1);
  memory_counters.bytes.fetch_sub(counted_bytes_);
}

void WtInstance::SetLimit(uint64_t bytes) {
  if (bytes == limit_bytes_) return;
  wasmtime_store_limiter(store_.get(), static_cast<int64_t>(bytes), -1, -1, -1, -1);
  limit_bytes_ = bytes;
}

Result<void> WtInstance::ChargeTo(std::shared_ptr<MemoryBudget> budget) {
  if (!memory_) return {};
  uint64_t bytes = MemoryBytes();
  if (auto charged = ChargeInstantiation(charge_, std::move(budget), bytes); !charged) return charged;
  // Until a call takes a grant, the memory cannot grow.
  SetLimit(bytes);
  return {};
}

void WtInstance::GrantForCall() {
  uint64_t committed = MemoryBytes();
  uint64_t granted = charge_->Grant(committed, cap_bytes_ > committed ? cap_bytes_ - committed : 0);
  SetLimit(committed + granted);
}

void WtInstance::CountMemory() {
  if (!memory_) return;
  uint64_t now = wasmtime_memory_data_size(cx_, &*memory_);
  if (now != counted_bytes_) {
    memory_counters.bytes.fetch_add(now - counted_bytes_);
    counted_bytes_ = now;
  }
}

wasmtime_error_t* WtInstance::OnEpochDeadline(wasmtime_context_t*, void* self, uint64_t* delta,
                                              wasmtime_update_deadline_kind_t* kind) {
  auto* instance = static_cast<WtInstance*>(self);
  if (instance->interrupt_->InterruptedNow()) {
    instance->interrupt_hit_ = true;
    return wasmtime_error_new("interrupted");
  }
  // Another call of this engine was interrupted: go on.
  *delta = 1;
  *kind = WASMTIME_UPDATE_DEADLINE_CONTINUE;
  return nullptr;
}

template <typename Fn>
Result<void> WtInstance::Guarded(uint64_t call_tag, std::string_view what, Fn&& fn) {
  if (poisoned()) {
    return MakeError(ErrorCode::kFailedPrecondition, "instance is poisoned: " + poison_reason_);
  }
  if (in_call_) {
    return MakeError(ErrorCode::kFailedPrecondition, "instance is already in a call (re-entry)");
  }
  if (call_tag == 0) return MakeError(ErrorCode::kInvalidArgument, "call tag must be nonzero");
  if (uint64_t fuel = module_->options().fuel) {
    if (Owned<wasmtime_error_t> error(wasmtime_context_set_fuel(cx_, fuel)); error) {
      return MakeError(ErrorCode::kInternal, "setting fuel failed: " + ErrorText(error.get()));
    }
  }
  wasmtime_context_set_epoch_deadline(cx_, 1);
  in_call_ = true;
  interrupt_hit_ = false;
  host_error_.reset();
  Outcome outcome;
  bool entered = interrupt_->BeginCall(call_tag, module_->engine());
  if (entered) {
    wasm_trap_t* trap = nullptr;
    outcome.error.reset(fn(&trap));
    outcome.trap.reset(trap);
  }
  interrupt_->EndCall();
  in_call_ = false;
  if (entered && !outcome.error && !outcome.trap) return {};

  Error error = entered ? Describe(outcome, what)
                        : Error(ErrorCode::kInterrupted, std::string(what) + " interrupted");
  Poison(error.ToString());
  return MakeError(std::move(error));
}

Error WtInstance::Describe(const Outcome& outcome, std::string_view what) {
  if (host_error_) {
    Error error = std::move(*host_error_);
    host_error_.reset();
    return error;
  }
  if (interrupt_hit_) return Error(ErrorCode::kInterrupted, std::string(what) + " interrupted");
  wasm_frame_vec_t frames = {0, nullptr};
  wasmtime_trap_code_t code = 0;
  bool has_code = false;
  std::string text;
  if (outcome.trap) {
    has_code = wasmtime_trap_code(outcome.trap.get(), &code);
    text = TrapText(outcome.trap.get());
    wasm_trap_trace(outcome.trap.get(), &frames);
  } else {
    text = ErrorText(outcome.error.get());
    wasmtime_error_wasm_trace(outcome.error.get(), &frames);
  }
  std::string backtrace = Backtrace(frames);
  wasm_frame_vec_delete(&frames);
  std::vector<std::string> chain = ErrorChain(text);
  if (has_code && code == WASMTIME_TRAP_CODE_INTERRUPT) {
    return Error(ErrorCode::kInterrupted, std::string(what) + " interrupted");
  }
  Error error;
  if (has_code) {
    std::string_view message = chain.back();
    if (message.starts_with("wasm trap: ")) message.remove_prefix(11);
    error = Error::Trap(TrapKindFor(code), std::string(message));
  } else if (what == "instantiation") {
    // Not a trap: the store's limits or the instance pool refused it.
    error = Error(ErrorCode::kResourceExhausted, JoinChain(chain));
  } else {
    error = Error::Trap(TrapKind::kOther, JoinChain(chain));
  }
  error.backtrace = std::move(backtrace);
  return error;
}

// "wasm-function[7] <name> @0x1a3" per frame, innermost first; the offset
// is in the module's bytes, left out where Wasmtime has none (a stack
// overflow at a function's entry).
std::string WtInstance::Backtrace(const wasm_frame_vec_t& frames) const {
  std::string out;
  char offset[24];
  for (size_t i = 0; i < frames.size; ++i) {
    const wasm_frame_t* frame = frames.data[i];
    uint32_t index = wasm_frame_func_index(frame);
    out += "wasm-function[" + std::to_string(index) + "]";
    if (const std::string* name = module_->FuncName(index)) {
      out += " <" + *name + ">";
    } else if (const wasm_name_t* name = wasmtime_frame_func_name(frame); name && name->size) {
      out += " <" + std::string(name->data, name->size) + ">";
    }
    if (size_t at = wasm_frame_module_offset(frame); at != SIZE_MAX) {
      std::snprintf(offset, sizeof offset, " @0x%zx", module_->OriginalOffset(at));
      out += offset;
    }
    out += "\n";
  }
  return out;
}

Result<const wasmtime_func_t*> WtInstance::ResolveFunc(uint32_t export_index) {
  std::optional<wasmtime_func_t>& slot = funcs_[export_index];
  if (slot) return &*slot;
  const ExportInfo& exp = module_->info().exports[export_index];
  wasmtime_extern_t item;
  if (!wasmtime_instance_export_get(cx_, &instance_, exp.name.data(), exp.name.size(), &item) ||
      item.kind != WASMTIME_EXTERN_FUNC) {
    return MakeError(ErrorCode::kInternal, "export '" + exp.name + "' not found in instance");
  }
  // Unchecked calls rely on keel's reading of the signature: confirm it once.
  wasm_functype_t* type = wasmtime_func_type(cx_, &item.of.func);
  bool same = SameKinds(wasm_functype_params(type), exp.func.params) &&
              SameKinds(wasm_functype_results(type), exp.func.results);
  wasm_functype_delete(type);
  if (!same) {
    return MakeError(ErrorCode::kInternal, "export '" + exp.name + "' has another signature in Wasmtime");
  }
  slot = item.of.func;
  return &*slot;
}

Result<void> WtInstance::Call(const Func& func, std::span<const Value> args,
                              std::span<Value> results, uint64_t call_tag) {
  NoteMemoryUse();
  auto exp = CheckCall(module_->info(), func, args, results.size());
  if (!exp) return MakeError(exp.error());
  auto fn = ResolveFunc(func.export_index);
  if (!fn) return MakeError(fn.error());
  for (size_t i = 0; i < args.size(); ++i) raw_[i] = ToRaw(args[i]);
  // Code without memory.grow takes no grant: its charge is final.
  const bool grant = charge_ && module_->may_grow();
  if (grant) GrantForCall();
  auto called = Guarded(call_tag, "call", [&](wasm_trap_t** trap) {
    return wasmtime_func_call_unchecked(cx_, *fn, raw_.data(), raw_.size(), trap);
  });
  if (grant) charge_->Settle(MemoryBytes());
  CountMemory();
  if (!called) return called;
  const std::vector<ValType>& types = (*exp)->func.results;
  for (size_t i = 0; i < types.size(); ++i) results[i] = FromRaw(types[i], raw_[i]);
  return {};
}

std::span<uint8_t> WtInstance::Memory() {
  NoteMemoryUse();
  if (!memory_) return {};
  wasmtime_context_t* cx = host_cx_ ? host_cx_ : cx_;
  return {wasmtime_memory_data(cx, &*memory_), wasmtime_memory_data_size(cx, &*memory_)};
}

wasm_trap_t* WtInstance::HostTrampoline(void* env, wasmtime_caller_t* caller,
                                        wasmtime_val_raw_t* raw, size_t) {
  wasmtime_context_t* cx = wasmtime_caller_context(caller);
  auto* self = static_cast<WtInstance*>(wasmtime_context_get_data(cx));
  return self->RunHost(*static_cast<const Linker::Entry*>(env), cx, raw);
}

wasm_trap_t* WtInstance::RunHost(const Linker::Entry& entry, wasmtime_context_t* cx,
                                 wasmtime_val_raw_t* raw) {
  const FuncType& type = entry.type;
  ValueBuffer args(type.params.size());
  for (size_t i = 0; i < type.params.size(); ++i) args.span()[i] = FromRaw(type.params[i], raw[i]);
  ValueBuffer results(type.results.size());
  for (size_t i = 0; i < type.results.size(); ++i) {
    results.span()[i] = Value::FromBits(type.results[i], 0);
  }
  NoteForeignWrites();
  host_cx_ = cx;
  Result<void> outcome = entry.fn(*this, args.span(), results.span());
  host_cx_ = nullptr;
  interrupt_->ClearHook();
  if (outcome) {
    for (size_t i = 0; i < type.results.size(); ++i) {
      if (results.span()[i].type() != type.results[i]) {
        outcome = MakeError(Error::Trap(
            TrapKind::kHostError, "host function returned a " +
                                      std::string(ToString(results.span()[i].type())) + " where " +
                                      std::string(ToString(type.results[i])) + " was declared"));
        break;
      }
    }
  }
  if (!outcome) {
    host_error_ = HostError(std::move(outcome.error()));
    // The guest cannot catch it: the trap unwinds every wasm frame.
    return wasmtime_trap_new(host_error_->message.data(), host_error_->message.size());
  }
  for (size_t i = 0; i < type.results.size(); ++i) raw[i] = ToRaw(results.span()[i]);
  return nullptr;
}

void WtInstance::FindMemory() {
  const ModuleInfo& info = module_->info();
  const ExportInfo* mem = info.FindExport("memory");
  if (!mem || mem->kind != ExternKind::kMemory) {
    auto it = std::find_if(info.exports.begin(), info.exports.end(),
                           [](const ExportInfo& e) { return e.kind == ExternKind::kMemory; });
    mem = it == info.exports.end() ? nullptr : &*it;
  }
  if (!mem) return;
  wasmtime_extern_t item;
  if (wasmtime_instance_export_get(cx_, &instance_, mem->name.data(), mem->name.size(), &item) &&
      item.kind == WASMTIME_EXTERN_MEMORY) {
    memory_ = item.of.memory;
    memory_counters.live.fetch_add(1);
    CountMemory();
  }
}

Result<void> WtInstance::Initialize(const wasmtime_instance_pre_t* pre, uint64_t call_tag) {
  auto made = Guarded(call_tag, "instantiation", [&](wasm_trap_t** trap) {
    return wasmtime_instance_pre_instantiate(pre, cx_, &instance_, trap);
  });
  if (!made) return made;
  FindMemory();
  // WASI reactors must run _initialize once before any other export.
  if (const ExportInfo* init = module_->info().FindFuncExport("_initialize");
      init && init->func.params.empty() && init->func.results.empty()) {
    auto func = Lookup("_initialize");
    if (!func) return MakeError(func.error());
    if (auto ok = Call(*func, {}, {}, call_tag); !ok) return ok;
  }
  return {};
}

Result<void> WtInstance::CheckResettable() const {
  auto refuse = [](std::string why) {
    return MakeError(ErrorCode::kFailedPrecondition, std::move(why));
  };
  if (poisoned()) return refuse("poisoned instances are replaced, never reset: " + poison_reason_);
  if (in_call_) return refuse("the instance is in a call");
  return {};
}

Result<void> WtInstance::SaveGlobals(InstanceSnapshot& snapshot) {
  for (const GlobalExport& g : module_->global_exports()) {
    wasmtime_extern_t item;
    if (!wasmtime_instance_export_get(cx_, &instance_, g.name.data(), g.name.size(), &item) ||
        item.kind != WASMTIME_EXTERN_GLOBAL) {
      return MakeError(ErrorCode::kFailedPrecondition, "global " + std::to_string(g.index) +
                                                           " is not exported as keel made it");
    }
    SavedGlobal saved{.global = item.of.global};
    wasmtime_global_get(cx_, &saved.global, &saved.value);
    if (!SavableKind(saved.value.kind)) {
      wasmtime_val_unroot(&saved.value);
      return MakeError(ErrorCode::kFailedPrecondition,
                       "instances of this module cannot be reset: it has a mutable global of a "
                       "reference type");
    }
    snapshot.globals.push_back(saved);
  }
  return {};
}

Result<void> WtInstance::Snapshot(const SnapshotOptions& options) {
  // A failed snapshot must not leave an earlier one to reset to: parts of
  // the state (the host's) may already be recorded anew.
  if (snapshot_ && snapshot_->memory) snapshot_->memory->StopTracking(Memory());
  snapshot_.reset();
  if (auto ok = CheckResettable(); !ok) return ok;
  if (const auto& why = module_->reset_blocker()) {
    return MakeError(ErrorCode::kFailedPrecondition,
                     "instances of this module cannot be reset: " + *why);
  }
  if (module_->info().memory && !memory_) {
    return MakeError(ErrorCode::kFailedPrecondition,
                     "a memory that is not exported cannot be reset");
  }
  auto snapshot = std::make_unique<InstanceSnapshot>();
  if (auto ok = SaveGlobals(*snapshot); !ok) return ok;
  if (host_state_) {
    if (auto ok = host_state_->Snapshot(); !ok) return ok;
  }
  if (memory_) {
    auto memory = MemorySnapshot::Take(Memory(), {.track_writes = options.track_dirty_pages});
    if (!memory) return MakeError(memory.error());
    snapshot->memory = std::move(*memory);
  }
  snapshot_ = std::move(snapshot);
  return {};
}

Result<uint32_t> WtInstance::RestoreGlobals() {
  uint32_t restored = 0;
  wasmtime_val_t now;
  for (const SavedGlobal& saved : snapshot_->globals) {
    wasmtime_global_get(cx_, &saved.global, &now);
    if (SameBits(now, saved.value)) continue;
    if (Owned<wasmtime_error_t> error(wasmtime_global_set(cx_, &saved.global, &saved.value));
        error) {
      return MakeError(ErrorCode::kFailedPrecondition,
                       "restoring a global failed: " +
                           JoinChain(ErrorChain(ErrorText(error.get()))));
    }
    ++restored;
  }
  return restored;
}

Result<ResetStats> WtInstance::ResetToSnapshot() {
  if (auto ok = CheckResettable(); !ok) return MakeError(ok.error());
  if (!snapshot_) return MakeError(ErrorCode::kFailedPrecondition, "the instance has no snapshot");
  ResetStats stats;
  if (snapshot_->memory) {
    // Read afresh: the memory may have grown since.
    auto restored = snapshot_->memory->Restore(Memory());
    if (!restored) return MakeError(restored.error());
    stats.memory = restored->tracked ? ResetStats::Memory::kTracked : ResetStats::Memory::kCompared;
    stats.pages_copied = restored->pages_copied;
    stats.scanned = restored->scanned;
  }
  auto globals = RestoreGlobals();
  if (!globals) return MakeError(globals.error());
  stats.globals_restored = *globals;
  if (host_state_) {
    if (auto ok = host_state_->Reset(); !ok) return MakeError(ok.error());
  }
  return stats;
}

Result<ResetStats> WtInstance::Reset() {
  auto stats = ResetToSnapshot();
  if (!stats) Poison("reset failed: " + stats.error().message);
  return stats;
}

// ---------------------------------------------------------------------------
// Contexts

class WtContext final : public Context {
 public:
  WtContext(std::shared_ptr<EngineSet> engines, std::shared_ptr<MemoryBudget> budget)
      : interrupt_(std::make_shared<InterruptState>(std::move(engines))), budget_(std::move(budget)) {}

  Result<std::unique_ptr<Instance>> Instantiate(std::shared_ptr<const Module> module,
                                                std::shared_ptr<const Linker> linker,
                                                std::unique_ptr<HostState> host_state,
                                                uint64_t call_tag) override;

  std::shared_ptr<Interrupter> interrupter() override {
    return std::make_shared<WtInterrupter>(interrupt_);
  }

  void MaybeCollectGarbage() override {
    std::erase_if(pres_, [](const auto& kv) { return kv.second.Expired(); });
  }
  // Wasmtime frees dropped stores at once: only the pre-instantiations of
  // modules that are gone remain to drop.
  void CollectGarbage() override { MaybeCollectGarbage(); }

 private:
  struct PreKey {
    const WtModule* module;
    const Linker* linker;
    friend bool operator==(const PreKey&, const PreKey&) = default;
  };
  struct PreKeyHash {
    size_t operator()(const PreKey& k) const {
      return std::hash<const void*>()(k.module) * 31 + std::hash<const void*>()(k.linker);
    }
  };
  struct PreEntry {
    std::weak_ptr<const WtModule> module;
    std::weak_ptr<const Linker> linker;
    Owned<wasmtime_instance_pre_t> pre;
    bool Expired() const { return module.expired() || linker.expired(); }
  };

  Result<const wasmtime_instance_pre_t*> InstancePre(const std::shared_ptr<const WtModule>& module,
                                                     const std::shared_ptr<const Linker>& linker);

  std::shared_ptr<InterruptState> interrupt_;
  // Entries of modules or linkers that are gone are dropped before their
  // addresses could be reused.
  std::unordered_map<PreKey, PreEntry, PreKeyHash> pres_;
  std::shared_ptr<MemoryBudget> budget_;
};

// Binds `module`'s imports to the host functions of `linker` (already
// checked by CheckImports) and resolves them once.
Result<Owned<wasmtime_instance_pre_t>> NewInstancePre(const WtModule& module, const Linker& linker) {
  Owned<wasmtime_linker_t> bound(wasmtime_linker_new(module.engine()));
  wasmtime_linker_allow_shadowing(bound.get(), true);
  for (const ImportInfo& imp : module.info().imports) {
    const Linker::Entry* entry = linker.Find(imp.module, imp.name);
    Owned<wasm_functype_t> type = NewFuncType(entry->type);
    Owned<wasmtime_error_t> error(wasmtime_linker_define_func_unchecked(
        bound.get(), imp.module.data(), imp.module.size(), imp.name.data(), imp.name.size(),
        type.get(), &WtInstance::HostTrampoline, const_cast<Linker::Entry*>(entry), nullptr));
    if (error) {
      return MakeError(ErrorCode::kLinkError, "import '" + imp.module + "'.'" + imp.name +
                                                  "': " + JoinChain(ErrorChain(ErrorText(error.get()))));
    }
  }
  wasmtime_instance_pre_t* pre = nullptr;
  if (Owned<wasmtime_error_t> error(
          wasmtime_linker_instantiate_pre(bound.get(), module.module(), &pre));
      error) {
    return MakeError(ErrorCode::kLinkError, JoinChain(ErrorChain(ErrorText(error.get()))));
  }
  return Owned<wasmtime_instance_pre_t>(pre);
}

Result<const wasmtime_instance_pre_t*> WtContext::InstancePre(
    const std::shared_ptr<const WtModule>& module, const std::shared_ptr<const Linker>& linker) {
  PreKey key{module.get(), linker.get()};
  auto it = pres_.find(key);
  if (it != pres_.end() && !it->second.Expired()) return it->second.pre.get();
  MaybeCollectGarbage();
  auto pre = NewInstancePre(*module, *linker);
  if (!pre) return MakeError(pre.error());
  PreEntry& entry = pres_[key];
  entry = PreEntry{module, linker, std::move(*pre)};
  return entry.pre.get();
}

Result<std::unique_ptr<Instance>> WtContext::Instantiate(std::shared_ptr<const Module> module,
                                                         std::shared_ptr<const Linker> linker,
                                                         std::unique_ptr<HostState> host_state,
                                                         uint64_t call_tag) {
  auto wt_module = std::dynamic_pointer_cast<const WtModule>(module);
  if (!wt_module) return MakeError(ErrorCode::kInvalidArgument, "module of another engine");
  if (auto linked = CheckImports(wt_module->info(), linker.get()); !linked) {
    return MakeError(linked.error());
  }
  static const auto* const kNoImports =
      new std::shared_ptr<const Linker>(std::make_shared<Linker>());
  if (!linker) linker = *kNoImports;
  auto pre = InstancePre(wt_module, linker);
  if (!pre) return MakeError(pre.error());
  if (budget_ && wt_module->info().memory) {
    // Refused before anything runs when even the initial memory cannot fit.
    uint64_t initial = wt_module->info().memory->min * kWasmPageSize;
    if (initial > budget_->available()) {
      return tl::unexpected(BudgetExceeded(*budget_, "instantiation", initial));
    }
  }
  auto instance = std::make_unique<WtInstance>(interrupt_, std::move(wt_module), std::move(linker),
                                               std::move(host_state));
  if (auto ok = instance->Initialize(*pre, call_tag); !ok) return MakeError(ok.error());
  if (budget_) {
    if (auto charged = instance->ChargeTo(budget_); !charged) return MakeError(charged.error());
  }
  return std::unique_ptr<Instance>(std::move(instance));
}

// ---------------------------------------------------------------------------
// The engine

// Wasmtime's verdict on `bytes` exactly as given.
Result<Owned<wasmtime_module_t>> CompileBytes(wasm_engine_t* engine,
                                             std::span<const uint8_t> bytes) {
  wasmtime_module_t* module = nullptr;
  if (Owned<wasmtime_error_t> error(
          wasmtime_module_new(engine, bytes.data(), bytes.size(), &module));
      error) {
    return MakeError(ErrorCode::kInvalidModule, JoinChain(ErrorChain(ErrorText(error.get()))));
  }
  return Owned<wasmtime_module_t>(module);
}

struct Compiled {
  Owned<wasmtime_module_t> module;
  std::optional<RewriteResult> rewrite;  // without its bytes; nullopt: compiled as given
  std::optional<std::string> reset_blocker;
};

// Snapshots need every mutable global reachable and to know whether the
// code changes tables or segments: the module compiles as keel's rewriter
// leaves it. Where the rewriter cannot read the code (proposals beyond
// SpiderMonkey 102's) it compiles as given, without snapshots; a module
// Wasmtime refuses is judged as given, so that its error's offsets are the
// module's own.
Result<Compiled> CompileForSnapshots(wasm_engine_t* engine, std::span<const uint8_t> bytes) {
  Compiled out;
  auto rewritten = RewriteModule(bytes, {.export_mutable_globals = true, .scan_code = true});
  if (rewritten) {
    auto module = CompileBytes(engine, rewritten->bytes);
    if (module) {
      out.module = std::move(*module);
      out.reset_blocker = CodeResetBlocker(rewritten->features);
      std::vector<uint8_t>().swap(rewritten->bytes);  // Wasmtime keeps what it needs
      out.rewrite = std::move(*rewritten);
      return out;
    }
    out.reset_blocker = "Wasmtime refused keel's rewrite of it: " + module.error().message;
  } else {
    out.reset_blocker = "keel cannot read its code: " + rewritten.error().message;
  }
  auto module = CompileBytes(engine, bytes);
  if (!module) return MakeError(module.error());
  out.module = std::move(*module);
  return out;
}

class WtEngine final : public Engine {
 public:
  // An engine whose wasm engines could not be made reports `engines`'
  // error from every Compile and NewContext.
  explicit WtEngine(Result<std::shared_ptr<EngineSet>> engines) : engines_(std::move(engines)) {}

  Result<std::shared_ptr<const Module>> Compile(std::span<const uint8_t> bytes,
                                                const CompileOptions& options) override {
    if (!engines_) return MakeError(engines_.error());
    auto info = ReadModuleInfo(bytes);
    if (!info) return MakeError(info.error());
    if (info->memory) {
      // The store limiter enforces the cap at run time; refuse now a module
      // that could never be instantiated under it.
      uint64_t cap = options.max_memory_pages;
      if (info->memory->min > cap) {
        return MakeError(ErrorCode::kResourceExhausted,
                         "memory minimum " + std::to_string(info->memory->min) +
                             " pages exceeds the cap of " + std::to_string(cap) + " pages");
      }
      info->memory->max = std::min(info->memory->max.value_or(cap), cap);
    }
    EngineSet& set = **engines_;
    wasm_engine_t* engine = options.fuel ? set.fuel() : set.plain();
    if (!engine) return MakeError(ErrorCode::kInternal, "Wasmtime could not create an engine");
    auto compiled = CompileForSnapshots(engine, bytes);
    if (!compiled) return MakeError(compiled.error());
    return std::shared_ptr<const Module>(std::make_shared<WtModule>(
        std::move(*info), options, std::move(compiled->rewrite), std::move(compiled->reset_blocker),
        *engines_, engine, std::move(compiled->module)));
  }

  Result<std::unique_ptr<Context>> NewContext(const ContextOptions& options) override {
    if (!engines_) return MakeError(engines_.error());
    if (options.stack_quota_bytes < kMaxWasmStack) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "stack quota of " + std::to_string(options.stack_quota_bytes) +
                           " bytes is below Wasmtime's guest stack of " +
                           std::to_string(kMaxWasmStack) + " bytes");
    }
    return std::unique_ptr<Context>(std::make_unique<WtContext>(*engines_, options.memory_budget));
  }

  std::string_view name() const override { return "wasmtime-" WASMTIME_VERSION; }
  EngineKind kind() const override { return EngineKind::kWasmtime; }

  MemoryStats memory_stats() const override {
    return {.live_memories = memory_counters.live.load(),
            .committed_bytes = memory_counters.bytes.load()};
  }

  ResetSupport reset_support() const override {
    ResetSupport support;
    support.snapshots = true;
    support.dirty_page_tracking = WriteTrackingAvailable(&support.detail);
    return support;
  }

 private:
  Result<std::shared_ptr<EngineSet>> engines_;
};

}  // namespace

Result<std::unique_ptr<Engine>> NewWasmtimeEngine(const WasmtimeOptions& options) {
  auto engines = EngineSet::Create(options);
  if (!engines) return MakeError(engines.error());
  return std::unique_ptr<Engine>(std::make_unique<WtEngine>(std::move(*engines)));
}

Engine& WasmtimeEngine() {
  // Never destroyed: modules may be released by any thread until exit.
  static Engine* const engine = new WtEngine(EngineSet::Create({}));
  return *engine;
}

}  // namespace keel::engine
