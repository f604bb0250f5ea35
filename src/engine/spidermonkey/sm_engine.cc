// The SpiderMonkey backend of keel's engine interface. The only file in keel
// that includes SpiderMonkey headers.
//
// Shape: JS_Init once per process; one JSContext (with one global) per
// thread that runs guests; a dedicated compile thread with its own context
// turns bytes into a JS::WasmModule, which any context can then instantiate
// through WasmModule::createObject. Guest calls go through JS::Call on the
// exported function; traps arrive as JS exceptions and are mapped back to
// keel's trap kinds by their error number; interrupts are uncatchable
// (the interrupt callback returns false).

#include <jsapi.h>
#include <jsfriendapi.h>
#include <js/Array.h>
#include <js/ArrayBuffer.h>
#include <js/BigInt.h>
#include <js/ContextOptions.h>
#include <js/Conversions.h>
#include <js/Equality.h>
#include <js/ErrorReport.h>
#include <js/Exception.h>
#include <js/Initialization.h>
#include <js/Interrupt.h>
#include <js/Stack.h>
#include <js/WasmModule.h>
#include <js/friend/ErrorMessages.h>

#include <atomic>
#include <charconv>
#include <cinttypes>
#include <cstdio>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "engine/spidermonkey/sm_engine.h"

#include "base/mutex.h"
#include "base/names.h"
#include "engine/dirty_pages.h"
#include "engine/value_buffer.h"

namespace keel::engine {
namespace {

JSClass kGlobalClass = {"KeelGlobal", JSCLASS_GLOBAL_FLAGS, &JS::DefaultGlobalClassOps,
                        nullptr,      nullptr,              nullptr};

constexpr size_t kCompileThreadStack = 8 << 20;

// ---------------------------------------------------------------------------
// Errors

TrapKind TrapKindFor(unsigned error_number) {
  switch (error_number) {
    case JSMSG_WASM_UNREACHABLE: return TrapKind::kUnreachable;
    case JSMSG_WASM_INT_DIVIDE_BY_ZERO: return TrapKind::kIntegerDivideByZero;
    case JSMSG_WASM_INTEGER_OVERFLOW: return TrapKind::kIntegerOverflow;
    case JSMSG_WASM_INVALID_CONVERSION: return TrapKind::kInvalidConversion;
    case JSMSG_WASM_OUT_OF_BOUNDS: return TrapKind::kMemoryOutOfBounds;
    case JSMSG_WASM_TABLE_OUT_OF_BOUNDS: return TrapKind::kTableOutOfBounds;
    case JSMSG_WASM_IND_CALL_TO_NULL: return TrapKind::kIndirectCallToNull;
    case JSMSG_WASM_IND_CALL_BAD_SIG: return TrapKind::kIndirectCallTypeMismatch;
    case JSMSG_OVER_RECURSED: return TrapKind::kStackOverflow;
    case JSMSG_OUT_OF_MEMORY:
    case JSMSG_ALLOC_OVERFLOW: return TrapKind::kOutOfMemory;
    default: return TrapKind::kOther;
  }
}

struct PendingException {
  bool present = false;
  JSExnType type = JSEXN_ERR;
  unsigned error_number = 0;
  std::string message;
  std::string backtrace;
};

// Takes the pending exception off the context and describes it.
PendingException TakeException(JSContext* cx) {
  PendingException out;
  if (!JS_IsExceptionPending(cx)) return out;
  out.present = true;
  JS::ExceptionStack stack(cx);
  if (!JS::StealPendingExceptionStack(cx, &stack)) {
    out.message = "unknown engine error";
    return out;
  }
  JS::ErrorReportBuilder builder(cx);
  if (builder.init(cx, stack, JS::ErrorReportBuilder::NoSideEffects) && builder.report()) {
    const JSErrorReport* report = builder.report();
    out.type = static_cast<JSExnType>(report->exnType);
    out.error_number = report->errorNumber;
    if (report->message()) out.message = report->message().c_str();
  }
  if (out.message.empty()) out.message = builder.toStringResult().c_str() ? builder.toStringResult().c_str() : "";
  if (out.message.empty()) out.message = "uncaught exception";
  if (stack.stack()) {
    JS::RootedString str(cx);
    if (JS::BuildStackString(cx, nullptr, stack.stack(), &str, 0) && str) {
      if (JS::UniqueChars chars = JS_EncodeStringToUTF8(cx, str)) out.backtrace = chars.get();
    }
  }
  JS_ClearPendingException(cx);
  return out;
}

// SpiderMonkey frames of wasm code read "@:wasm-function[7]:0x1a3" (code
// offset in the module bytes); returns the innermost frame's offset.
std::optional<uint64_t> InnermostWasmOffset(std::string_view backtrace) {
  size_t at = backtrace.find("wasm-function[");
  if (at == std::string_view::npos) return std::nullopt;
  size_t colon = backtrace.find("]:0x", at);
  if (colon == std::string_view::npos) return std::nullopt;
  uint64_t offset = 0;
  const char* begin = backtrace.data() + colon + 4;
  auto [end, ec] = std::from_chars(begin, backtrace.data() + backtrace.size(), offset, 16);
  if (ec != std::errc()) return std::nullopt;
  return offset;
}

// SpiderMonkey reports call_indirect and table.* bounds failures with the
// same error number as memory accesses; the faulting opcode tells them apart.
bool IsTableOpcodeAt(std::span<const uint8_t> code, uint64_t offset) {
  if (offset >= code.size()) return false;
  uint8_t op = code[offset];
  if (op == 0x11 || op == 0x13 || op == 0x25 || op == 0x26) return true;  // call_indirect, table.get/set
  if (op == 0xfc && offset + 1 < code.size()) {
    uint8_t sub = code[offset + 1];
    return sub >= 0x0c && sub <= 0x11;  // table.init .. table.fill
  }
  return false;
}

// The code offset in a frame's ":0x1a3", translated from the compiled
// (rewritten) module to the module as given.
std::string FrameOffset(std::string_view hex, const RewriteResult& rewrite) {
  uint64_t offset = 0;
  auto [end, ec] = std::from_chars(hex.data(), hex.data() + hex.size(), offset, 16);
  if (ec != std::errc()) return "0x" + std::string(hex);
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%" PRIx64, rewrite.OriginalOffset(offset).value_or(offset));
  return buf;
}

// Rewrites SpiderMonkey's frames as "wasm-function[7] <name> @0x1a3", one
// per line, innermost first, with offsets into the module as given; frames
// of keel's own wrapper functions are left out.
std::string FormatBacktrace(std::string_view raw,
                            const std::function<const std::string*(uint32_t)>& name_of,
                            const RewriteResult& rewrite) {
  std::string out;
  size_t pos = 0;
  while (pos < raw.size()) {
    size_t eol = raw.find('\n', pos);
    if (eol == std::string_view::npos) eol = raw.size();
    std::string_view line = raw.substr(pos, eol - pos);
    pos = eol + 1;
    size_t at = line.find("wasm-function[");
    if (at == std::string_view::npos) {
      if (!line.empty()) out.append(line).append("\n");
      continue;
    }
    size_t close = line.find(']', at);
    uint32_t index = 0;
    std::from_chars(line.data() + at + 14, line.data() + close, index);
    if (index >= rewrite.original_functions) continue;
    out += "wasm-function[" + std::to_string(index) + "]";
    if (const std::string* name = name_of(index)) out += " <" + *name + ">";
    size_t off = line.find(":0x", close);
    if (off != std::string_view::npos) out += " @" + FrameOffset(line.substr(off + 3), rewrite);
    out += "\n";
  }
  return out;
}

// ---------------------------------------------------------------------------
// Values

// With `bits`, f32 and f64 cross the JS boundary as the i32 and i64 of
// their bit patterns (the rewritten module reinterprets them), because JS
// numbers canonicalise NaNs. Without it, floats go as JS numbers, NaNs
// canonicalised: a double whose bits are a non-canonical NaN is not a valid
// JS::Value (SpiderMonkey would read it as a tagged pointer).
JS::Value ToJs(JSContext* cx, const Value& v, bool bits, bool* ok) {
  *ok = true;
  ValType type = v.type();
  if (bits && type == ValType::kF32) return JS::Int32Value(static_cast<int32_t>(v.bits()));
  if (bits && type == ValType::kF64) type = ValType::kI64;
  switch (type) {
    case ValType::kI32: return JS::Int32Value(v.i32());
    case ValType::kF32: return JS::CanonicalizedDoubleValue(static_cast<double>(v.f32()));
    case ValType::kF64: return JS::CanonicalizedDoubleValue(v.f64());
    case ValType::kI64: {
      JS::BigInt* big = JS::NumberToBigInt(cx, static_cast<int64_t>(v.bits()));
      if (!big) {
        *ok = false;
        return JS::UndefinedValue();
      }
      return JS::BigIntValue(big);
    }
  }
  return JS::UndefinedValue();
}

double NumberOf(const JS::Value& v) { return v.isInt32() ? v.toInt32() : v.toDouble(); }

// Converts a value the engine produced for a declared wasm type (passed by
// bits when `bits`, see ToJs). Values that came out of wasm always have the
// right JS representation; values a JS function could forge never reach
// here.
Result<Value> FromJs(JSContext* cx, JS::HandleValue v, ValType type, bool bits) {
  if (bits && (type == ValType::kF32 || type == ValType::kF64)) {
    const ValType carrier = type == ValType::kF32 ? ValType::kI32 : ValType::kI64;
    auto raw = FromJs(cx, v, carrier, /*bits=*/false);
    if (!raw) return raw;
    const uint64_t mask = type == ValType::kF32 ? 0xffffffffu : ~uint64_t{0};
    return Value::FromBits(type, raw->bits() & mask);
  }
  switch (type) {
    case ValType::kI32: {
      int32_t i;
      if (v.isInt32()) return Value::I32(v.toInt32());
      if (!JS::ToInt32(cx, v, &i)) break;
      return Value::I32(i);
    }
    case ValType::kI64:
      if (v.isBigInt()) return Value::I64(JS::ToBigInt64(v.toBigInt()));
      break;
    case ValType::kF32:
      if (v.isNumber()) return Value::F32(static_cast<float>(NumberOf(v)));
      break;
    case ValType::kF64:
      if (v.isNumber()) return Value::F64(NumberOf(v));
      break;
  }
  JS_ClearPendingException(cx);
  return MakeError(ErrorCode::kInternal,
                   std::string("engine returned a value that is not ") + std::string(ToString(type)));
}

// Property access by a UTF-8 name of any content: JS_GetProperty's
// `const char*` is read as Latin-1 and ends at the first NUL.
bool NameToId(JSContext* cx, std::string_view name, JS::MutableHandleId id) {
  JSString* chars = JS_NewStringCopyUTF8N(cx, JS::UTF8Chars(name.data(), name.size()));
  if (!chars) return false;
  JS::RootedString str(cx, chars);
  return JS_StringToId(cx, str, id);
}

bool GetNamed(JSContext* cx, JS::HandleObject obj, std::string_view name,
              JS::MutableHandleValue value) {
  JS::RootedId id(cx);
  return NameToId(cx, name, &id) && JS_GetPropertyById(cx, obj, id, value);
}

bool DefineNamed(JSContext* cx, JS::HandleObject obj, std::string_view name,
                 JS::HandleObject value) {
  JS::RootedId id(cx);
  return NameToId(cx, name, &id) && JS_DefinePropertyById(cx, obj, id, value, JSPROP_ENUMERATE);
}

// ---------------------------------------------------------------------------
// Modules

// A module as keel shows it (info_: the original's names, signatures and
// indices) and as SpiderMonkey compiled it (rewrite_: renamed exports and
// imports, float wrappers; see module_rewrite.h).
class SmModule final : public Module {
 public:
  SmModule(ModuleInfo info, CompileOptions options, RewriteResult rewrite,
           RefPtr<JS::WasmModule> module)
      : info_(std::move(info)),
        options_(options),
        rewrite_(std::move(rewrite)),
        module_(std::move(module)) {
    for (const ExportInfo& e : info_.exports) {
      if (e.kind == ExternKind::kFunc) func_names_.emplace(e.index, QuoteName(e.name));
    }
    snapshot_blocker_ = SnapshotBlocker(rewrite_);
    for (const GlobalExport& g : rewrite_.globals) global_exports_.push_back(g.name);
  }
  const ModuleInfo& info() const override { return info_; }
  const CompileOptions& options() const override { return options_; }
  JS::WasmModule* wasm_module() const { return module_.get(); }
  std::span<const uint8_t> bytes() const { return rewrite_.bytes; }
  const RewriteResult& rewrite() const { return rewrite_; }
  const std::string* FuncName(uint32_t index) const {
    auto it = func_names_.find(index);
    return it == func_names_.end() ? nullptr : &it->second;
  }
  // The exports (in the compiled module) of every mutable global, which a
  // snapshot saves: the module's own and those keel's rewrite added.
  const std::vector<std::string>& global_exports() const { return global_exports_; }
  // Why instances cannot be reset; nullopt if they can.
  const std::optional<std::string>& snapshot_blocker() const { return snapshot_blocker_; }

