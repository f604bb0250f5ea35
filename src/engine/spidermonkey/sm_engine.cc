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
#include <js/ErrorReport.h>
#include <js/Exception.h>
#include <js/Initialization.h>
#include <js/Interrupt.h>
#include <js/Stack.h>
#include <js/WasmModule.h>
#include <js/friend/ErrorMessages.h>

#include <atomic>
#include <charconv>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "engine/engine.h"
#include "engine/spidermonkey/sm_engine.h"

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

// Rewrites SpiderMonkey's frames as "wasm-function[7] <name> @0x1a3", one
// per line, innermost first.
std::string FormatBacktrace(std::string_view raw, const std::function<const std::string*(uint32_t)>& name_of) {
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
    out += "wasm-function[" + std::to_string(index) + "]";
    if (const std::string* name = name_of(index)) out += " <" + *name + ">";
    size_t off = line.find(":0x", close);
    if (off != std::string_view::npos) out += " @" + std::string(line.substr(off + 1));
    out += "\n";
  }
  return out;
}

// ---------------------------------------------------------------------------
// Values

JS::Value ToJs(JSContext* cx, const Value& v, bool* ok) {
  *ok = true;
  switch (v.type()) {
    case ValType::kI32: return JS::Int32Value(v.i32());
    case ValType::kF32: return JS::DoubleValue(static_cast<double>(v.f32()));
    case ValType::kF64: return JS::DoubleValue(v.f64());
    case ValType::kI64: {
      JS::BigInt* big = JS::NumberToBigInt(cx, v.i64());
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

// Converts a value the engine produced for a declared wasm type. Values that
// came out of wasm always have the right JS representation; values a JS
// function could forge never reach here.
Result<Value> FromJs(JSContext* cx, JS::HandleValue v, ValType type) {
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

// Values of one host call: inline when few (the common case), else on
// the heap.
class ValueBuffer {
 public:
  explicit ValueBuffer(size_t n) {
    if (n > kInline) heap_.resize(n);
    span_ = n > kInline ? std::span<Value>(heap_) : std::span<Value>(inline_, n);
  }
  std::span<Value> span() { return span_; }

 private:
  static constexpr size_t kInline = 16;
  Value inline_[kInline];
  std::vector<Value> heap_;
  std::span<Value> span_;
};

// ---------------------------------------------------------------------------
// Modules

class SmModule final : public Module {
 public:
  SmModule(ModuleInfo info, CompileOptions options, std::vector<uint8_t> bytes,
           RefPtr<JS::WasmModule> module)
      : info_(std::move(info)),
        options_(options),
        bytes_(std::move(bytes)),
        module_(std::move(module)) {
    for (const ExportInfo& e : info_.exports) {
      if (e.kind == ExternKind::kFunc) func_names_.emplace(e.index, e.name);
    }
  }
  const ModuleInfo& info() const override { return info_; }
  const CompileOptions& options() const override { return options_; }
  JS::WasmModule* wasm_module() const { return module_.get(); }
  std::span<const uint8_t> bytes() const { return bytes_; }
  const std::string* FuncName(uint32_t index) const {
    auto it = func_names_.find(index);
    return it == func_names_.end() ? nullptr : &it->second;
  }

 private:
  ModuleInfo info_;
  CompileOptions options_;
  std::vector<uint8_t> bytes_;  // as compiled (memory capped)
  std::map<uint32_t, std::string> func_names_;
  RefPtr<JS::WasmModule> module_;
};

// ---------------------------------------------------------------------------
// Interrupts

// Shared between a context and its Interrupter handles; outlives both.
// Calls on one context carry tags that never decrease, so "the largest tag
// ever requested" is enough to remember a request that raced ahead of the
// call it targets, and a stale request can never match a later call.
struct InterruptState {
  std::mutex mu;
  JSContext* cx = nullptr;  // null once the context is gone
  std::atomic<uint64_t> running_tag{0};
  std::atomic<uint64_t> requested_tag{0};
  std::function<void()> hook;  // guarded by mu

  bool InterruptedNow() const {
    uint64_t running = running_tag.load();
    return running != 0 && requested_tag.load() == running;
  }
};

class SmInterrupter final : public Interrupter {
 public:
  explicit SmInterrupter(std::shared_ptr<InterruptState> state) : state_(std::move(state)) {}

  void Request(uint64_t call_tag) override {
    if (call_tag == 0) return;
    std::lock_guard<std::mutex> lock(state_->mu);
    uint64_t prev = state_->requested_tag.load();
    while (prev < call_tag && !state_->requested_tag.compare_exchange_weak(prev, call_tag)) {
    }
    if (state_->cx == nullptr || state_->running_tag.load() != call_tag) return;
    JS_RequestInterruptCallback(state_->cx);
    if (state_->hook) state_->hook();
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

bool OnInterrupt(JSContext* cx);

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

  // Caller
  bool interrupted() const override;
  void SetInterruptHook(std::function<void()> hook) override;

  Result<void> Initialize(uint64_t call_tag);
  static bool HostTrampoline(JSContext* cx, unsigned argc, JS::Value* vp);

 private:
  // Runs fn() (which enters the guest) as the call `call_tag`, and turns a
  // failure into an Error, poisoning the instance.
  template <typename Fn>
  Result<void> Guarded(uint64_t call_tag, std::string_view what, Fn&& fn);
  JSObject* ExportObject(uint32_t export_index) const;
  std::string Backtrace(std::string_view raw) const {
    return FormatBacktrace(raw, [this](uint32_t index) { return module_->FuncName(index); });
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
  std::string poison_reason_;
  bool in_call_ = false;
  std::optional<Error> host_error_;  // the error a host function ended the call with
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
    auto ctx = std::unique_ptr<SmContext>(new SmContext(cx));
    live_contexts.fetch_add(1);
    if (auto ok = ctx->Init(); !ok) return MakeError(ok.error());
    return ctx;
  }

  ~SmContext() override {
    {
      std::lock_guard<std::mutex> lock(interrupt_->mu);
      interrupt_->cx = nullptr;
    }
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

  JSContext* cx() const { return cx_; }
  InterruptState& interrupt_state() { return *interrupt_; }

  // Marks the start of guest call `tag`. False when an interrupt for it was
  // already requested (the call must then not enter the guest).
  bool BeginCall(uint64_t tag) {
    interrupt_->running_tag.store(tag);
    return interrupt_->requested_tag.load() != tag;
  }
  void EndCall() {
    std::lock_guard<std::mutex> lock(interrupt_->mu);
    interrupt_->running_tag.store(0);
    interrupt_->hook = nullptr;
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
  explicit SmContext(JSContext* cx) : cx_(cx), interrupt_(std::make_shared<InterruptState>()) {
    interrupt_->cx = cx;
  }

  Result<void> Init() {
    tls_context = this;
    JS_AddInterruptCallback(cx_, OnInterrupt);
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
  bool already = false;
  {
    std::lock_guard<std::mutex> lock(state.mu);
    state.hook = hook;
    already = state.InterruptedNow();
  }
  if (already && hook) hook();
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
    const std::string& name = module_->info().exports[export_index].name;
    if (!JS_GetProperty(cx_, exports_, name.c_str(), &v) || !v.isObject()) {
      JS_ClearPendingException(cx_);
      return nullptr;
    }
    slot = std::make_unique<JS::PersistentRootedObject>(cx_, &v.toObject());
  }
  return slot->get();
}

Result<void> SmInstance::Call(const Func& func, std::span<const Value> args,
                              std::span<Value> results, uint64_t call_tag) {
  const auto& exports = module_->info().exports;
  if (func.export_index >= exports.size() || exports[func.export_index].kind != ExternKind::kFunc) {
    return MakeError(ErrorCode::kInvalidArgument, "not a function of this instance");
  }
  const ExportInfo& exp = exports[func.export_index];
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
  if (results.size() != type.results.size()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "export '" + exp.name + "' returns " + std::to_string(type.results.size()) +
                         " value(s), space for " + std::to_string(results.size()) + " given");
  }
  JSObject* fn_obj = ExportObject(func.export_index);
  if (!fn_obj) return MakeError(ErrorCode::kInternal, "export '" + exp.name + "' not found in instance");

  JS::RootedValue fn(cx_, JS::ObjectValue(*fn_obj));
  JS::RootedValueVector js_args(cx_);
  if (!js_args.reserve(args.size())) return MakeError(ErrorCode::kResourceExhausted, "out of memory");
  for (const Value& v : args) {
    bool ok;
    JS::Value js = ToJs(cx_, v, &ok);
    if (!ok) return MakeError(ErrorCode::kResourceExhausted, "out of memory");
    js_args.infallibleAppend(js);
  }
  JS::RootedValue rval(cx_);
  auto called = Guarded(call_tag, "call", [&] {
    return JS::Call(cx_, JS::UndefinedHandleValue, fn, JS::HandleValueArray(js_args), &rval);
  });
  if (!called) return called;

  if (type.results.size() == 1) {
    auto v = FromJs(cx_, rval, type.results[0]);
    if (!v) return MakeError(v.error());
    results[0] = *v;
  } else if (type.results.size() > 1) {
    // Multi-value results come back as an array.
    if (!rval.isObject()) return MakeError(ErrorCode::kInternal, "multi-value result is not an array");
    JS::RootedObject array(cx_, &rval.toObject());
    JS::RootedValue element(cx_);
    for (uint32_t i = 0; i < type.results.size(); ++i) {
      if (!JS_GetElement(cx_, array, i, &element)) {
        JS_ClearPendingException(cx_);
        return MakeError(ErrorCode::kInternal, "multi-value result unreadable");
      }
      auto v = FromJs(cx_, element, type.results[i]);
      if (!v) return MakeError(v.error());
      results[i] = *v;
    }
  }
  return {};
}

std::span<uint8_t> SmInstance::Memory() {
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
  return {data, length};
}

bool SmInstance::HostTrampoline(JSContext* cx, unsigned argc, JS::Value* vp) {
  JS::CallArgs call = JS::CallArgsFromVp(argc, vp);
  JSObject* callee = &call.callee();
  auto* entry = static_cast<const Linker::Entry*>(js::GetFunctionNativeReserved(callee, 0).toPrivate());
  auto* self = static_cast<SmInstance*>(js::GetFunctionNativeReserved(callee, 1).toPrivate());
  const FuncType& type = entry->type;

  ValueBuffer args_buf(type.params.size());
  std::span<Value> args = args_buf.span();
  for (size_t i = 0; i < type.params.size(); ++i) {
    auto v = FromJs(cx, call.get(i), type.params[i]);
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

  Result<void> outcome = entry->fn(*self, args, results);
  if (!outcome) {
    Error error = std::move(outcome.error());
    if (error.code != ErrorCode::kInterrupted && error.code != ErrorCode::kTrap) {
      error = Error::Trap(TrapKind::kHostError, error.ToString());
    } else if (error.code == ErrorCode::kTrap && error.trap == TrapKind::kNone) {
      error.trap = TrapKind::kHostError;
    }
    self->host_error_ = std::move(error);
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
  if (results.empty()) {
    call.rval().setUndefined();
  } else if (results.size() == 1) {
    bool ok;
    call.rval().set(ToJs(cx, results[0], &ok));
    if (!ok) return false;
  } else {
    JS::RootedValueVector values(cx);
    for (const Value& r : results) {
      bool ok;
      JS::Value v = ToJs(cx, r, &ok);
      if (!ok || !values.append(v)) return false;
    }
    JSObject* array = JS::NewArrayObject(cx, values);
    if (!array) return false;
    call.rval().setObject(*array);
  }
  return true;
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
  for (const ImportInfo& imp : info.imports) {
    JS::RootedValue ns(cx_);
    JS::RootedObject ns_obj(cx_);
    if (!JS_GetProperty(cx_, imports, imp.module.c_str(), &ns)) break;
    if (ns.isObject()) {
      ns_obj = &ns.toObject();
    } else {
      ns_obj = JS_NewPlainObject(cx_);
      if (!ns_obj || !JS_DefineProperty(cx_, imports, imp.module.c_str(), ns_obj, JSPROP_ENUMERATE)) {
        break;
      }
    }
    const Linker::Entry* entry = linker_->Find(imp.module, imp.name);
    JSFunction* fn = js::NewFunctionWithReserved(cx_, HostTrampoline, imp.func.params.size(), 0,
                                                 imp.name.c_str());
    if (!fn) break;
    JS::RootedObject fn_obj(cx_, JS_GetFunctionObject(fn));
    js::SetFunctionNativeReserved(fn_obj, 0, JS::PrivateValue(const_cast<Linker::Entry*>(entry)));
    js::SetFunctionNativeReserved(fn_obj, 1, JS::PrivateValue(this));
    if (!JS_DefineProperty(cx_, ns_obj, imp.name.c_str(), fn_obj, JSPROP_ENUMERATE)) break;
  }
  if (JS_IsExceptionPending(cx_)) {
    PendingException exc = TakeException(cx_);
    return MakeError(ErrorCode::kInternal, "building imports failed: " + exc.message);
  }

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
  if (mem) {
    JS::RootedValue m(cx_);
    if (JS_GetProperty(cx_, exports_, mem->name.c_str(), &m) && m.isObject()) memory_ = &m.toObject();
    JS_ClearPendingException(cx_);
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

Result<std::unique_ptr<Instance>> SmContext::Instantiate(std::shared_ptr<const Module> module,
                                                         std::shared_ptr<const Linker> linker,
                                                         std::unique_ptr<HostState> host_state,
                                                         uint64_t call_tag) {
  auto sm_module = std::dynamic_pointer_cast<const SmModule>(module);
  if (!sm_module) return MakeError(ErrorCode::kInvalidArgument, "module of another engine");
  auto instance = std::make_unique<SmInstance>(this, std::move(sm_module), std::move(linker),
                                               std::move(host_state));
  if (auto ok = instance->Initialize(call_tag); !ok) return MakeError(ok.error());
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
    if (!init_error_.empty()) return MakeError(ErrorCode::kInternal, init_error_);
    if (options.fuel != 0) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "the SpiderMonkey engine has no fuel metering (use the Wasmtime engine)");
    }
    auto info = ReadModuleInfo(bytes);
    if (!info) return MakeError(info.error());
    auto capped = CapMemory(bytes, options.max_memory_pages);
    if (!capped) return MakeError(capped.error());
    if (info->memory) {
      uint64_t cap = options.max_memory_pages;
      info->memory->max = std::min(info->memory->max.value_or(cap), cap);
    }

    Job job;
    job.bytes = &*capped;
    {
      std::unique_lock<std::mutex> lock(mu_);
      queue_.push_back(&job);
      cv_.notify_all();
      cv_.wait(lock, [&] { return job.done; });
    }
    if (!job.module) return MakeError(std::move(job.error));
    return std::shared_ptr<const Module>(
        std::make_shared<SmModule>(std::move(*info), options, std::move(*capped),
                                   std::move(job.module)));
  }

  Result<std::unique_ptr<Context>> NewContext(const ContextOptions& options) override {
    if (!init_error_.empty()) return MakeError(ErrorCode::kInternal, init_error_);
    auto ctx = SmContext::Create(options);
    if (!ctx) return MakeError(ctx.error());
    return std::unique_ptr<Context>(std::move(*ctx));
  }

  std::string_view name() const override { return "spidermonkey-102"; }
  EngineKind kind() const override { return EngineKind::kSpiderMonkey; }

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

}  // namespace

Engine& SpiderMonkeyEngine() {
  // Never destroyed: SpiderMonkey cannot be started again after JS_ShutDown,
  // and compiled modules may be released by any thread until process exit.
  static SmEngine* engine = [] {
    auto* e = new SmEngine();
    std::atexit([] { engine->ShutDown(); });
    return e;
  }();
  return *engine;
}

}  // namespace keel::engine
