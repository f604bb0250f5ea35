// The WebAssembly engine as the rest of keel sees it: modules, per-thread
// contexts, instances, host functions, values and traps. No engine type
// appears here; each backend (src/engine/spidermonkey/, src/engine/wasmtime/)
// implements it, and GetEngine picks one.
#ifndef KEEL_ENGINE_ENGINE_H_
#define KEEL_ENGINE_ENGINE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/memory_budget.h"
#include "engine/module_info.h"
#include "keel/host.h"
#include "keel/status.h"
#include "keel/value.h"

namespace keel::engine {

inline constexpr uint32_t kWasmPageSize = 65536;

// Host functions are part of the public API (include/keel/host.h); the
// engine binds them.
using keel::Caller;
using keel::HostFunc;
using keel::HostState;
using keel::Linker;

struct CompileOptions {
  // Every instance's linear memory is capped at this many 64 KiB pages:
  // instantiation fails above it and memory.grow past it returns -1.
  uint32_t max_memory_pages = 16384;  // 1 GiB
  // Fuel metering. When nonzero, every call and every instantiation (start
  // function, _initialize) starts with exactly this much fuel (about one
  // unit per wasm instruction) and a guest that uses it up traps with
  // TrapKind::kOutOfFuel: a deterministic budget, unlike a deadline. 0: off.
  // Engines without metering (SpiderMonkey) refuse a nonzero value with
  // kInvalidArgument.
  uint64_t fuel = 0;
};

// A compiled module. Immutable and thread-safe; instantiate it in any
// context. Shared by shared_ptr; it must not outlive the process's engine.
class Module {
 public:
  virtual ~Module() = default;
  virtual const ModuleInfo& info() const = 0;
  virtual const CompileOptions& options() const = 0;
};

// Isolation between calls (DESIGN.md "Isolation: every call from a
// snapshot"): an instance's state is recorded once, right after
// instantiation and init, and a healthy instance is brought back to it
// before each call.
struct SnapshotOptions {
  // Find the pages a call wrote by dirty-page tracking where the system
  // allows it; false compares the whole memory at every reset (the
  // fallback, forced for tests and benchmarks).
  bool track_dirty_pages = true;
};

// How Instance::Reset brought an instance back to its snapshot.
struct ResetStats {
  // How linear memory went back: the pages dirty-page tracking found
  // written (kTracked), or the whole memory compared with the snapshot
  // (kCompared: tracking unavailable or turned off); kNone: no memory.
  enum class Memory : uint8_t { kNone, kTracked, kCompared };
  Memory memory = Memory::kNone;
  uint64_t pages_copied = 0;      // 4 KiB pages written back
  bool scanned = false;           // kTracked, and the kernel was asked which pages
  uint32_t globals_restored = 0;  // mutable globals that had changed
};

// What an engine can do for isolation, process-wide.
struct ResetSupport {
  bool snapshots = false;            // Instance::Snapshot and Reset work
  bool dirty_page_tracking = false;  // resets copy only the pages written
  std::string detail;                // why tracking is unavailable
};

// An exported function resolved once, then called many times.
struct Func {
  uint32_t export_index = 0;
  const FuncType* type = nullptr;
};

// An instance. Lives on the thread of the context that made it; every call
// must come from that thread. Once a call ends interrupted or trapped the
// instance is poisoned: every later call fails with kFailedPrecondition.
class Instance {
 public:
  virtual ~Instance() = default;

  // The exported function `name`; kNotFound if there is none.
  [[nodiscard]] virtual Result<Func> Lookup(std::string_view name) const = 0;

  // Calls `func`, tagged `call_tag` (nonzero) so that an interrupt request
  // for another tag can never stop it. Tags on one context never decrease;
  // engine calls that make up one logical call (e.g. the phases of a byte
  // call) share a tag, so one request stops whichever of them is running
  // or next. Checks argument count and types
  // (kInvalidArgument); fills `results` (size must equal the result count).
  // On trap: kTrap with a kind; on interrupt: kInterrupted.
  [[nodiscard]] virtual Result<void> Call(const Func& func, std::span<const Value> args,
                                          std::span<Value> results, uint64_t call_tag) = 0;