 private:
  // A reset restores memory, mutable globals and host state; not tables the
  // code changes, segments it drops, or globals of types keel cannot pass.
  static std::optional<std::string> SnapshotBlocker(const RewriteResult& rewrite) {
    if (auto why = CodeResetBlocker(rewrite.features)) return why;
    for (const GlobalExport& g : rewrite.globals) {
      if (!g.type) return "it has a mutable global of a type keel cannot save (v128 or a reference)";
    }
    return std::nullopt;
  }

  ModuleInfo info_;
  CompileOptions options_;
  RewriteResult rewrite_;  // the bytes as compiled, and how to reach exports and imports
  std::map<uint32_t, std::string> func_names_;
  std::vector<std::string> global_exports_;
  std::optional<std::string> snapshot_blocker_;
  RefPtr<JS::WasmModule> module_;
};

// ---------------------------------------------------------------------------
// Interrupts

// Shared between a context and its Interrupter handles; outlives both.
// Calls on one context carry tags that never decrease, so "the largest tag
// ever requested" is enough to remember a request that raced ahead of the
// call it targets, and a stale request can never match a later call.
//
// The host's interrupt hook never runs under `mu`: a request hands it out
// as a wake-up that the requester runs later, and a host function does not
// return until every wake-up of its hook that started has finished, so the
// hook may use whatever the host function's frame owns.
struct InterruptState {
  struct Hook {
    std::function<void()> fn;
  };

  Mutex mu;
  CondVar hook_done;
  JSContext* cx GUARDED_BY(mu) = nullptr;  // null once the context is gone
  std::atomic<uint64_t> running_tag{0};
  std::atomic<uint64_t> requested_tag{0};
  std::shared_ptr<Hook> hook GUARDED_BY(mu);
  int hooks_running GUARDED_BY(mu) = 0;

  bool InterruptedNow() const {
    uint64_t running = running_tag.load();
    return running != 0 && requested_tag.load() == running;
  }

  // Runs `hook` unless it was cleared or replaced in the meantime.
  // A hook that throws is the host's bug; it must not leave hooks_running
  // counted (its host function could then never return).
  static void RunHook(const std::shared_ptr<InterruptState>& self, const std::shared_ptr<Hook>& hook) {
    {
      MutexLock lock(self->mu);
      if (self->hook != hook) return;
      self->hooks_running++;
    }
    std::exception_ptr thrown;
    try {
      hook->fn();
    } catch (...) {
      thrown = std::current_exception();
    }
    {
      MutexLock lock(self->mu);
      if (--self->hooks_running == 0) self->hook_done.SignalAll();
    }
    if (thrown) std::rethrow_exception(thrown);
  }

  // Drops the hook and waits until no wake-up of it is running.
  void ClearHook() EXCLUDES(mu) {
    MutexLock lock(mu);
    hook = nullptr;
    while (hooks_running > 0) hook_done.Wait(mu);
  }
};

class SmInterrupter final : public Interrupter {
 public:
  explicit SmInterrupter(std::shared_ptr<InterruptState> state) : state_(std::move(state)) {}

