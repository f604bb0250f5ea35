// Runtime: creation, compilation, pools, shutdown.
#include <algorithm>
#include <thread>

#include <unistd.h>

#include "abi/bytecall.h"
#include "base/sha256.h"
#include "engine/compile_cache.h"
#include "exec/core.h"
#include "exec/testing.h"

namespace keel {

class RuntimeImpl {
 public:
  std::shared_ptr<exec::RuntimeCore> core;
  Mutex shutdown_mu;
  bool shut_down GUARDED_BY(shutdown_mu) = false;
};

std::string_view ToString(ExternKind kind) {
  switch (kind) {
    case ExternKind::kFunc: return "func";
    case ExternKind::kTable: return "table";
    case ExternKind::kMemory: return "memory";
    case ExternKind::kGlobal: return "global";
    case ExternKind::kTag: return "tag";
  }
  return "?";
}

const Module::Export* Module::FindExport(std::string_view name) const {
  for (const Export& e : exports_) {
    if (e.name == name) return &e;
  }
  return nullptr;
}

namespace {

ExternKind PublicKind(engine::ExternKind kind) {
  switch (kind) {
    case engine::ExternKind::kFunc: return ExternKind::kFunc;
    case engine::ExternKind::kTable: return ExternKind::kTable;
    case engine::ExternKind::kMemory: return ExternKind::kMemory;
    case engine::ExternKind::kGlobal: return ExternKind::kGlobal;
    case engine::ExternKind::kTag: return ExternKind::kTag;
  }
  return ExternKind::kFunc;
}

engine::EngineKind InternalKind(EngineKind kind) {
  return kind == EngineKind::kWasmtime ? engine::EngineKind::kWasmtime
                                       : engine::EngineKind::kSpiderMonkey;
}

}  // namespace

std::string_view ToString(EngineKind kind) { return engine::ToString(InternalKind(kind)); }

Result<EngineKind> ParseEngineKind(std::string_view name) {
  for (EngineKind kind : {EngineKind::kSpiderMonkey, EngineKind::kWasmtime}) {
    if (name == ToString(kind)) return kind;
  }
  return MakeError(ErrorCode::kInvalidArgument,
                   "unknown engine '" + std::string(name) + "' (spidermonkey or wasmtime)");
}

std::string_view ToString(StatePolicy policy) {
  switch (policy) {
    case StatePolicy::kKeep: return "keep";
    case StatePolicy::kReset: return "reset";
    case StatePolicy::kFresh: return "fresh";
  }
  return "?";
}

Result<StatePolicy> ParseStatePolicy(std::string_view name) {
  for (StatePolicy policy : {StatePolicy::kKeep, StatePolicy::kReset, StatePolicy::kFresh}) {
    if (name == ToString(policy)) return policy;
  }
  return MakeError(ErrorCode::kInvalidArgument,
                   "unknown state policy '" + std::string(name) + "' (reset, keep or fresh)");
}

std::vector<EngineKind> AvailableEngines() {
  std::vector<EngineKind> kinds;
  for (engine::EngineKind kind : engine::AvailableEngines()) {
    kinds.push_back(kind == engine::EngineKind::kWasmtime ? EngineKind::kWasmtime
                                                          : EngineKind::kSpiderMonkey);
  }
  return kinds;
}

Runtime::Runtime(std::unique_ptr<RuntimeImpl> impl) : impl_(std::move(impl)) {}

Runtime::~Runtime() { Shutdown(); }

uint64_t DefaultMemoryBudget() {
  long pages = sysconf(_SC_PHYS_PAGES);
  long page_size = sysconf(_SC_PAGE_SIZE);
  // Unknown: 4 GiB.
  if (pages <= 0 || page_size <= 0) return uint64_t{4} << 30;
  return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page_size) / 2;
}