  // Convenience: looks up and calls, returning the results.
  [[nodiscard]] Result<std::vector<Value>> Invoke(std::string_view name,
                                                  std::span<const Value> args,
                                                  uint64_t call_tag);

  // Linear memory (0 bytes if none). Valid until the next call.
  virtual std::span<uint8_t> Memory() = 0;
  // Bounds-checked copies; kInvalidArgument when out of range.
  [[nodiscard]] Result<void> ReadMemory(uint64_t offset, std::span<uint8_t> out);
  [[nodiscard]] Result<void> WriteMemory(uint64_t offset, std::span<const uint8_t> in);

  virtual bool poisoned() const = 0;
  // Marks the instance unusable, e.g. when the guest broke the byte ABI and
  // its state can no longer be trusted. Idempotent.
  virtual void Poison(std::string reason) = 0;
  // Why it was poisoned; empty while healthy.
  virtual const std::string& poison_reason() const = 0;
  virtual const Module& module() const = 0;
  virtual HostState* host_state() = 0;

  // Records the instance's state as it is now, to reset to before calls:
  // linear memory, mutable globals, the host state (HostState::Snapshot).
  // Take it right after instantiation and init. kFailedPrecondition saying
  // why when the instance cannot be reset (poisoned; its code may change
  // tables or segments; a global keel cannot reach or restore; a host state
  // that cannot be reset): give it fresh instances instead. Replaces an
  // earlier snapshot. The default: this engine cannot.
  [[nodiscard]] virtual Result<void> Snapshot(const SnapshotOptions& options);
  // Brings a healthy instance back to its snapshot, before another call.
  // kFailedPrecondition when it cannot: poisoned (poisoned instances are
  // replaced, never reset), no snapshot, memory grown or moved since, dirty-
  // page tracking failed, the host state refused. The instance is then
  // poisoned: replace it with a fresh one.
  [[nodiscard]] virtual Result<ResetStats> Reset();
  virtual bool has_snapshot() const { return false; }
};

// Thread-safe handle that asks a context to interrupt the call with a given
// tag. Stays valid (and becomes a no-op) after its context is gone.
class Interrupter {
 public:
  virtual ~Interrupter() = default;
  // If the running call has tag `call_tag`, it stops at its next safe point
  // (or when its blocking host function notices). Otherwise nothing happens,
  // now or later. Returns the wake-up of the host function the call is
  // blocked in (the hook it set with Caller::SetInterruptHook), or an empty
  // function: the caller runs it, on any thread, holding no lock. Running it
  // late is safe: it does nothing once that host function has returned.
  [[nodiscard]] virtual std::function<void()> RequestDeferred(uint64_t call_tag) = 0;
  // RequestDeferred, running the wake-up at once on this thread.
  void Request(uint64_t call_tag) {
    if (auto wake = RequestDeferred(call_tag)) wake();
  }
};

// Linear memories the engine holds in this process, including those of
// dropped instances it has not collected yet.
struct MemoryStats {
  int64_t live_memories = 0;
  uint64_t reserved_bytes = 0;   // address space held (reservations and guards)
  uint64_t committed_bytes = 0;  // current byte length of those memories
};

struct ContextOptions {
  // Native stack the guest may use on this thread before kStackOverflow.
  // Engines whose guest stack limit is engine-wide (Wasmtime: 1 MiB) use
  // their own limit and refuse a quota below it (kInvalidArgument).
  size_t stack_quota_bytes = 1 << 20;
  // Every instance this context makes charges its committed linear memory
  // to this budget: an instantiation that would pass it fails with
  // kResourceExhausted (BudgetExceeded), and memory.grow returns -1 past
  // it. A running call holds, as a grant, what its memory.grow may still
  // take (the budget's free bytes, up to the instance's cap); what it did
  // not grow returns when the call ends. A start function grows within the
  // cap only, charged (or refused) when instantiation ends. Null: no budget.
  std::shared_ptr<MemoryBudget> memory_budget;
};

// One per thread: the engine's per-thread state. Created, used and
// destroyed on one thread.
class Context {
 public:
  virtual ~Context() = default;