  std::function<void()> RequestDeferred(uint64_t call_tag) override {
    if (call_tag == 0) return {};
    std::shared_ptr<InterruptState::Hook> hook;
    {
      MutexLock lock(state_->mu);
      uint64_t prev = state_->requested_tag.load();
      while (prev < call_tag && !state_->requested_tag.compare_exchange_weak(prev, call_tag)) {
      }
      if (state_->cx == nullptr || state_->running_tag.load() != call_tag) return {};
      JS_RequestInterruptCallback(state_->cx);
      hook = state_->hook;
    }
    if (!hook) return {};
    return [state = state_, hook = std::move(hook)] { InterruptState::RunHook(state, hook); };
  }

 private:
  std::shared_ptr<InterruptState> state_;
};

class SmContext;
class SmInstance;

// Per-thread pointer to the context, for the interrupt callback.
thread_local SmContext* tls_context = nullptr;

// Contexts alive in the process; JS_ShutDown is only safe at zero.
std::atomic<int> live_contexts{0};

// Address space SpiderMonkey reserves for each 32-bit memory on 64-bit
// hosts: 4 GiB of index space plus a 2 GiB guard (bounds checks by signal).
constexpr uint64_t kMemoryReservationBytes = uint64_t{6} << 30;

// A WebAssembly.Memory some context created, held weakly: the collector
// clears `object` when the memory is dead.
struct TrackedMemory {
  JS::Heap<JSObject*> object;
  uint64_t bytes = 0;  // byte length when last seen
};

// Process-wide totals over every context's tracked memories.
struct MemoryCounters {
  std::atomic<int64_t> live{0};
  std::atomic<uint64_t> committed{0};

  void Add(const TrackedMemory& m) {
    live++;
    committed += m.bytes;
  }
  void Remove(const TrackedMemory& m) {
    live--;
    committed -= m.bytes;
  }
  void Resize(TrackedMemory& m, uint64_t bytes) {
    committed += bytes - m.bytes;
    m.bytes = bytes;
  }
  MemoryStats Snapshot() const {
    MemoryStats stats;
    stats.live_memories = live.load();
    stats.reserved_bytes = static_cast<uint64_t>(std::max<int64_t>(0, stats.live_memories)) *
                           kMemoryReservationBytes;
    stats.committed_bytes = committed.load();
    return stats;
  }
};
MemoryCounters memory_counters;

bool OnInterrupt(JSContext* cx);

// ---------------------------------------------------------------------------
// Snapshots

// A mutable global (a WebAssembly.Global) and its value at the snapshot.
struct SavedGlobal {
  SavedGlobal(JSContext* cx, JSObject* global, const JS::Value& saved)
      : object(cx, global), value(cx, saved) {}
  JS::PersistentRootedObject object;
  JS::PersistentRootedValue value;
};

struct InstanceSnapshot {
  std::unique_ptr<MemorySnapshot> memory;  // null without a linear memory
  std::vector<std::unique_ptr<SavedGlobal>> globals;
};

// ---------------------------------------------------------------------------
// Instances

class SmInstance final : public Instance, public Caller {
 public:
  SmInstance(SmContext* ctx, std::shared_ptr<const SmModule> module,
             std::shared_ptr<const Linker> linker, std::unique_ptr<HostState> host_state);
  ~SmInstance() override;

  // Instance
  Result<Func> Lookup(std::string_view name) const override;
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
  bool interrupted() const override;
  void SetInterruptHook(std::function<void()> hook) override;

  Result<void> Initialize(uint64_t call_tag);
  // Charges the memory instantiation left to `budget`; kResourceExhausted
  // when it does not fit.
  Result<void> ChargeTo(std::shared_ptr<MemoryBudget> budget);
  static bool HostTrampoline(JSContext* cx, unsigned argc, JS::Value* vp);
  // The exported WebAssembly.Global `name` (rewritten module's name).
  Result<Value> GetGlobal(std::string_view name, ValType type);
  Result<void> SetGlobal(std::string_view name, const Value& value);

  // What a host function's JS trampoline needs: the host function, and
  // whether its floats cross by bits (see ToJs).
  struct HostBinding {
    const Linker::Entry* entry;
    bool bits;
  };

 private:
  // Runs fn() (which enters the guest) as the call `call_tag`, and turns a
  // failure into an Error, poisoning the instance.
  template <typename Fn>
  Result<void> Guarded(uint64_t call_tag, std::string_view what, Fn&& fn);
  JSObject* ExportObject(uint32_t export_index) const;
  Result<void> BuildImportObject(JS::HandleObject imports);
  // Snapshots: the memory's range as the engine has it now, read afresh.
  Result<std::span<uint8_t>> MemoryRange();
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
  // The memory's byte length now (0 without one), read afresh.
  uint64_t MemoryBytes() { return Memory().size(); }
  // Around a call on a budget: grants memory.grow what the budget has free
  // (up to the cap) through the rewrite's grant global; then charges what
  // the call kept.
  Result<void> GrantForCall();
  void SettleAfterCall();
  Result<void> SetGrant(uint64_t pages);
  std::string Backtrace(std::string_view raw) const {
    return FormatBacktrace(
        raw, [this](uint32_t index) { return module_->FuncName(index); }, module_->rewrite());
  }

  SmContext* ctx_;
  JSContext* cx_;
  std::shared_ptr<const SmModule> module_;
  std::shared_ptr<const Linker> linker_;
  std::unique_ptr<HostState> host_state_;
  JS::PersistentRootedObject instance_;
  JS::PersistentRootedObject exports_;
  JS::PersistentRootedObject memory_;
  // Exported function objects by export index, resolved on first Lookup.
  mutable std::vector<std::unique_ptr<JS::PersistentRootedObject>> funcs_;
  TrackedMemory* tracked_memory_ = nullptr;  // owned by ctx_; alive while memory_ is
  std::string poison_reason_;
  bool in_call_ = false;
  std::optional<Error> host_error_;  // the error a host function ended the call with
  std::vector<HostBinding> host_bindings_;  // by import index; never reallocated
  std::unique_ptr<InstanceSnapshot> snapshot_;
  std::optional<MemoryCharge> charge_;  // with a budget and a memory
  bool grows_on_budget_ = false;         // charge_, and code with memory.grow
  std::optional<uint64_t> grant_pages_;  // the grant global's value, when known
  friend class SmContext;
};

// ---------------------------------------------------------------------------
// Contexts

class SmContext final : public Context {
 public:
  static Result<std::unique_ptr<SmContext>> Create(const ContextOptions& options) {
    if (tls_context != nullptr) {
      return MakeError(ErrorCode::kFailedPrecondition, "this thread already has an engine context");
    }
    JSContext* cx = JS_NewContext(JS::DefaultHeapMaxBytes);
    if (!cx) return MakeError(ErrorCode::kInternal, "JS_NewContext failed");
    JS_SetNativeStackQuota(cx, options.stack_quota_bytes);
    if (!JS::InitSelfHostedCode(cx)) {
      JS_DestroyContext(cx);
      return MakeError(ErrorCode::kInternal, "JS::InitSelfHostedCode failed");
    }
    auto ctx = std::unique_ptr<SmContext>(new SmContext(cx, options.memory_budget));
    live_contexts.fetch_add(1);
    if (auto ok = ctx->Init(); !ok) return MakeError(ok.error());
    return ctx;
  }

  ~SmContext() override {
    {
      MutexLock lock(interrupt_->mu);
      interrupt_->cx = nullptr;
    }
    JS_RemoveWeakPointerZonesCallback(cx_, &SmContext::SweepMemories);
    for (auto& tracked : memories_) memory_counters.Remove(*tracked);
    memories_.clear();
    module_objects_.clear();
    instance_ctor_.reset();
    global_.reset();
    if (realm_entered_) JS::LeaveRealm(cx_, nullptr);
    JS_DestroyContext(cx_);
    tls_context = nullptr;
    live_contexts.fetch_sub(1);
  }

  Result<std::unique_ptr<Instance>> Instantiate(std::shared_ptr<const Module> module,
                                                std::shared_ptr<const Linker> linker,
                                                std::unique_ptr<HostState> host_state,
                                                uint64_t call_tag) override;

  std::shared_ptr<Interrupter> interrupter() override {
    return std::make_shared<SmInterrupter>(interrupt_);
  }

  void MaybeCollectGarbage() override { JS_MaybeGC(cx_); }

