// keel's runtime: worker threads that own the WebAssembly engine, pools of
// instances per module, and submission of calls that are safe to cancel.
// Every duration in the option structs is std::chrono::milliseconds (0
// means none or the default, as each says); an absolute deadline
// (CallOptions::deadline) is a Clock::time_point.
//
//   auto runtime = keel::Runtime::Create({.workers = 2});
//   auto module = (*runtime)->Compile(bytes, {.name = "add"});
//   auto pool = (*runtime)->CreatePool(*module, {.instances = 2});
//   auto call = (*pool)->Submit("add", {Value::I32(1), Value::I32(2)},
//                               {.timeout = std::chrono::milliseconds(50)});
//   const CallResult& r = call->Wait();
//
// See keel/call.h for what happens on each way a call can end.
#ifndef KEEL_RUNTIME_H_
#define KEEL_RUNTIME_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include "keel/call.h"
#include "keel/host.h"
#include "keel/metrics.h"
#include "keel/status.h"
#include "keel/value.h"

namespace keel {

using Clock = std::chrono::steady_clock;

namespace internal {
struct RuntimeAccess;
struct ModuleAccess;
struct CompiledModule;
}  // namespace internal

// Receives the results of calls whose callers detached (cancelled while
// running), so that finished work is not silently lost. Runs on a keel
// callback thread.
using DetachedSink = std::function<void(CallId id, const CallResult& result)>;

// Workers are shared by every pool, and a started call runs to its end, so
// one module's long calls could hold every worker. When a call waits
// although its pool has instances free of its own calls, because other
// pools' calls hold every worker hosting them, the runtime starts a spare
// worker (an extra thread with its own engine context) that builds a
// temporary instance of that pool and serves its queue. A pool whose calls
// hold all its own instances gets no spare: that is its capacity.
struct FairnessOptions {
  // Spare workers the runtime may run at once; -1: two per worker.
  int max_spare_workers = -1;
  // How long such a call waits before a spare is brought in.
  std::chrono::milliseconds starvation_delay{20};
  // A temporary instance unused this long is dropped.
  std::chrono::milliseconds spare_idle{2000};
};

// The WebAssembly engine a runtime runs on.
enum class EngineKind : uint8_t {
  kSpiderMonkey,  // SpiderMonkey 102 (Firefox's), always built
  kWasmtime,      // Wasmtime, in builds configured with it (KEEL_ENGINE_WASMTIME)
};

// "spidermonkey", "wasmtime".
std::string_view ToString(EngineKind kind);
// The names ToString gives; kInvalidArgument names the ones there are.
[[nodiscard]] Result<EngineKind> ParseEngineKind(std::string_view name);
// The engines this build has, the default first.
std::vector<EngineKind> AvailableEngines();

struct RuntimeOptions {
  // Runtime::Create answers kUnavailable for an engine this build lacks.
  EngineKind engine = EngineKind::kSpiderMonkey;
  // Worker threads, each with its own engine context. 0: one per core.
  int workers = 0;
  // Native stack of each worker; guests may use all but a safety margin.
  size_t worker_stack_bytes = 8 << 20;
  // Threads that run completion callbacks, coroutine resumptions and the
  // detached sink.
  int callback_threads = 1;
  DetachedSink detached_sink;
  // Default drain period of Shutdown() and of the destructor.
  std::chrono::milliseconds drain_grace{5000};
  FairnessOptions fairness;
  // Budget on the committed linear memory (current pages x 64 KiB, not the
  // address space engines reserve) of all this runtime's instances. Past
  // it, an instantiation fails with kResourceExhausted naming the budget
  // and the amounts (calls of a pool that cannot get an instance fail as
  // its quarantine says), and memory.grow returns -1 to the guest; nothing
  // else is disturbed. Memory comes back when instances are dropped
  // (replaced, recycled, pools closed). A running call holds, for its
  // memory.grow, what is free up to its instance's cap, and returns what
  // it did not use when it ends. 0: DefaultMemoryBudget().
  uint64_t memory_budget_bytes = 0;
};

// Half the machine's physical memory (sysconf); 4 GiB when unknown.
uint64_t DefaultMemoryBudget();

struct ModuleOptions {
  std::string name;                    // for errors and metrics
  uint32_t max_memory_pages = 16384;   // per-instance cap (1 GiB)
  // Compile instantiates the module once, off the caller's thread, so that
  // a start function (or _initialize) that traps or does not finish within
  // `start_timeout` refuses the module. The check binds imports from
  // `linker` (and makes host state with `host_state_factory`) when given;
  // an import they do not provide is a stub, and a check that reaches a
  // stub is inconclusive (the module is accepted).
  std::chrono::milliseconds start_timeout{5000};
  std::shared_ptr<const Linker> linker;
  std::function<std::unique_ptr<HostState>()> host_state_factory;
  // An export of type () -> () that every instance runs once, after its
  // instantiation (and _initialize), before it takes calls and before its
  // snapshot (StatePolicy::kReset): expensive setup done once per instance,
  // not per call. Empty: none. Compile refuses a name that is not such an
  // export (kInvalidArgument).
  std::string init_export;
};

// What a module imports or exports.
enum class ExternKind : uint8_t { kFunc, kTable, kMemory, kGlobal, kTag };

// "func", "table", "memory", "global", "tag".
std::string_view ToString(ExternKind kind);

// A compiled module, made by Runtime::Compile only. Immutable; thread-safe;
// shared.
class Module {
 public:
  struct Export {
    std::string name;
    ExternKind kind = ExternKind::kFunc;
    FuncType type;               // for functions keel can call (empty for the others)
    bool byte_callable = false;  // usable with Pool::SubmitBytes
    // As the module declares it, e.g. "func (i32) -> (i32)", also for
    // functions keel cannot call: "func (v128) -> (funcref)".
    std::string description;
    bool callable = false;       // a function of i32, i64, f32 and f64 only
  };
  struct Import {
    std::string module;
    std::string name;
    ExternKind kind = ExternKind::kFunc;
    // kind == kFunc: the type a Linker must define it with (a function
    // whose values keel cannot pass, v128 or references, has none: the
    // description says what it is, and no linker can provide it).
    FuncType type;
    std::string description;     // e.g. "func (i32) -> (i32)"
  };

  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  const std::string& name() const { return name_; }
  // Lowercase hex SHA-256 of the bytes as given.
  const std::string& digest() const { return digest_; }
  size_t size_bytes() const { return size_bytes_; }
  const std::vector<Export>& exports() const { return exports_; }
  const std::vector<Import>& imports() const { return imports_; }
  const Export* FindExport(std::string_view name) const;
  // ModuleOptions::init_export; empty if none.
  const std::string& init_export() const { return init_export_; }

