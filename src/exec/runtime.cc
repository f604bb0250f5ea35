// Runtime: creation, compilation, pools, shutdown.
#include <algorithm>
#include <thread>

#include "abi/bytecall.h"
#include "base/sha256.h"
#include "exec/core.h"

namespace keel {

class RuntimeImpl {
 public:
  std::shared_ptr<exec::RuntimeCore> core;
  std::mutex shutdown_mu;
  bool shut_down = false;  // guarded by shutdown_mu
};

const Module::Export* Module::FindExport(std::string_view name) const {
  for (const Export& e : exports_) {
    if (e.name == name) return &e;
  }
  return nullptr;
}

namespace {

std::string KindName(engine::ExternKind kind) {
  switch (kind) {
    case engine::ExternKind::kFunc: return "func";
    case engine::ExternKind::kTable: return "table";
    case engine::ExternKind::kMemory: return "memory";
    case engine::ExternKind::kGlobal: return "global";
    case engine::ExternKind::kTag: return "tag";
  }
  return "?";
}

}  // namespace

Runtime::Runtime(std::unique_ptr<RuntimeImpl> impl) : impl_(std::move(impl)) {}

Runtime::~Runtime() { Shutdown(); }

Result<std::unique_ptr<Runtime>> Runtime::Create(RuntimeOptions options) {
  if (options.workers <= 0) options.workers = std::max(1u, std::thread::hardware_concurrency());
  if (options.worker_stack_bytes < (2 << 20)) options.worker_stack_bytes = 2 << 20;
  auto impl = std::make_unique<RuntimeImpl>();
  auto core = std::make_shared<exec::RuntimeCore>();
  core->options = options;
  core->executor = std::make_unique<exec::CallbackExecutor>(options.callback_threads);
  core->watchdog = std::make_unique<exec::Watchdog>(core.get());
  impl->core = core;
  auto runtime = std::unique_ptr<Runtime>(new Runtime(std::move(impl)));
  for (int i = 0; i < options.workers; ++i) {
    core->workers.push_back(std::make_unique<exec::Worker>(core.get(), i));
    if (auto ok = core->workers.back()->Start(options.worker_stack_bytes); !ok) {
      return MakeError(ok.error());  // the destructor stops the ones started
    }
  }
  return runtime;
}

Result<std::shared_ptr<const Module>> Runtime::Compile(std::span<const uint8_t> bytes,
                                                        ModuleOptions options) {
  auto compiled = engine::DefaultEngine().Compile(bytes, {.max_memory_pages = options.max_memory_pages});
  if (!compiled) return MakeError(compiled.error());
  auto module = std::make_shared<Module>();
  module->digest_ = Sha256Hex(bytes);
  module->name_ = options.name.empty() ? module->digest_.substr(0, 12) : options.name;
  module->size_bytes_ = bytes.size();
  module->engine_module_ = *compiled;
  const engine::ModuleInfo& info = (*compiled)->info();
  for (const auto& e : info.exports) {
    Module::Export exp{e.name, KindName(e.kind), e.func, false};
    exp.byte_callable = e.kind == engine::ExternKind::kFunc && abi::CheckByteExport(info, e.name).has_value();
    exp.description = engine::Describe(e);
    exp.callable = e.kind == engine::ExternKind::kFunc && e.func_supported;
    module->exports_.push_back(std::move(exp));
  }
  for (const auto& i : info.imports) {
    module->imports_.push_back({i.module, i.name, engine::Describe(i)});
  }
  return std::shared_ptr<const Module>(std::move(module));
}

Result<std::shared_ptr<Pool>> Runtime::CreatePool(std::shared_ptr<const Module> module,
                                                  PoolOptions options) {
  exec::RuntimeCore& core = *impl_->core;
  if (core.shutting_down.load()) return MakeError(ErrorCode::kShuttingDown, "the runtime is shutting down");
  if (!module) return MakeError(ErrorCode::kInvalidArgument, "no module");
  if (auto linked = engine::CheckImports(module->engine_module()->info(), options.linker.get()); !linked) {
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
    std::lock_guard<std::mutex> lock(core.pools_mu);
    std::erase_if(core.pools, [](const auto& p) { return p.expired(); });
    core.pools.push_back(impl);
  }
  return std::shared_ptr<Pool>(new Pool(std::move(impl)));
}

void Runtime::Shutdown() { Shutdown(impl_->core->options.drain_grace); }

void Runtime::Shutdown(std::chrono::milliseconds grace) {
  std::lock_guard<std::mutex> guard(impl_->shutdown_mu);
  if (impl_->shut_down) return;
  impl_->shut_down = true;
  exec::RuntimeCore& core = *impl_->core;
  core.shutting_down.store(true);

  std::vector<std::shared_ptr<PoolImpl>> pools;
  {
    std::lock_guard<std::mutex> lock(core.pools_mu);
    for (auto& weak : core.pools) {
      if (auto pool = weak.lock()) pools.push_back(std::move(pool));
    }
  }
  for (auto& pool : pools) {
    pool->FailQueued(Error(ErrorCode::kShuttingDown, "the runtime shut down before the call started"),
                     exec::Cause::kShuttingDown);
  }
  // Drain: running calls get `grace` to finish on their own.
  Clock::time_point until = Clock::now() + grace;
  while (core.metrics.running.load() > 0 && Clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  for (auto& worker : core.workers) {
    worker->InterruptCurrent("the runtime shut down: the drain period ended and the call was interrupted");
  }
  for (auto& worker : core.workers) worker->Stop();
  core.watchdog->Stop();
  core.executor->Stop();
}

MetricsSnapshot Runtime::Metrics() const { return impl_->core->metrics.Snapshot(); }

int Runtime::workers() const { return static_cast<int>(impl_->core->workers.size()); }

}  // namespace keel