  void CollectGarbage() override {
    std::erase_if(module_objects_, [](const auto& kv) { return kv.second.owner.expired(); });
    JS_GC(cx_);
  }

  // Starts counting `memory` (a WebAssembly.Memory) as live until the
  // collector finds it dead.
  TrackedMemory* TrackMemory(JSObject* memory, uint64_t bytes) {
    auto tracked = std::make_unique<TrackedMemory>();
    tracked->object = memory;
    tracked->bytes = bytes;
    memory_counters.Add(*tracked);
    memories_.push_back(std::move(tracked));
    return memories_.back().get();
  }

  JSContext* cx() const { return cx_; }
  InterruptState& interrupt_state() { return *interrupt_; }

  // Marks the start of guest call `tag`. False when an interrupt for it was
  // already requested (the call must then not enter the guest).
  bool BeginCall(uint64_t tag) {
    interrupt_->running_tag.store(tag);
    return interrupt_->requested_tag.load() != tag;
  }
  void EndCall() {
    interrupt_->ClearHook();
    interrupt_->running_tag.store(0);
  }

  // The WebAssembly.Module object for `module` in this context, created once.
  JSObject* ModuleObject(const std::shared_ptr<const SmModule>& module) {
    auto it = module_objects_.find(module.get());
    if (it != module_objects_.end() && !it->second.owner.expired()) return it->second.object->get();
    // Drop entries of modules that are gone so their addresses can be reused.
    std::erase_if(module_objects_, [](const auto& kv) { return kv.second.owner.expired(); });
    JS::RootedObject obj(cx_, module->wasm_module()->createObject(cx_));
    if (!obj) return nullptr;
    auto& entry = module_objects_[module.get()];
    entry.owner = module;
    entry.object = std::make_unique<JS::PersistentRootedObject>(cx_, obj);
    return obj;
  }

  JSObject* instance_ctor() const { return instance_ctor_->get(); }

 private:
  SmContext(JSContext* cx, std::shared_ptr<MemoryBudget> budget)
      : cx_(cx), interrupt_(std::make_shared<InterruptState>()), budget_(std::move(budget)) {
    MutexLock lock(interrupt_->mu);
    interrupt_->cx = cx;
  }

  // Forgets memories the collector found dead (weak references).
  static void SweepMemories(JSTracer* trc, void* data) {
    auto* self = static_cast<SmContext*>(data);
    std::erase_if(self->memories_, [trc](const std::unique_ptr<TrackedMemory>& tracked) {
      if (JS_UpdateWeakPointerAfterGC(trc, &tracked->object)) return false;
      memory_counters.Remove(*tracked);
      return true;
    });
  }

  Result<void> Init() {
    tls_context = this;
    JS_AddInterruptCallback(cx_, OnInterrupt);
    if (!JS_AddWeakPointerZonesCallback(cx_, &SmContext::SweepMemories, this)) {
      return MakeError(ErrorCode::kInternal, "JS_AddWeakPointerZonesCallback failed");
    }
    JS::RealmOptions realm_options;
    JS::RootedObject global(cx_, JS_NewGlobalObject(cx_, &kGlobalClass, nullptr,
                                                    JS::FireOnNewGlobalHook, realm_options));
    if (!global) return MakeError(ErrorCode::kInternal, "JS_NewGlobalObject failed");
    global_.emplace(cx_, global);
    JS::EnterRealm(cx_, global);
    realm_entered_ = true;
    JS::RootedValue wasm(cx_), ctor(cx_);
    if (!JS_GetProperty(cx_, global, "WebAssembly", &wasm) || !wasm.isObject()) {
      return MakeError(ErrorCode::kInternal, "this SpiderMonkey has no WebAssembly support");
    }
    JS::RootedObject wasm_obj(cx_, &wasm.toObject());
    if (!JS_GetProperty(cx_, wasm_obj, "Instance", &ctor) || !ctor.isObject()) {
      return MakeError(ErrorCode::kInternal, "WebAssembly.Instance missing");
    }
    instance_ctor_.emplace(cx_, &ctor.toObject());
    return {};
  }

  struct ModuleEntry {
    std::weak_ptr<const SmModule> owner;
    std::unique_ptr<JS::PersistentRootedObject> object;
  };

  JSContext* cx_;
  std::shared_ptr<InterruptState> interrupt_;
  std::optional<JS::PersistentRootedObject> global_;
  std::optional<JS::PersistentRootedObject> instance_ctor_;
  std::unordered_map<const SmModule*, ModuleEntry> module_objects_;
  std::vector<std::unique_ptr<TrackedMemory>> memories_;
  std::shared_ptr<MemoryBudget> budget_;
  bool realm_entered_ = false;
};

bool OnInterrupt(JSContext*) {
  SmContext* ctx = tls_context;
  // Returning false ends the running script uncatchably: only when the
  // request targets the call that is running now.
  return ctx == nullptr || !ctx->interrupt_state().InterruptedNow();
}

// ---------------------------------------------------------------------------
// SmInstance implementation

SmInstance::SmInstance(SmContext* ctx, std::shared_ptr<const SmModule> module,
                       std::shared_ptr<const Linker> linker, std::unique_ptr<HostState> host_state)
    : ctx_(ctx),
      cx_(ctx->cx()),
      module_(std::move(module)),
      linker_(std::move(linker)),
      host_state_(std::move(host_state)),
      instance_(cx_),
      exports_(cx_),
      memory_(cx_) {
  funcs_.resize(module_->info().exports.size());
}

SmInstance::~SmInstance() = default;

bool SmInstance::interrupted() const { return ctx_->interrupt_state().InterruptedNow(); }

void SmInstance::SetInterruptHook(std::function<void()> hook) {
  InterruptState& state = ctx_->interrupt_state();
  std::shared_ptr<InterruptState::Hook> box;
  if (hook) box = std::make_shared<InterruptState::Hook>(InterruptState::Hook{std::move(hook)});
  bool already = false;
  {
    MutexLock lock(state.mu);
    state.hook = box;
    already = state.InterruptedNow();
  }
  if (already && box) box->fn();
}

template <typename Fn>
Result<void> SmInstance::Guarded(uint64_t call_tag, std::string_view what, Fn&& fn) {
  if (poisoned()) {
    return MakeError(ErrorCode::kFailedPrecondition, "instance is poisoned: " + poison_reason_);
  }
  if (in_call_) {
    return MakeError(ErrorCode::kFailedPrecondition, "instance is already in a call (re-entry)");
  }
  if (call_tag == 0) return MakeError(ErrorCode::kInvalidArgument, "call tag must be nonzero");
  in_call_ = true;
  host_error_.reset();
  bool ok = ctx_->BeginCall(call_tag) && fn();
  ctx_->EndCall();
  in_call_ = false;
  if (ok) return {};

  PendingException exc = TakeException(cx_);
  Error error;
  if (host_error_) {
    error = std::move(*host_error_);
    host_error_.reset();
  } else if (!exc.present) {
    // Uncatchable termination without a host error: our interrupt.
    error = Error(ErrorCode::kInterrupted, std::string(what) + " interrupted");
  } else if (exc.type == JSEXN_WASMLINKERROR) {
    error = Error(ErrorCode::kLinkError, exc.message);
  } else if (exc.type == JSEXN_WASMRUNTIMEERROR || exc.type == JSEXN_INTERNALERR ||
             exc.error_number == JSMSG_OUT_OF_MEMORY) {
    TrapKind kind = TrapKindFor(exc.error_number);
    if (kind == TrapKind::kMemoryOutOfBounds) {
      auto offset = InnermostWasmOffset(exc.backtrace);
      if (offset && IsTableOpcodeAt(module_->bytes(), *offset)) kind = TrapKind::kTableOutOfBounds;
    }
    error = Error::Trap(kind, exc.message);
    error.backtrace = Backtrace(exc.backtrace);
  } else if (exc.type == JSEXN_RANGEERR && what == "instantiation") {
    // Memory reservation or size failures at instantiation.
    error = Error(ErrorCode::kResourceExhausted, exc.message);
  } else {
    error = Error::Trap(TrapKind::kOther, exc.message);
    error.backtrace = Backtrace(exc.backtrace);
  }
  Poison(error.ToString());
  return MakeError(std::move(error));
}

Result<Func> SmInstance::Lookup(std::string_view name) const {
  return LookupFunc(module_->info(), name);
}

JSObject* SmInstance::ExportObject(uint32_t export_index) const {
  auto& slot = funcs_[export_index];
  if (!slot) {
    JS::RootedValue v(cx_);
    const std::string& name = module_->rewrite().exports[export_index].call_name;
    if (!GetNamed(cx_, exports_, name, &v) || !v.isObject()) {
      JS_ClearPendingException(cx_);
      return nullptr;
    }
    slot = std::make_unique<JS::PersistentRootedObject>(cx_, &v.toObject());
  }
  return slot->get();
}

namespace {

// kInvalidArgument unless `args` and `results` fit the export's type.
Result<void> CheckCallShape(const ExportInfo& exp, std::span<const Value> args,
                            std::span<Value> results) {
  const FuncType& type = exp.func;
  auto name = [&exp] { return MessageName(exp.name); };  // only on failure: calls are hot
  if (args.size() != type.params.size()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "export " + name() + " takes " + std::to_string(type.params.size()) +
                         " argument(s) " + type.ToString() + ", got " +
                         std::to_string(args.size()));
  }
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i].type() != type.params[i]) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "export " + name() + " argument " + std::to_string(i + 1) + " is " +
                           std::string(ToString(type.params[i])) + ", got " +
                           std::string(ToString(args[i].type())));
    }
  }
  if (results.size() != type.results.size()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "export " + name() + " returns " + std::to_string(type.results.size()) +
                         " value(s), space for " + std::to_string(results.size()) + " given");
  }
  return {};
}