 private:
  friend class Runtime;
  friend struct internal::ModuleAccess;
  Module() = default;
  std::string name_;
  std::string init_export_;
  std::string digest_;
  size_t size_bytes_ = 0;
  std::vector<Export> exports_;
  std::vector<Import> imports_;
  std::shared_ptr<const internal::CompiledModule> compiled_;
};

// When a pool retires a healthy instance and builds a fresh one.
// What a call sees of the calls that ran before it on the same instance.
//   kKeep   the state they left (memory, globals, host state): reuse at no
//           cost; calls with one affinity key make a session.
//   kReset  the instance as it was after instantiation and init: keel takes
//           a snapshot then and resets the instance to it after every call,
//           before the instance takes the next one (off the caller's path),
//           copying back only the pages the call wrote where the system can
//           track them. An instance that cannot be reset (its code changes
//           tables or segments; its memory grew or moved; its host state has
//           no snapshot; the engine has none) is replaced by a fresh one
//           after each call instead: never does a call see another's state.
//   kFresh  a new instance for every call.
// Poisoned instances are replaced under every policy.
enum class StatePolicy : uint8_t { kKeep, kReset, kFresh };

// "keep", "reset", "fresh".
std::string_view ToString(StatePolicy policy);
// The names ToString gives; kInvalidArgument names the ones there are.
[[nodiscard]] Result<StatePolicy> ParseStatePolicy(std::string_view name);

struct RecyclePolicy {
  StatePolicy state = StatePolicy::kKeep;
  uint64_t max_calls = 0;                     // retire after N calls (0: never)
  std::chrono::milliseconds max_idle{0};      // retire after T unused (0: never)
};

struct QuarantinePolicy {
  // Consecutive instantiation failures that quarantine the module.
  int failures = 3;
  std::chrono::milliseconds initial_backoff{100};
  std::chrono::milliseconds max_backoff{30000};
};

struct ByteCallLimits {
  size_t max_input_bytes = 16 << 20;
  size_t max_output_bytes = 16 << 20;
};

struct PoolOptions {
  // Instances kept ready; 0: one per worker. Spread over the workers.
  size_t instances = 0;
  // Calls waiting for an instance; Submit fails with kOverloaded beyond.
  size_t max_queue = 1024;
  RecyclePolicy recycle;
  QuarantinePolicy quarantine;
  ByteCallLimits byte_limits;
  // Deadline for calls submitted without one (0: none).
  std::chrono::milliseconds default_timeout{0};
  // Deadline for building one instance (including its start function).
  std::chrono::milliseconds instantiate_timeout{5000};
  // Host functions the module may import.
  std::shared_ptr<const Linker> linker;
  // Makes the per-instance host state (e.g. a WASI context); may be empty.
  std::function<std::unique_ptr<HostState>()> host_state_factory;
};

struct CallOptions {
  // Relative deadline from Submit; covers queue time and both phases.
  // 0: the pool's default_timeout.
  std::chrono::milliseconds timeout{0};
  // Absolute deadline, at the clock's precision; the earlier of this and
  // `timeout` applies.
  std::optional<Clock::time_point> deadline;
  // A stop request cancels the call, as Call::Cancel().
  std::stop_token stop_token;
  // Calls with the same key run in submission order on the same instance
  // (stateful sessions).
  std::optional<uint64_t> affinity_key;
  // For the host functions of this call: caller.context<T>() (keel/host.h).
  HostContext context;
};

struct PoolStats {
  size_t target_instances = 0;
  size_t healthy_instances = 0;
  size_t busy_instances = 0;
  size_t queued = 0;
  size_t temporary_instances = 0;  // on spare workers (FairnessOptions)
  bool quarantined = false;
  std::string quarantine_reason;
  std::chrono::milliseconds quarantine_remaining{0};
};

class PoolImpl;

// Instances of one module, spread over the runtime's workers, with one FIFO
// queue. Thread-safe.
//
// Ownership: Runtime::CreatePool returns the pool as a shared_ptr<Pool>,
// its only owner; share that pointer (the pool itself cannot be copied or
// moved). When the last shared_ptr<Pool> goes, the pool closes as by
// Close(): calls still queued resolve kCancelled, running ones finish (their
// handles, or the detached sink, get the results), and its instances are
// dropped. Call handles do not keep a pool open. Runtime shutdown closes
// every pool.
class Pool {
 public:
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;
  // Closes the pool (see above).
  ~Pool();

