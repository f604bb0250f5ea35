// The start-function check of Runtime::Compile: one instantiation per
// compiled module on a thread of its own, under a deadline.
#include "exec/core.h"

namespace keel::exec {

struct Prober::Job {
  std::shared_ptr<const engine::Module> module;
  const ModuleOptions* options = nullptr;
  std::optional<Result<void>> result;
};

namespace {

// The probe's linker: the module options' host functions, and for every
// other function import a stub that records it was reached.
std::shared_ptr<const Linker> ProbeLinker(const engine::ModuleInfo& info, const ModuleOptions& options,
                                          const std::shared_ptr<std::atomic<bool>>& stub_reached) {
  auto linker = options.linker ? std::make_shared<Linker>(*options.linker) : std::make_shared<Linker>();
  for (const engine::ImportInfo& imp : info.imports) {
    if (imp.kind != engine::ExternKind::kFunc || !imp.func_supported) continue;
    if (linker->Find(imp.module, imp.name)) continue;
    std::string what = "import '" + imp.module + "'.'" + imp.name + "'";
    linker->Define(imp.module, imp.name, imp.func,
                   [stub_reached, what](Caller&, std::span<const Value>, std::span<Value>) -> Result<void> {
                     stub_reached->store(true);
                     return MakeError(ErrorCode::kUnavailable, what + " is not bound while keel checks the start function");
                   });
  }
  return linker;
}

// What a failed probe means for the module.
Result<void> Verdict(const Error& error, const ModuleOptions& options) {
  const std::string what = options.init_export.empty()
                               ? "the start function (or _initialize)"
                               : "the start function (or _initialize, or init export '" +
                                     options.init_export + "')";
  switch (error.code) {
    case ErrorCode::kInterrupted:
      return MakeError(ErrorCode::kInvalidModule, what + " did not finish within " +
                                                      std::to_string(options.start_timeout.count()) + " ms");
    case ErrorCode::kTrap: {
      Error refused(ErrorCode::kInvalidModule, what + " trapped: " + error.ToString());
      refused.backtrace = error.backtrace;
      return tl::unexpected(std::move(refused));
    }
    case ErrorCode::kResourceExhausted:
      return MakeError(error);
    default:
      return MakeError(ErrorCode::kInvalidModule, "instantiation fails: " + error.ToString());
  }
}

}  // namespace

Prober::Prober(RuntimeCore* core) : core_(core) {
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, core_->options.worker_stack_bytes);
  started_ = pthread_create(&thread_, &attr, &Prober::ThreadMain, this) == 0;
  pthread_attr_destroy(&attr);
}

Prober::~Prober() { Stop(); }

void Prober::Stop() {
  if (!started_ || joined_) return;
  std::function<void()> wake;
  {
    MutexLock lock(mu_);
    stop_ = true;
    // A start function running now must not hold up shutdown.
    if (interrupter_ && probing_tag_ != 0) wake = interrupter_->RequestDeferred(probing_tag_);
  }
  if (wake) wake();
  cv_.SignalAll();
  pthread_join(thread_, nullptr);
  joined_ = true;
}

void* Prober::ThreadMain(void* self) {
  static_cast<Prober*>(self)->Loop();
  return nullptr;
}

Result<void> Prober::Probe(const std::shared_ptr<const engine::Module>& module, const ModuleOptions& options) {
  Job job{module, &options, std::nullopt};
  MutexLock lock(mu_);
  if (!started_ || stop_) return MakeError(ErrorCode::kShuttingDown, "the runtime is shutting down");
  queue_.push_back(&job);
  cv_.SignalAll();
  while (!job.result) cv_.Wait(mu_);
  return *job.result;
}

void Prober::Loop() {
  size_t stack = core_->options.worker_stack_bytes;
  auto context = core_->engine->NewContext(
      {.stack_quota_bytes = stack - std::max<size_t>(stack / 4, 1 << 20)});
  MutexLock lock(mu_);
  for (;;) {
    while (!stop_ && queue_.empty()) cv_.Wait(mu_);
    // Jobs still queued at stop are answered, so no Compile waits forever.
    if (queue_.empty()) return;
    Job* job = queue_.front();
    queue_.pop_front();
    lock.Unlock();
    Result<void> result = context ? Run(**context, *job) : MakeError(context.error());
    lock.Lock();
    job->result = std::move(result);
    cv_.SignalAll();
  }
}

Result<void> Prober::Run(engine::Context& context, Job& job) {
  const engine::ModuleInfo& info = job.module->info();
  auto stub_reached = std::make_shared<std::atomic<bool>>(false);
  auto linker = ProbeLinker(info, *job.options, stub_reached);
  // Modules that cannot be linked are refused later, by CreatePool, with a
  // link error naming the import.
  if (!engine::CheckImports(info, linker.get())) return {};
  uint64_t tag = core_->next_tag.fetch_add(1);
  std::shared_ptr<engine::Interrupter> interrupter;
  {
    MutexLock lock(mu_);
    if (stop_) return MakeError(ErrorCode::kShuttingDown, "the runtime is shutting down");
    if (!interrupter_) interrupter_ = context.interrupter();
    interrupter = interrupter_;
    probing_tag_ = tag;
  }
  core_->watchdog->WatchTag(Clock::now() + job.options->start_timeout, std::move(interrupter), tag);
  auto instance = context.Instantiate(
      job.module, linker, job.options->host_state_factory ? job.options->host_state_factory() : nullptr, tag);
  if (instance && !job.options->init_export.empty()) {
    if (auto ran = (*instance)->Invoke(job.options->init_export, {}, tag); !ran) instance = MakeError(ran.error());
  }
  bool stopped;
  {
    MutexLock lock(mu_);
    probing_tag_ = 0;
    stopped = stop_;
  }
  Result<void> verdict;
  if (!instance && stopped) {
    // Interrupted by shutdown, which says nothing about the module.
    verdict = MakeError(ErrorCode::kShuttingDown, "the runtime is shutting down");
  } else if (!instance && !stub_reached->load()) {
    verdict = Verdict(instance.error(), *job.options);
  }
  instance = MakeError(ErrorCode::kCancelled, "dropped");  // frees the instance before collecting
  context.CollectGarbage();
  return verdict;
}

}  // namespace keel::exec