// Fills `results` from a call's return value: the value itself, or an
// array of them for multi-value.
Result<void> ReadResults(JSContext* cx, JS::HandleValue rval, const FuncType& type, bool bits,
                         std::span<Value> results) {
  if (type.results.size() == 1) {
    auto v = FromJs(cx, rval, type.results[0], bits);
    if (!v) return MakeError(v.error());
    results[0] = *v;
    return {};
  }
  if (type.results.empty()) return {};
  if (!rval.isObject()) {
    return MakeError(ErrorCode::kInternal, "multi-value result is not an array");
  }
  JS::RootedObject array(cx, &rval.toObject());
  JS::RootedValue element(cx);
  for (uint32_t i = 0; i < type.results.size(); ++i) {
    if (!JS_GetElement(cx, array, i, &element)) {
      JS_ClearPendingException(cx);
      return MakeError(ErrorCode::kInternal, "multi-value result unreadable");
    }
    auto v = FromJs(cx, element, type.results[i], bits);
    if (!v) return MakeError(v.error());
    results[i] = *v;
  }
  return {};
}

}  // namespace

Result<void> SmInstance::Call(const Func& func, std::span<const Value> args,
                              std::span<Value> results, uint64_t call_tag) {
  NoteMemoryUse();
  const auto& exports = module_->info().exports;
  if (func.export_index >= exports.size() || exports[func.export_index].kind != ExternKind::kFunc) {
    return MakeError(ErrorCode::kInvalidArgument, "not a function of this instance");
  }
  const ExportInfo& exp = exports[func.export_index];
  if (auto ok = CheckCallShape(exp, args, results); !ok) return ok;
  JSObject* fn_obj = ExportObject(func.export_index);
  if (!fn_obj) {
    return MakeError(ErrorCode::kInternal,
                     "export " + MessageName(exp.name) + " not found in instance");
  }
  const bool bits = module_->rewrite().exports[func.export_index].bits;

  JS::RootedValue fn(cx_, JS::ObjectValue(*fn_obj));
  JS::RootedValueVector js_args(cx_);
  if (!js_args.reserve(args.size())) return MakeError(ErrorCode::kResourceExhausted, "out of memory");
  for (const Value& v : args) {
    bool ok;
    JS::Value js = ToJs(cx_, v, bits, &ok);
    if (!ok) return MakeError(ErrorCode::kResourceExhausted, "out of memory");
    js_args.infallibleAppend(js);
  }
  JS::RootedValue rval(cx_);
  if (grows_on_budget_) {
    if (auto granted = GrantForCall(); !granted) return granted;
  }
  auto called = Guarded(call_tag, "call", [&] {
    return JS::Call(cx_, JS::UndefinedHandleValue, fn, JS::HandleValueArray(js_args), &rval);
  });
  if (grows_on_budget_) SettleAfterCall();
  if (!called) return called;
  return ReadResults(cx_, rval, exp.func, bits, results);
}

std::span<uint8_t> SmInstance::Memory() {
  NoteMemoryUse();
  if (!memory_) return {};
  JS::RootedValue buffer(cx_);
  if (!JS_GetProperty(cx_, memory_, "buffer", &buffer) || !buffer.isObject()) {
    JS_ClearPendingException(cx_);
    return {};
  }
  size_t length = 0;
  bool shared = false;
  uint8_t* data = nullptr;
  JS::GetArrayBufferLengthAndData(&buffer.toObject(), &length, &shared, &data);
  if (tracked_memory_ && tracked_memory_->bytes != length) memory_counters.Resize(*tracked_memory_, length);
  return {data, length};
}

namespace {

// Hands a host function's results back to the guest: undefined, the value,
// or an array of them for multi-value.
bool SetHostResults(JSContext* cx, std::span<const Value> results, bool bits,
                    JS::MutableHandleValue rval) {
  bool ok = true;
  if (results.empty()) {
    rval.setUndefined();
  } else if (results.size() == 1) {
    rval.set(ToJs(cx, results[0], bits, &ok));
  } else {
    JS::RootedValueVector values(cx);
    for (const Value& r : results) {
      JS::Value v = ToJs(cx, r, bits, &ok);
      if (!ok || !values.append(v)) return false;
    }
    JSObject* array = JS::NewArrayObject(cx, values);
    if (!array) return false;
    rval.setObject(*array);
  }
  return ok;
}

Error HostFailure(Error error) {
  if (error.code != ErrorCode::kInterrupted && error.code != ErrorCode::kTrap) {
    return Error::Trap(TrapKind::kHostError, error.ToString());
  }
  if (error.code == ErrorCode::kTrap && error.trap == TrapKind::kNone) {
    error.trap = TrapKind::kHostError;
  }
  return error;
}

}  // namespace

bool SmInstance::HostTrampoline(JSContext* cx, unsigned argc, JS::Value* vp) {
  JS::CallArgs call = JS::CallArgsFromVp(argc, vp);
  JSObject* callee = &call.callee();
  auto* binding =
      static_cast<const HostBinding*>(js::GetFunctionNativeReserved(callee, 0).toPrivate());
  auto* self = static_cast<SmInstance*>(js::GetFunctionNativeReserved(callee, 1).toPrivate());
  const Linker::Entry* entry = binding->entry;
  const FuncType& type = entry->type;

  ValueBuffer args_buf(type.params.size());
  std::span<Value> args = args_buf.span();
  for (size_t i = 0; i < type.params.size(); ++i) {
    auto v = FromJs(cx, call.get(i), type.params[i], binding->bits);
    if (!v) {
      self->host_error_ = Error::Trap(TrapKind::kHostError, v.error().message);
      return false;
    }
    args[i] = *v;
  }
  ValueBuffer results_buf(type.results.size());
  std::span<Value> results = results_buf.span();
  for (size_t i = 0; i < type.results.size(); ++i) {
    results[i] = Value::FromBits(type.results[i], 0);
  }

  self->NoteForeignWrites();
  Result<void> outcome = entry->fn(*self, args, results);
  // The hook may point into the host function's frame: no wake-up of it may
  // run (or still be running) once the function has returned.
  self->ctx_->interrupt_state().ClearHook();
  if (!outcome) {
    self->host_error_ = HostFailure(std::move(outcome.error()));
    // Uncatchable: the guest cannot intercept a host trap or an exit.
    return false;
  }
  for (size_t i = 0; i < results.size(); ++i) {
    if (results[i].type() != type.results[i]) {
      self->host_error_ = Error::Trap(TrapKind::kHostError, "host function returned a " +
                                                                std::string(ToString(results[i].type())) +
                                                                " where " + std::string(ToString(type.results[i])) +
                                                                " was declared");
      return false;
    }
  }
  return SetHostResults(cx, results, binding->bits, call.rval());
}