  // Instantiates `module`, binding its function imports from `linker` by
  // (module, name) and exact signature; runs its start function (tagged
  // `call_tag`, so it can be interrupted). kLinkError names the import
  // that is missing or mistyped.
  [[nodiscard]] virtual Result<std::unique_ptr<Instance>> Instantiate(
      std::shared_ptr<const Module> module, std::shared_ptr<const Linker> linker,
      std::unique_ptr<HostState> host_state, uint64_t call_tag) = 0;

  virtual std::shared_ptr<Interrupter> interrupter() = 0;

  // Gives the engine a chance to free dropped instances; cheap when there is
  // nothing to do. Call when idle.
  virtual void MaybeCollectGarbage() = 0;
  // Frees everything dropped on this context now (memories, code of modules
  // no instance uses any more). Costs about a millisecond: call when pools
  // close, or before retrying an allocation that failed.
  virtual void CollectGarbage() = 0;
};

// The function export `name` of `info`: kNotFound when there is none (or
// it is not a function), kInvalidArgument when its signature uses types
// keel cannot pass (v128, references).
[[nodiscard]] Result<Func> LookupFunc(const ModuleInfo& info, std::string_view name);

// Checks a call of `func` on an instance of `info`: a function export of
// the module, `args` of its parameter types, room for exactly its results.
// Returns the export; kInvalidArgument naming what is wrong.
[[nodiscard]] Result<const ExportInfo*> CheckCall(const ModuleInfo& info, const Func& func,
                                                  std::span<const Value> args,
                                                  size_t result_count);

// Checks that `linker` provides every import of `info` with the exact type
// and that all imports are functions. kLinkError naming the first import
// that is missing or mistyped.
[[nodiscard]] Result<void> CheckImports(const ModuleInfo& info, const Linker* linker);

enum class EngineKind : uint8_t { kSpiderMonkey, kWasmtime };

// "spidermonkey", "wasmtime".
std::string_view ToString(EngineKind kind);
// Parses the names ToString gives; nullopt otherwise.
std::optional<EngineKind> ParseEngineKind(std::string_view name);

// A process-wide engine. Thread-safe. Never destroyed.
class Engine {
 public:
  virtual ~Engine() = default;

  // Validates and compiles; any thread. kInvalidModule says what is wrong.
  [[nodiscard]] virtual Result<std::shared_ptr<const Module>> Compile(
      std::span<const uint8_t> bytes, const CompileOptions& options = {}) = 0;

  // A context for the calling thread.
  [[nodiscard]] virtual Result<std::unique_ptr<Context>> NewContext(
      const ContextOptions& options = {}) = 0;

  // The engine and its version, e.g. "wasmtime-48.0.8".
  virtual std::string_view name() const = 0;
  virtual EngineKind kind() const = 0;

  // Process-wide; thread-safe.
  virtual MemoryStats memory_stats() const = 0;

  // Thread-safe. The default: no snapshots.
  virtual ResetSupport reset_support() const { return {}; }
};

// The engines this build includes, the default first.
std::span<const EngineKind> AvailableEngines();

// The process-wide engine of `kind`, started on first use; kUnavailable
// when this build does not include it.
[[nodiscard]] Result<Engine*> GetEngine(EngineKind kind);

// The default engine (SpiderMonkey), started on first use.
Engine& DefaultEngine();

}  // namespace keel::engine

#endif  // KEEL_ENGINE_ENGINE_H_