  // Queues a call of a numeric export. Fails at once, never blocking:
  // kNotFound (no such function export), kInvalidArgument (argument count
  // or types), kOverloaded (queue full), kDeadlineExceeded (deadline
  // already passed), kUnavailable (module quarantined; the message names
  // the cause), kShuttingDown, kFailedPrecondition (pool closed).
  [[nodiscard]] Result<Call> Submit(std::string_view export_name, std::vector<Value> args,
                                    const CallOptions& options = {});

  // Queues a byte call (DESIGN.md's byte convention). Fails at once as
  // Submit, plus kInvalidArgument when the export or cabi_realloc do not
  // fit the convention and kResourceExhausted when the input is over the
  // pool's limit.
  [[nodiscard]] Result<Call> SubmitBytes(std::string_view export_name, std::vector<uint8_t> input,
                                         const CallOptions& options = {});

  PoolStats Stats() const;
  const std::shared_ptr<const Module>& module() const;

  // Stops accepting calls; queued calls resolve kCancelled; running calls
  // finish; instances are dropped. Idempotent; the destructor does it too.
  void Close();

 private:
  friend class Runtime;
  friend struct internal::RuntimeAccess;
  explicit Pool(std::shared_ptr<PoolImpl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<PoolImpl> impl_;
};

class RuntimeImpl;

// Owns the workers. Thread-safe. Destroying it shuts it down with the
// default drain period.
class Runtime {
 public:
  // Starts the workers. kUnavailable if this build lacks the engine,
  // kInternal if it cannot start.
  [[nodiscard]] static Result<std::unique_ptr<Runtime>> Create(RuntimeOptions options = {});
  ~Runtime();

  // Validates, compiles and instantiates once (see ModuleOptions).
  // kInvalidModule says what is wrong, including a start function that
  // traps or does not finish; kResourceExhausted when its minimum memory is
  // above the cap.
  [[nodiscard]] Result<std::shared_ptr<const Module>> Compile(std::span<const uint8_t> bytes,
                                                              ModuleOptions options = {});

  // A pool of `module`. Checks now that every import is provided by the
  // linker with the right type (kLinkError otherwise); instances are built
  // on the workers, off the caller's path. The pool closes when the last
  // copy of the returned pointer goes (see Pool).
  [[nodiscard]] Result<std::shared_ptr<Pool>> CreatePool(std::shared_ptr<const Module> module,
                                                         PoolOptions options = {});

  // Refuses new calls, resolves queued ones kShuttingDown, lets running ones
  // finish within `grace`, then interrupts the rest (kShuttingDown), and
  // stops the workers. Every handle has resolved when it returns, within
  // `grace` plus the time guests take to reach a safe point. Idempotent.
  // May be called (and the runtime destroyed) from a completion callback:
  // that callback thread then ends when the callback returns.
  void Shutdown(std::chrono::milliseconds grace);
  void Shutdown();

  MetricsSnapshot Metrics() const;
  int workers() const;
  EngineKind engine() const;

 private:
  friend struct internal::RuntimeAccess;
  explicit Runtime(std::unique_ptr<RuntimeImpl> impl);
  std::unique_ptr<RuntimeImpl> impl_;
};

}  // namespace keel

#endif  // KEEL_RUNTIME_H_