// The import object: {module: {name: host function}}, under the names the
// rewritten module imports.
Result<void> SmInstance::BuildImportObject(JS::HandleObject imports) {
  const ModuleInfo& info = module_->info();
  const RewriteResult& rewrite = module_->rewrite();
  host_bindings_.reserve(info.imports.size());  // the functions point into it
  for (size_t i = 0; i < info.imports.size(); ++i) {
    const ImportInfo& imp = info.imports[i];
    const RewrittenImport& js = rewrite.imports[i];
    JS::RootedValue ns(cx_);
    JS::RootedObject ns_obj(cx_);
    if (!GetNamed(cx_, imports, js.module, &ns)) break;
    if (ns.isObject()) {
      ns_obj = &ns.toObject();
    } else {
      ns_obj = JS_NewPlainObject(cx_);
      if (!ns_obj || !DefineNamed(cx_, imports, js.module, ns_obj)) break;
    }
    host_bindings_.push_back({linker_->Find(imp.module, imp.name), js.bits});
    JSFunction* fn = js::NewFunctionWithReserved(cx_, HostTrampoline, imp.func.params.size(), 0,
                                                 js.name.c_str());
    if (!fn) break;
    JS::RootedObject fn_obj(cx_, JS_GetFunctionObject(fn));
    js::SetFunctionNativeReserved(fn_obj, 0, JS::PrivateValue(&host_bindings_.back()));
    js::SetFunctionNativeReserved(fn_obj, 1, JS::PrivateValue(this));
    if (!DefineNamed(cx_, ns_obj, js.name, fn_obj)) break;
  }
  if (JS_IsExceptionPending(cx_)) {
    PendingException exc = TakeException(cx_);
    return MakeError(ErrorCode::kInternal, "building imports failed: " + exc.message);
  }
  return {};
}

Result<void> SmInstance::Initialize(uint64_t call_tag) {
  const ModuleInfo& info = module_->info();
  if (auto linked = CheckImports(info, linker_.get()); !linked) return linked;

  JS::RootedObject module_obj(cx_, ctx_->ModuleObject(module_));
  if (!module_obj) {
    TakeException(cx_);
    return MakeError(ErrorCode::kInternal, "could not create the module object");
  }
  JS::RootedObject imports(cx_, JS_NewPlainObject(cx_));
  if (!imports) return MakeError(ErrorCode::kResourceExhausted, "out of memory");
  if (auto built = BuildImportObject(imports); !built) return built;

  JS::RootedValueArray<2> ctor_args(cx_);
  ctor_args[0].setObject(*module_obj);
  ctor_args[1].setObject(*imports);
  JS::RootedValue ctor(cx_, JS::ObjectValue(*ctx_->instance_ctor()));
  JS::RootedObject instance(cx_);
  auto constructed = Guarded(call_tag, "instantiation", [&] {
    return JS::Construct(cx_, ctor, JS::HandleValueArray(ctor_args), &instance);
  });
  if (!constructed) return constructed;
  instance_ = instance;

  JS::RootedValue exports(cx_);
  if (!JS_GetProperty(cx_, instance_, "exports", &exports) || !exports.isObject()) {
    TakeException(cx_);
    return MakeError(ErrorCode::kInternal, "instance has no exports object");
  }
  exports_ = &exports.toObject();
  const ExportInfo* mem = info.FindExport("memory");
  if (!mem || mem->kind != ExternKind::kMemory) {
    mem = nullptr;
    for (const ExportInfo& e : info.exports) {
      if (e.kind == ExternKind::kMemory) {
        mem = &e;
        break;
      }
    }
  }
  // A memory the module does not export is reached through keel's export.
  const std::optional<std::string>& hidden = module_->rewrite().memory_export;
  if (mem || hidden) {
    JS::RootedValue m(cx_);
    const std::string& name =
        mem ? module_->rewrite().exports[mem - info.exports.data()].name : *hidden;
    if (GetNamed(cx_, exports_, name, &m) && m.isObject()) memory_ = &m.toObject();
    JS_ClearPendingException(cx_);
  }
  if (memory_) {
    tracked_memory_ = ctx_->TrackMemory(memory_, 0);
    (void)Memory();  // records its size
  }
  // WASI reactors must run _initialize once before any other export.
  if (const ExportInfo* init = info.FindFuncExport("_initialize");
      init && init->func.params.empty() && init->func.results.empty()) {
    auto func = Lookup("_initialize");
    if (!func) return MakeError(func.error());
    if (auto ok = Call(*func, {}, {}, call_tag); !ok) return ok;
  }
  return {};
}

namespace {

// The WebAssembly.Global object exported as `name`, or null.
JSObject* GlobalObject(JSContext* cx, JS::HandleObject exports, std::string_view name) {
  JS::RootedValue v(cx);
  if (!GetNamed(cx, exports, name, &v) || !v.isObject()) {
    JS_ClearPendingException(cx);
    return nullptr;
  }
  return &v.toObject();
}

}  // namespace

Result<Value> SmInstance::GetGlobal(std::string_view name, ValType type) {
  JS::RootedObject global(cx_, GlobalObject(cx_, exports_, name));
  if (!global) return MakeError(ErrorCode::kNotFound, "no global exported as " + MessageName(name));
  JS::RootedValue v(cx_);
  if (!JS_GetProperty(cx_, global, "value", &v)) {
    PendingException exc = TakeException(cx_);
    return MakeError(ErrorCode::kInvalidArgument,
                     "global " + MessageName(name) + ": " + exc.message);
  }
  return FromJs(cx_, v, type, /*bits=*/false);
}

Result<void> SmInstance::SetGlobal(std::string_view name, const Value& value) {
  JS::RootedObject global(cx_, GlobalObject(cx_, exports_, name));
  if (!global) return MakeError(ErrorCode::kNotFound, "no global exported as " + MessageName(name));
  bool ok;
  JS::RootedValue v(cx_, ToJs(cx_, value, /*bits=*/false, &ok));
  if (!ok) return MakeError(ErrorCode::kResourceExhausted, "out of memory");
  if (!JS_SetProperty(cx_, global, "value", v)) {
    PendingException exc = TakeException(cx_);
    return MakeError(ErrorCode::kInvalidArgument,
                     "global " + MessageName(name) + ": " + exc.message);
  }
  return {};
}

// ---------------------------------------------------------------------------
// SmInstance and the memory budget

Result<void> SmInstance::ChargeTo(std::shared_ptr<MemoryBudget> budget) {
  if (!memory_) return {};
  if (auto charged = ChargeInstantiation(charge_, std::move(budget), MemoryBytes()); !charged) {
    return charged;
  }
  const RewriteResult& rewrite = module_->rewrite();
  // Code without memory.grow never takes a grant: its charge is final.
  grows_on_budget_ = rewrite.grant_export && rewrite.features.memory_grow;
  // Until a call takes a grant, memory.grow has none.
  return grows_on_budget_ ? SetGrant(0) : Result<void>();
}

Result<void> SmInstance::SetGrant(uint64_t pages) {
  if (grant_pages_ == pages) return {};
  // The grant is an i64 for a 64-bit memory.
  const std::string& name = *module_->rewrite().grant_export;
  auto set = SetGlobal(name, Value::I32(static_cast<int32_t>(pages)));
  if (!set) set = SetGlobal(name, Value::I64(static_cast<int64_t>(pages)));
  if (!set) return set;
  grant_pages_ = pages;
  return {};
}

Result<void> SmInstance::GrantForCall() {
  // Memory changes size only in calls, and each ends charging it exactly.
  uint64_t committed = charge_->charged();
  uint64_t cap =
      module_->info().memory->max.value_or(module_->options().max_memory_pages) * kWasmPageSize;
  uint64_t pages = charge_->Grant(committed, cap > committed ? cap - committed : 0) / kWasmPageSize;
  // memory.grow takes whole pages: the rest of the grant goes back now.
  charge_->Settle(committed + pages * kWasmPageSize);
  return SetGrant(pages);
}