Result<std::unique_ptr<Runtime>> Runtime::Create(RuntimeOptions options) {
  if (options.workers <= 0) options.workers = std::max(1u, std::thread::hardware_concurrency());
  if (options.worker_stack_bytes < (2 << 20)) options.worker_stack_bytes = 2 << 20;
  if (options.memory_budget_bytes == 0) options.memory_budget_bytes = DefaultMemoryBudget();
  auto engine = engine::GetEngine(InternalKind(options.engine));
  if (!engine) return MakeError(engine.error());
  auto impl = std::make_unique<RuntimeImpl>();
  auto core = std::make_shared<exec::RuntimeCore>();
  core->options = options;
  core->engine = *engine;
  core->memory_budget = std::make_shared<engine::MemoryBudget>(options.memory_budget_bytes);
  core->executor = std::make_unique<exec::CallbackExecutor>(options.callback_threads);
  core->waker = std::make_unique<exec::CallbackExecutor>(1);
  core->watchdog = std::make_unique<exec::Watchdog>(core.get());
  core->prober = std::make_unique<exec::Prober>(core.get());
  impl->core = core;
  auto runtime = std::unique_ptr<Runtime>(new Runtime(std::move(impl)));
  for (int i = 0; i < options.workers; ++i) {
    core->workers.push_back(std::make_unique<exec::Worker>(core.get(), i, /*spare=*/false));
    if (auto ok = core->workers.back()->Start(options.worker_stack_bytes); !ok) {
      return MakeError(ok.error());  // the destructor stops the ones started
    }
  }
  return runtime;
}

Result<std::shared_ptr<const Module>> Runtime::Compile(std::span<const uint8_t> bytes,
                                                        ModuleOptions options) {
  exec::RuntimeCore& core = *impl_->core;
  if (core.shutting_down.load()) return MakeError(ErrorCode::kShuttingDown, "the runtime is shutting down");
  std::string digest = Sha256Hex(bytes);
  auto compiled =
      engine::CompileCached(*core.engine, bytes, digest, {.max_memory_pages = options.max_memory_pages});
  if (!compiled) return MakeError(compiled.error());
  if (!options.init_export.empty()) {
    const engine::ExportInfo* init = (*compiled)->info().FindFuncExport(options.init_export);
    if (!init || !init->func.params.empty() || !init->func.results.empty()) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "init export '" + options.init_export + "' is not an exported function () -> ()");
    }
  }
  if (auto probed = core.prober->Probe(*compiled, options); !probed) {
    core.metrics.modules_refused++;
    return MakeError(probed.error());
  }
  auto module = std::shared_ptr<Module>(new Module());
  module->digest_ = std::move(digest);
  module->name_ = options.name.empty() ? module->digest_.substr(0, 12) : options.name;
  module->size_bytes_ = bytes.size();
  module->init_export_ = options.init_export;
  module->compiled_ = std::make_shared<internal::CompiledModule>(
      internal::CompiledModule{*compiled, core.options.engine});
  const engine::ModuleInfo& info = (*compiled)->info();
  for (const auto& e : info.exports) {
    Module::Export exp{e.name, PublicKind(e.kind), e.func, false};
    exp.byte_callable = e.kind == engine::ExternKind::kFunc && abi::CheckByteExport(info, e.name).has_value();
    exp.description = engine::Describe(e);
    exp.callable = e.kind == engine::ExternKind::kFunc && e.func_supported;
    module->exports_.push_back(std::move(exp));
  }
  for (const auto& i : info.imports) {
    module->imports_.push_back({i.module, i.name, PublicKind(i.kind),
                                i.kind == engine::ExternKind::kFunc && i.func_supported ? i.func : FuncType{},
                                engine::Describe(i)});
  }
  return std::shared_ptr<const Module>(std::move(module));
}

Result<std::shared_ptr<Pool>> Runtime::CreatePool(std::shared_ptr<const Module> module,
                                                  PoolOptions options) {
  exec::RuntimeCore& core = *impl_->core;
  if (core.shutting_down.load()) return MakeError(ErrorCode::kShuttingDown, "the runtime is shutting down");
  if (!module) return MakeError(ErrorCode::kInvalidArgument, "no module");
  if (EngineKind kind = module->compiled_->engine_kind; kind != core.options.engine) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "module '" + module->name() + "' was compiled by a " + std::string(ToString(kind)) +
                         " runtime; this runtime runs " + std::string(ToString(core.options.engine)));
  }
  if (auto linked = engine::CheckImports(internal::ModuleAccess::Engine(*module)->info(), options.linker.get()); !linked) {
    return MakeError(linked.error());
  }
  size_t workers = core.workers.size();
  size_t instances = options.instances == 0 ? workers : options.instances;
  size_t first = core.next_worker.fetch_add(1);
  std::vector<exec::Worker*> slot_workers;
  for (size_t i = 0; i < instances; ++i) slot_workers.push_back(core.workers[(first + i) % workers].get());
  auto impl = std::make_shared<PoolImpl>(impl_->core, std::move(module), std::move(options), slot_workers);
  for (size_t i = 0; i < instances; ++i) {
    slot_workers[i]->Post([impl, i](exec::Worker& w) { w.AddSlot(impl, static_cast<int>(i)); });
  }
  {
    MutexLock lock(core.pools_mu);
    std::erase_if(core.pools, [](const auto& p) { return p.expired(); });
    core.pools.push_back(impl);
  }
  return std::shared_ptr<Pool>(new Pool(std::move(impl)));
}