void SmInstance::SettleAfterCall() {
  // Without a grant the memory cannot have grown.
  if (grant_pages_ == 0) return;
  uint64_t committed = MemoryBytes();
  // The guest spent part of the grant when it grew: the global's value is
  // no longer known. Otherwise it still holds the grant, and the next call
  // granting as much need not set it (a property write through JS).
  const uint64_t before = charge_->charged() - grant_pages_.value_or(0) * kWasmPageSize;
  if (!grant_pages_ || committed != before) grant_pages_.reset();
  charge_->Settle(committed);
}

// ---------------------------------------------------------------------------
// SmInstance snapshots

Result<std::span<uint8_t>> SmInstance::MemoryRange() {
  JS::RootedValue buffer(cx_);
  if (!JS_GetProperty(cx_, memory_, "buffer", &buffer) || !buffer.isObject()) {
    TakeException(cx_);
    return MakeError(ErrorCode::kFailedPrecondition, "the linear memory has no buffer");
  }
  JSObject* object = &buffer.toObject();
  if (!JS::IsArrayBufferObject(object)) {
    return MakeError(ErrorCode::kFailedPrecondition, "shared memories cannot be reset");
  }
  JS::AutoCheckCannotGC nogc;
  bool shared = false;
  uint8_t* data = JS::GetArrayBufferData(object, &shared, nogc);
  return std::span<uint8_t>(data, JS::GetArrayBufferByteLength(object));
}

Result<void> SmInstance::CheckResettable() const {
  auto refuse = [](std::string why) {
    return MakeError(ErrorCode::kFailedPrecondition, std::move(why));
  };
  if (poisoned()) return refuse("poisoned instances are replaced, never reset: " + poison_reason_);
  if (in_call_) return refuse("the instance is in a call");
  return {};
}

// Saves every exported global that can change. Immutable ones refuse a
// write even of their own value and are left out; doubles are not probed
// that way (a NaN would lose its payload) and are simply kept.
Result<void> SmInstance::SaveGlobals(InstanceSnapshot& snapshot) {
  for (const std::string& name : module_->global_exports()) {
    JS::RootedValue global(cx_);
    if (!GetNamed(cx_, exports_, name, &global) || !global.isObject()) {
      TakeException(cx_);
      return MakeError(ErrorCode::kFailedPrecondition, "global export " + MessageName(name) + " not found");
    }
    JS::RootedObject object(cx_, &global.toObject());
    JS::RootedValue value(cx_);
    if (!JS_GetProperty(cx_, object, "value", &value)) {
      TakeException(cx_);
      return MakeError(ErrorCode::kFailedPrecondition,
                       "global '" + name + "' has a type keel cannot save (v128)");
    }
    if (!value.isDouble() && !JS_SetProperty(cx_, object, "value", value)) {
      TakeException(cx_);
      continue;
    }
    snapshot.globals.push_back(std::make_unique<SavedGlobal>(cx_, object, value));
  }
  return {};
}

Result<void> SmInstance::Snapshot(const SnapshotOptions& options) {
  // A failed snapshot must not leave an earlier one to reset to: parts of
  // the state (the host's) may already be recorded anew.
  snapshot_.reset();
  if (auto ok = CheckResettable(); !ok) return ok;
  if (const auto& why = module_->snapshot_blocker()) {
    return MakeError(ErrorCode::kFailedPrecondition,
                     "instances of this module cannot be reset: " + *why);
  }
  if (module_->info().memory && !memory_) {
    return MakeError(ErrorCode::kFailedPrecondition,
                     "a memory that is not exported cannot be reset");
  }
  if (host_state_) {
    if (auto ok = host_state_->Snapshot(); !ok) return ok;
  }
  auto snapshot = std::make_unique<InstanceSnapshot>();
  if (auto ok = SaveGlobals(*snapshot); !ok) return ok;
  if (memory_) {
    auto range = MemoryRange();
    if (!range) return MakeError(range.error());
    auto memory = MemorySnapshot::Take(*range, {.track_writes = options.track_dirty_pages});
    if (!memory) return MakeError(memory.error());
    snapshot->memory = std::move(*memory);
  }
  snapshot_ = std::move(snapshot);
  return {};
}

Result<uint32_t> SmInstance::RestoreGlobals() {
  uint32_t restored = 0;
  JS::RootedValue now(cx_);
  for (const auto& global : snapshot_->globals) {
    bool same = false;
    if (!JS_GetProperty(cx_, global->object, "value", &now) ||
        !JS::SameValue(cx_, now, global->value, &same) ||
        (!same && !JS_SetProperty(cx_, global->object, "value", global->value))) {
      PendingException exc = TakeException(cx_);
      return MakeError(ErrorCode::kFailedPrecondition, "restoring a global failed: " + exc.message);
    }
    restored += same ? 0 : 1;
  }
  return restored;
}

Result<ResetStats> SmInstance::ResetToSnapshot() {
  if (auto ok = CheckResettable(); !ok) return MakeError(ok.error());
  if (!snapshot_) return MakeError(ErrorCode::kFailedPrecondition, "the instance has no snapshot");
  ResetStats stats;
  if (snapshot_->memory) {
    // Read afresh: memory.grow may have moved the memory, and the old range
    // may be someone else's now.
    auto range = MemoryRange();
    if (!range) return MakeError(range.error());
    auto restored = snapshot_->memory->Restore(*range);
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

Result<ResetStats> SmInstance::Reset() {
  auto stats = ResetToSnapshot();
  if (!stats) Poison("reset failed: " + stats.error().message);
  return stats;
}

Result<std::unique_ptr<Instance>> SmContext::Instantiate(std::shared_ptr<const Module> module,
                                                         std::shared_ptr<const Linker> linker,
                                                         std::unique_ptr<HostState> host_state,
                                                         uint64_t call_tag) {
  auto sm_module = std::dynamic_pointer_cast<const SmModule>(module);
  if (!sm_module) return MakeError(ErrorCode::kInvalidArgument, "module of another engine");
  auto instance = std::make_unique<SmInstance>(this, std::move(sm_module), std::move(linker),
                                               std::move(host_state));
  if (budget_ && instance->module().info().memory) {
    // Refused before anything runs when even the initial memory cannot fit.
    uint64_t initial = instance->module().info().memory->min * kWasmPageSize;
    if (initial > budget_->available()) {
      return tl::unexpected(BudgetExceeded(*budget_, "instantiation", initial));
    }
  }
  if (auto ok = instance->Initialize(call_tag); !ok) return MakeError(ok.error());
  if (budget_) {
    if (auto charged = instance->ChargeTo(budget_); !charged) return MakeError(charged.error());
  }
  return std::unique_ptr<Instance>(std::move(instance));
}

// ---------------------------------------------------------------------------
// The engine: process-wide state and the compile thread.

class SmEngine final : public Engine {
 public:
  SmEngine() {
    if (!JS_Init()) {
      init_error_ = "JS_Init failed";
      return;
    }
    // The compile thread owns a context; pthread so that its stack size is
    // known.
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, kCompileThreadStack);
    pthread_create(&compile_thread_, &attr, &SmEngine::CompileThreadMain, this);
    pthread_attr_destroy(&attr);
  }

  // At process exit: stops the compile thread and shuts SpiderMonkey down,
  // which stops its helper threads before static destructors run. Skipped
  // while other contexts still live (their threads would crash).
  void ShutDown() {
    if (!init_error_.empty()) return;
    {
      std::lock_guard<std::mutex> lock(mu_);
      quit_ = true;
      cv_.notify_all();
    }
    pthread_join(compile_thread_, nullptr);
    if (live_contexts.load() == 0) JS_ShutDown();
  }

  Result<std::shared_ptr<const Module>> Compile(std::span<const uint8_t> bytes,
                                                const CompileOptions& options) override {
    return CompileWith(bytes, options, {});
  }

  // Compile, with the rewrites this backend always applies (the memory
  // cap, names SpiderMonkey cannot take, floats by bits) plus `extra`.
  Result<std::shared_ptr<const Module>> CompileWith(std::span<const uint8_t> bytes,
                                                    const CompileOptions& options,
                                                    RewriteOptions extra) {
    if (!init_error_.empty()) return MakeError(ErrorCode::kInternal, init_error_);
    if (options.fuel != 0) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "the SpiderMonkey engine has no fuel metering (use the Wasmtime engine)");
    }
    auto info = ReadModuleInfo(bytes);
    if (!info) return MakeError(info.error());
    extra.max_memory_pages = options.max_memory_pages;
    extra.rename_names = true;
    extra.float_bits_exports = true;
    extra.float_bits_imports = true;
    // Snapshots (Instance::Snapshot) need every mutable global reachable,
    // and to know whether the code changes tables or segments.
    extra.export_mutable_globals = true;
    extra.scan_code = true;
    // memory.grow goes through a grant, so that a runtime's memory budget
    // (ContextOptions::memory_budget) holds. Instantiation (start function)
    // grows within the cap; contexts with a budget set the grant per call.
    if (!extra.grow_grant) extra.grow_grant = options.max_memory_pages;
    auto rewritten = Rewrite(bytes, extra);
    if (!rewritten) return MakeError(rewritten.error());
    if (info->memory) {
      uint64_t cap = options.max_memory_pages;
      info->memory->max = std::min(info->memory->max.value_or(cap), cap);
    }
    auto compiled = CompileBytes(rewritten->bytes);
    if (!compiled) return MakeError(compiled.error());
    return std::shared_ptr<const Module>(std::make_shared<SmModule>(
        std::move(*info), options, std::move(*rewritten), std::move(*compiled)));
  }

  // RewriteModule, telling a module that is bad (SpiderMonkey rejects it
  // too, and says why better) from one that keel's decoder cannot read (a
  // keel gap: refused rather than compiled with floats canonicalised). Only
  // modules with float imports have their code decoded.
  Result<RewriteResult> Rewrite(std::span<const uint8_t> bytes, const RewriteOptions& options) {
    auto rewritten = RewriteModule(bytes, options);
    if (rewritten || rewritten.error().code != ErrorCode::kInvalidModule) return rewritten;
    auto plain = RewriteModule(bytes, {.max_memory_pages = options.max_memory_pages});
    if (!plain) return plain;
    auto verdict = CompileBytes(plain->bytes);
    if (!verdict) return MakeError(verdict.error());
    return MakeError(ErrorCode::kInvalidModule,
                     "keel cannot rewrite this module: " + rewritten.error().message);
  }

  // SpiderMonkey's verdict on bytes exactly as given.
  Result<RefPtr<JS::WasmModule>> CompileBytes(const std::vector<uint8_t>& bytes) {
    if (!init_error_.empty()) return MakeError(ErrorCode::kInternal, init_error_);
    Job job;
    job.bytes = &bytes;
    {
      std::unique_lock<std::mutex> lock(mu_);
      queue_.push_back(&job);
      cv_.notify_all();
      cv_.wait(lock, [&] { return job.done; });
    }
    if (!job.module) return MakeError(std::move(job.error));
    return std::move(job.module);
  }
  Result<std::unique_ptr<Context>> NewContext(const ContextOptions& options) override {
    if (!init_error_.empty()) return MakeError(ErrorCode::kInternal, init_error_);
    auto ctx = SmContext::Create(options);
    if (!ctx) return MakeError(ctx.error());
    return std::unique_ptr<Context>(std::move(*ctx));
  }

  std::string_view name() const override { return "spidermonkey-102"; }
  EngineKind kind() const override { return EngineKind::kSpiderMonkey; }

  MemoryStats memory_stats() const override { return memory_counters.Snapshot(); }

  ResetSupport reset_support() const override {
    ResetSupport support;
    support.snapshots = true;
    support.dirty_page_tracking = WriteTrackingAvailable(&support.detail);
    return support;
  }

 private:
  struct Job {
    const std::vector<uint8_t>* bytes = nullptr;
    RefPtr<JS::WasmModule> module;
    Error error;
    bool done = false;
  };

  static void* CompileThreadMain(void* arg) {
    static_cast<SmEngine*>(arg)->CompileLoop();
    return nullptr;
  }

  void CompileLoop() {
    auto ctx = SmContext::Create(ContextOptions{.stack_quota_bytes = kCompileThreadStack / 2});
    JSContext* cx = ctx ? (*ctx)->cx() : nullptr;
    JS::RootedObject module_ctor(cx);
    if (cx) {
      JS::RootedObject global(cx, JS::CurrentGlobalOrNull(cx));
      JS::RootedValue wasm(cx), ctor(cx);
      if (JS_GetProperty(cx, global, "WebAssembly", &wasm) && wasm.isObject()) {
        JS::RootedObject wasm_obj(cx, &wasm.toObject());
        if (JS_GetProperty(cx, wasm_obj, "Module", &ctor) && ctor.isObject()) {
          module_ctor = &ctor.toObject();
        }
      }
    }
    for (;;) {
      Job* job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return !queue_.empty() || quit_; });
        if (quit_) return;
        job = queue_.front();
        queue_.pop_front();
      }
      if (!module_ctor) {
        job->error = Error(ErrorCode::kInternal, "the engine could not start its compile context");
      } else {
        CompileOne(cx, module_ctor, job);
        JS_MaybeGC(cx);
      }
      std::lock_guard<std::mutex> lock(mu_);
      job->done = true;
      cv_.notify_all();
    }
  }

  static void CompileOne(JSContext* cx, JS::HandleObject module_ctor, Job* job) {
    const std::vector<uint8_t>& bytes = *job->bytes;
    JS::RootedObject buffer(cx, JS::NewArrayBuffer(cx, bytes.size()));
    if (!buffer) {
      TakeException(cx);
      job->error = Error(ErrorCode::kResourceExhausted, "out of memory copying the module");
      return;
    }
    {
      JS::AutoCheckCannotGC nogc;
      bool shared;
      uint8_t* data = JS::GetArrayBufferData(buffer, &shared, nogc);
      if (!bytes.empty()) std::memcpy(data, bytes.data(), bytes.size());
    }
    JS::RootedValueArray<1> args(cx);
    args[0].setObject(*buffer);
    JS::RootedValue ctor(cx, JS::ObjectValue(*module_ctor));
    JS::RootedObject module(cx);
    if (!JS::Construct(cx, ctor, JS::HandleValueArray(args), &module)) {
      PendingException exc = TakeException(cx);
      job->error = Error(ErrorCode::kInvalidModule,
                         exc.present ? exc.message : "compilation was interrupted");
      return;
    }
    job->module = JS::GetWasmModule(module);
  }

  std::string init_error_;
  pthread_t compile_thread_{};
  bool quit_ = false;  // guarded by mu_
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job*> queue_;
};

// Never destroyed: SpiderMonkey cannot be started again after JS_ShutDown,
// and compiled modules may be released by any thread until process exit.
SmEngine& TheEngine() {
  static SmEngine* engine = [] {
    auto* e = new SmEngine();
    std::atexit([] { engine->ShutDown(); });
    return e;
  }();
  return *engine;
}

}  // namespace

Engine& SpiderMonkeyEngine() { return TheEngine(); }

namespace sm {

Result<std::shared_ptr<const Module>> CompileRewritten(std::span<const uint8_t> bytes,
                                                       const CompileOptions& options,
                                                       RewriteOptions extra) {
  return TheEngine().CompileWith(bytes, options, std::move(extra));
}

const RewriteResult* RewriteOf(const Module& module) {
  auto* sm_module = dynamic_cast<const SmModule*>(&module);
  return sm_module ? &sm_module->rewrite() : nullptr;
}

Result<void> CompileUnrewritten(std::span<const uint8_t> bytes) {
  auto compiled = TheEngine().CompileBytes(std::vector<uint8_t>(bytes.begin(), bytes.end()));
  if (!compiled) return MakeError(compiled.error());
  return {};
}

Result<Value> GetGlobal(Instance& instance, std::string_view export_name, ValType type) {
  auto* sm_instance = dynamic_cast<SmInstance*>(&instance);
  if (!sm_instance) return MakeError(ErrorCode::kInvalidArgument, "instance of another engine");
  return sm_instance->GetGlobal(export_name, type);
}

Result<void> SetGlobal(Instance& instance, std::string_view export_name, const Value& value) {
  auto* sm_instance = dynamic_cast<SmInstance*>(&instance);
  if (!sm_instance) return MakeError(ErrorCode::kInvalidArgument, "instance of another engine");
  return sm_instance->SetGlobal(export_name, value);
}

}  // namespace sm

}  // namespace keel::engine