void Runtime::Shutdown() { Shutdown(impl_->core->options.drain_grace); }

namespace {

std::vector<std::shared_ptr<PoolImpl>> LivePools(exec::RuntimeCore& core) {
  std::vector<std::shared_ptr<PoolImpl>> pools;
  MutexLock lock(core.pools_mu);
  for (auto& weak : core.pools) {
    if (auto pool = weak.lock()) pools.push_back(std::move(pool));
  }
  return pools;
}

// Running calls get until `until` to finish on their own.
void Drain(exec::RuntimeCore& core, Clock::time_point until) {
  MutexLock lock(core.drain_mu);
  while (core.metrics.running.load() > 0) {
    if (!core.drain_cv.WaitUntil(core.drain_mu, until) && Clock::now() >= until) return;
  }
}

}  // namespace

void Runtime::Shutdown(std::chrono::milliseconds grace) {
  exec::RuntimeCore& core = *impl_->core;
  // A callback thread must not wait for another Shutdown in progress: that
  // one joins the callback threads.
  if (!impl_->shutdown_mu.TryLock()) {
    if (core.executor->OnOwnThread()) return;
    impl_->shutdown_mu.Lock();
  }
  MutexLock guard(impl_->shutdown_mu, std::adopt_lock);
  if (impl_->shut_down) return;
  impl_->shut_down = true;
  core.shutting_down.store(true);
  for (auto& pool : LivePools(core)) {
    pool->FailQueued(Error(ErrorCode::kShuttingDown, "the runtime shut down before the call started"),
                     exec::Cause::kShuttingDown);
  }
  core.prober->Stop();
  Drain(core, Clock::now() + grace);
  std::vector<exec::Worker*> all;
  for (auto& worker : core.workers) all.push_back(worker.get());
  {
    MutexLock lock(core.spares_mu);
    for (auto& worker : core.spares) all.push_back(worker.get());
  }
  for (exec::Worker* worker : all) {
    worker->InterruptCurrent("the runtime shut down: the drain period ended and the call was interrupted");
  }
  core.Test(exec::TestPoint::kInterrupted);
  // The waker runs last: a worker may wait for a host function that only
  // its wake-up unblocks.
  for (exec::Worker* worker : all) worker->Stop();
  core.watchdog->Stop();
  core.waker->Stop();
  core.executor->Stop();
}

MetricsSnapshot Runtime::Metrics() const {
  const exec::RuntimeCore& core = *impl_->core;
  MetricsSnapshot snapshot = core.metrics.Snapshot();
  snapshot.callback_exceptions = core.executor->exceptions() + core.waker->exceptions();
  engine::MemoryStats memory = core.engine->memory_stats();
  snapshot.engine_memory = {memory.live_memories, memory.reserved_bytes, memory.committed_bytes};
  snapshot.memory_budget = {core.memory_budget->limit(), core.memory_budget->used()};
  return snapshot;
}

namespace exec {

void SetTestHook(Runtime& runtime, std::function<void(TestPoint)> hook) {
  RuntimeCore& core = *internal::RuntimeAccess::Core(runtime);
  MutexLock lock(core.test_hook_mu);
  core.has_test_hook.store(static_cast<bool>(hook));
  core.test_hook = std::move(hook);
}

size_t QueueEntries(const Pool& pool) { return internal::RuntimeAccess::Impl(pool)->QueueEntries(); }

int IdleWorkers(const Runtime& runtime) {
  const RuntimeCore& core = *internal::RuntimeAccess::Core(runtime);
  return static_cast<int>(std::count_if(core.workers.begin(), core.workers.end(),
                                        [](const auto& worker) { return worker->idle(); }));
}

int AffinitySlot(const Pool& pool, uint64_t key) {
  return internal::RuntimeAccess::Impl(pool)->AffinitySlot(key);
}

}  // namespace exec

std::shared_ptr<exec::RuntimeCore> internal::RuntimeAccess::Core(const Runtime& runtime) {
  return runtime.impl_->core;
}

int Runtime::workers() const { return static_cast<int>(impl_->core->workers.size()); }

EngineKind Runtime::engine() const { return impl_->core->options.engine; }

}  // namespace keel
