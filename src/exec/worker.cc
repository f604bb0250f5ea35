// Worker threads: each owns an engine context and the instances on it, and
// runs calls taken from pool queues. A started call always runs to its end.
#include <sched.h>

#include <algorithm>

#include "abi/bytecall.h"
#include "exec/core.h"

namespace keel::exec {

namespace {

// How long a worker that ran out of calls yields the CPU, looking for more,
// before it sleeps. Calls that come in that window find it awake: the
// submitter needs no futex wake, the worker no sleep and reschedule. Under
// steady load (a call every few microseconds per worker) that is most
// calls; an idle worker spends at most this much before sleeping.
constexpr std::chrono::microseconds kYieldBeforeSleep{50};

const std::shared_ptr<const Linker>& EmptyLinker() {
  static const auto* linker = new std::shared_ptr<const Linker>(std::make_shared<Linker>());
  return *linker;
}

RunEnd RunEndOf(const CallResult& result) {
  if (result) return RunEnd::kOk;
  switch (result.error().code) {
    case ErrorCode::kTrap: return RunEnd::kTrapped;
    case ErrorCode::kInterrupted: return RunEnd::kInterrupted;
    default: return RunEnd::kFailed;
  }
}

bool IsOutOfMemory(const Error& error) {
  return error.code == ErrorCode::kResourceExhausted ||
         (error.code == ErrorCode::kTrap && error.trap == TrapKind::kOutOfMemory);
}

}  // namespace

Worker::Worker(RuntimeCore* core, int index, bool spare)
    : core_(core), index_(index), counters_(core->metrics.ForWorker(index)), spare_(spare) {}

Worker::~Worker() { Stop(); }

Result<void> Worker::Start(size_t stack_bytes) {
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, stack_bytes);
  int rc = pthread_create(&thread_, &attr, &Worker::ThreadMain, this);
  pthread_attr_destroy(&attr);
  if (rc != 0) return MakeError(ErrorCode::kInternal, "cannot start worker thread");
  started_ = true;
  MutexLock lock(start_mu_);
  while (!start_result_) start_cv_.Wait(start_mu_);
  return *start_result_;
}

void* Worker::ThreadMain(void* self) {
  auto* worker = static_cast<Worker*>(self);
  size_t stack = worker->core_->options.worker_stack_bytes;
  // Leave the guest all but a margin for host functions and the engine.
  engine::ContextOptions options{.stack_quota_bytes = stack - std::max<size_t>(stack / 4, 1 << 20),
                                 .memory_budget = worker->core_->memory_budget};
  auto context = worker->core_->engine->NewContext(options);
  {
    MutexLock lock(worker->start_mu_);
    if (context) {
      worker->context_ = std::move(*context);
      worker->interrupter_ = worker->context_->interrupter();
      worker->start_result_ = Result<void>();
    } else {
      worker->start_result_ = Result<void>(tl::unexpected(context.error()));
    }
  }
  worker->start_cv_.SignalAll();
  if (worker->context_) worker->Loop();
  return nullptr;
}

void Worker::Stop() {
  if (!started_) return;
  {
    MutexLock lock(mu_);
    stop_ = true;
    wake_ = true;
  }
  cv_.SignalAll();
  pthread_join(thread_, nullptr);
  started_ = false;
}

void Worker::Wake() {
  {
    MutexLock lock(mu_);
    wake_ = true;
  }
  cv_.Signal();
}

bool Worker::ClaimIfIdle(const PoolImpl* pool) {
  if (!idle_.exchange(false)) return false;
  {
    MutexLock lock(mu_);
    claim_ = pool;
    wake_ = true;
  }
  cv_.Signal();
  return true;
}

const PoolImpl* Worker::TakeClaim() {
  MutexLock lock(mu_);
  return std::exchange(claim_, nullptr);
}

void Worker::Post(std::function<void(Worker&)> command) {
  {
    MutexLock lock(mu_);
    // A stopped worker runs nothing more; keeping the command would keep
    // what it holds (e.g. a closed pool) alive forever.
    if (stop_) return;
    commands_.push_back(std::move(command));
    has_commands_.store(true);
    wake_ = true;
  }
  cv_.Signal();
}

std::shared_ptr<engine::Interrupter> Worker::interrupter() const { return interrupter_; }

void Worker::InterruptCurrent(const std::string& why) {
  std::shared_ptr<CallRecord> record;
  {
    MutexLock lock(current_mu_);
    record = current_;
  }
  // Wake-ups of host functions run on the waker: the caller holds
  // Shutdown's lock.
  if (uint64_t tag = instantiating_tag_.load()) {
    if (auto wake = interrupter_->RequestDeferred(tag)) core_->waker->Post(std::move(wake));
  }
  if (!record) return;
  core_->Resolve(record, tl::unexpected(Error(ErrorCode::kShuttingDown, why)), Cause::kShuttingDown);
  core_->Interrupt(*record);
}

void Worker::SetCurrent(std::shared_ptr<CallRecord> record) {
  MutexLock lock(current_mu_);
  current_ = std::move(record);
}

bool Worker::RunCommands() {
  if (!has_commands_.load()) return false;
  std::vector<std::function<void(Worker&)>> commands;
  {
    MutexLock lock(mu_);
    commands.swap(commands_);
    has_commands_.store(false);
  }
  for (auto& command : commands) command(*this);
  return !commands.empty();
}

void Worker::AddSlot(std::shared_ptr<PoolImpl> pool, int slot_no) {
  if (slot_no < 0 && pool->closed()) {
    pool->OnTemporarySlotGone(this);
    return;
  }
  Slot slot;
  slot.pool = std::move(pool);
  slot.slot_no = slot_no;
  slot.last_used = Clock::now();
  if (slot.temporary()) core_->metrics.temporary_instances++;
  slots_.push_back(std::move(slot));
}

void Worker::RemovePool(const PoolImpl* pool) {
  bool removed = false;
  for (Slot& slot : slots_) {
    if (slot.pool.get() != pool) continue;
    if (slot.instance) Retire(slot);
    if (slot.temporary()) {
      slot.pool->OnTemporarySlotGone(this);
      core_->metrics.temporary_instances--;
    }
    removed = true;
  }
  std::erase_if(slots_, [pool](const Slot& s) { return s.pool.get() == pool; });
  // The engine frees a dropped instance's memory only when it collects.
  if (removed) context_->CollectGarbage();
}

void Worker::CollectGarbage() { context_->CollectGarbage(); }

Result<std::unique_ptr<engine::Instance>> Worker::TryInstantiate(PoolImpl& pool) {
  const PoolOptions& options = pool.options();
  uint64_t tag = core_->next_tag.fetch_add(1);
  // Published before the shutdown check, so Shutdown either interrupts it
  // or this check sees Shutdown (as for calls).
  instantiating_tag_.store(tag);
  if (core_->shutting_down.load()) {
    instantiating_tag_.store(0);
    return MakeError(ErrorCode::kShuttingDown, "the runtime is shutting down");
  }
  core_->watchdog->WatchTag(Clock::now() + options.instantiate_timeout, interrupter_, tag);
  auto instance = context_->Instantiate(internal::ModuleAccess::Engine(*pool.module()),
                                        options.linker ? options.linker : EmptyLinker(),
                                        options.host_state_factory ? options.host_state_factory() : nullptr,
                                        tag);
  if (instance) {
    if (auto ready = Prepare(pool, **instance, tag); !ready) instance = tl::unexpected(ready.error());
  }
  instantiating_tag_.store(0);
  return instance;
}

// Runs the module's init export (under the instantiation's tag and
// deadline), then takes the snapshot the reset policy needs. An instance
// that cannot be snapshotted still serves, replaced after every call.
Result<void> Worker::Prepare(PoolImpl& pool, engine::Instance& instance, uint64_t tag) {
  if (const std::string& init = pool.module()->init_export(); !init.empty()) {
    if (auto ran = instance.Invoke(init, {}, tag); !ran) {
      Error error = ran.error();
      error.message = "init export '" + init + "': " + error.message;
      return MakeError(std::move(error));
    }
  }
  if (pool.options().recycle.state == StatePolicy::kReset) (void)instance.Snapshot({});
  return {};
}

bool Worker::Instantiate(Slot& slot) {
  PoolImpl& pool = *slot.pool;
  auto instance = TryInstantiate(pool);
  if (!instance && IsOutOfMemory(instance.error())) {
    // Dropped instances keep their memories until their context collects
    // (maybe on another worker): collect here and everywhere, retry once.
    context_->CollectGarbage();
    core_->CollectEverywhere(this);
    instance = TryInstantiate(pool);
  }
  if (!instance) {
    Error error = instance.error();
    if (error.code == ErrorCode::kShuttingDown) return false;
    if (slot.temporary()) {
      // A spare's extra instance is not the pool's crash loop: drop it.
      core_->metrics.instantiation_failures++;
      DropTemporarySlot(slot);
      return false;
    }
    if (error.code == ErrorCode::kInterrupted) {
      error.message = "instantiation exceeded its deadline of " +
                      std::to_string(pool.options().instantiate_timeout.count()) + " ms";
    }
    slot.retry_at = Clock::now() + std::chrono::milliseconds(10);
    pool.OnInstantiationFailed(error);
    return false;
  }
  slot.instance = std::move(*instance);
  slot.calls = 0;
  slot.last_used = Clock::now();
  core_->metrics.created++;
  core_->metrics.instances_live++;
  if (slot.replacing) {
    core_->metrics.replaced++;
    slot.replacing = false;
  }
  // Temporary instances are counted apart (PoolStats::temporary_instances).
  if (!slot.temporary()) pool.SlotHealthy(slot.slot_no, true);
  pool.OnInstantiated();
  return true;
}

void Worker::Retire(Slot& slot) {
  slot.instance.reset();
  core_->metrics.instances_live--;
  if (!slot.temporary()) slot.pool->SlotHealthy(slot.slot_no, false);
}

// Marks a temporary slot for removal; Loop() erases it between passes.
void Worker::DropTemporarySlot(Slot& slot) {
  if (slot.dropped) return;
  if (slot.instance) {
    core_->metrics.recycled++;
    Retire(slot);
  }
  slot.pool->OnTemporarySlotGone(this);
  core_->metrics.temporary_instances--;
  slot.dropped = true;
}

bool Worker::RunOneCall(Slot& slot, const PoolImpl*& claim) {
  auto record = slot.pool->Pop(slot.slot_no);
  if (!record) return false;
  Execute(slot, std::move(record), claim);
  return true;
}

// This worker was woken for `claim`'s work but is about to run something
// else first (or could not serve it): hands that work to another idle
// worker, or lets the starvation check find it a spare. Once per wake-up.
void Worker::PassOnClaim(const PoolImpl*& claim, const Slot* running) {
  const PoolImpl* pool = std::exchange(claim, nullptr);
  if (!pool || (running && running->pool.get() == pool && !pool->HasSharedWork())) return;
  for (Slot& slot : slots_) {
    if (slot.pool.get() != pool || slot.dropped) continue;
    if (!slot.pool->HasSharedWork()) return;
    if (!slot.pool->Notify(-1)) slot.pool->ArmStarvationCheck(core_->options.fairness.starvation_delay);
    return;
  }
}

// Moves a dequeued call to kRunning, or resolves it without running. The
// call is published as current before the shutdown check, so Shutdown
// either sees it (and interrupts it) or this check sees Shutdown.
bool Worker::BeginCall(const std::shared_ptr<CallRecord>& record, uint64_t tag) {
  // Tag and worker are published before the call can be seen running, so
  // the watchdog always interrupts the right call; and it counts as running
  // before the shutdown check, so Shutdown's drain waits for it.
  record->engine_tag.store(tag);
  record->worker.store(this);
  SetCurrent(record);
  core_->metrics.running++;
  auto give_up = [&] {
    SetCurrent(nullptr);
    core_->metrics.running--;
    core_->OnCallEnded();
    return false;
  };
  if (Clock::now() >= record->deadline) {
    give_up();
    core_->Expire(record);
    return false;
  }
  if (core_->shutting_down.load()) {
    give_up();
    if (core_->Withdraw(record)) {
      core_->Resolve(record, tl::unexpected(Error(ErrorCode::kShuttingDown, "the runtime is shutting down")),
                     Cause::kShuttingDown);
    }
    return false;
  }
  core_->Test(TestPoint::kDequeued);
  CallState expected = CallState::kQueued;
  if (!record->state.compare_exchange_strong(expected, CallState::kRunning)) return give_up();
  record->pool->OnDequeued(*record);
  return true;
}

CallResult Worker::RunInGuest(Slot& slot, CallRecord& record, uint64_t tag) {
  PoolImpl& pool = *slot.pool;
  engine::Instance& instance = *slot.instance;
  exec::ScopedCallContext context(record.context);
  if (HostState* state = instance.host_state()) state->OnCallStart();
  if (record.bytes) {
    const ByteCallLimits& limits = pool.options().byte_limits;
    auto out = abi::CallBytes(instance, record.export_name, record.input,
                              {limits.max_input_bytes, limits.max_output_bytes}, tag,
                              [&] { record.state.store(CallState::kPostReturn); });
    if (!out) return tl::unexpected(std::move(out.error()));
    return CallOutput{{}, std::move(*out)};
  }
  const FuncType& type = internal::ModuleAccess::Engine(*pool.module())->info().exports[record.export_index].func;
  CallOutput out;
  out.values.resize(type.results.size());
  auto ok = instance.Call(engine::Func{record.export_index, &type}, record.args, out.values, tag);
  if (!ok) return tl::unexpected(std::move(ok.error()));
  return out;
}

void Worker::Execute(Slot& slot, std::shared_ptr<CallRecord> record, const PoolImpl*& claim) {
  uint64_t tag = core_->next_tag.fetch_add(1);
  if (!BeginCall(record, tag)) return;
  PassOnClaim(claim, &slot);
  Clock::time_point start = Clock::now();
  counters_.started++;
  counters_.queue_wait.Record(start - record->submitted);
  if (!slot.temporary()) slot.pool->SlotBusy(true);
  running_since_.store(start.time_since_epoch().count());
  running_pool_.store(slot.pool.get());
  CallResult result = RunInGuest(slot, *record, tag);
  running_pool_.store(nullptr);
  // Before kDone: a shutdown from now on leaves the finished call alone.
  SetCurrent(nullptr);
  record->state.store(CallState::kDone);
  if (!result) {
    if (const HostState* state = slot.instance->host_state()) state->AnnotateError(result.error());
  } else if (HostState* state = slot.instance->host_state()) {
    state->AnnotateOutput(*result);
  }
  FinishCall(slot, record, std::move(result), start);
}

void Worker::FinishCall(Slot& slot, const std::shared_ptr<CallRecord>& record, CallResult result,
                        Clock::time_point start) {
  Metrics& metrics = core_->metrics;
  Clock::time_point end = Clock::now();
  // Before the resolution, so that a caller that wakes up finds the gauges
  // consistent.
  metrics.running--;
  counters_.run_time.Record(end - start);
  counters_.CountRunEnd(RunEndOf(result));
  if (!slot.temporary()) slot.pool->SlotBusy(false);
  slot.calls++;
  slot.last_used = end;
  bool poisoned = slot.instance->poisoned();

  Cause cause = Cause::kOk;
  TrapKind trap = TrapKind::kNone;
  if (!result) {
    const Error& error = result.error();
    if (error.code == ErrorCode::kTrap) {
      cause = Cause::kTrap;
      trap = error.trap;
    } else {
      // kInterrupted normally means the watchdog, an abort or shutdown
      // resolved the handle first; anything else is a failure of the call.
      cause = Cause::kError;
    }
  }
  if (!core_->Resolve(record, std::move(result), cause, trap)) {
    bool detached;
    {
      MutexLock lock(record->mu);
      detached = record->detached;
    }
    // A deadline, an abort or shutdown resolved it while it ran: the
    // contract replaces the instance even if the guest finished first.
    if (!detached && !poisoned) {
      slot.instance->Poison("the call was interrupted (deadline, abort or shutdown)");
      poisoned = true;
    }
    core_->DeliverDetached(record, std::move(result));
  }
  core_->OnCallEnded();
  AfterCall(slot, poisoned);
}

// Replaces a poisoned instance (the caller already has its answer) and
// applies the recycle policy.
void Worker::AfterCall(Slot& slot, bool poisoned) {
  bool shutting_down = core_->shutting_down.load();
  if (poisoned) {
    core_->metrics.poisoned++;
    Retire(slot);
    slot.replacing = true;
    if (!shutting_down) Instantiate(slot);
    return;
  }
  const RecyclePolicy& recycle = slot.pool->options().recycle;
  bool replace = false;
  if (recycle.state == StatePolicy::kFresh || (recycle.max_calls > 0 && slot.calls >= recycle.max_calls)) {
    core_->metrics.recycled++;
    replace = true;
  } else if (recycle.state == StatePolicy::kReset && !ResetToSnapshot(slot)) {
    core_->metrics.resets_fresh_fallback++;
    replace = true;
  }
  if (replace) {
    Retire(slot);
    if (!shutting_down) Instantiate(slot);
  }
}

// False when the instance cannot be reset (no snapshot, or the reset
// failed, which poisons it): the caller replaces it.
bool Worker::ResetToSnapshot(Slot& slot) {
  if (!slot.instance->has_snapshot()) return false;
  Clock::time_point start = Clock::now();
  auto reset = slot.instance->Reset();
  if (!reset) return false;
  counters_.reset_time.Record(Clock::now() - start);
  if (reset->memory == engine::ResetStats::Memory::kTracked) {
    counters_.resets_pages++;
  } else {
    counters_.resets_full++;
  }
  counters_.reset_pages_copied += reset->pages_copied;
  if (reset->scanned) counters_.reset_scans++;
  return true;
}

// A slot without an instance that should build one now.
bool Worker::WantsInstance(const Slot& slot, Clock::time_point now) const {
  return !slot.instance && !slot.dropped && !core_->shutting_down.load() && !slot.pool->closed() &&
         now >= slot.retry_at && slot.pool->MayInstantiate(now);
}

bool Worker::HasWork() const {
  if (has_commands_.load()) return true;
  Clock::time_point now = Clock::now();
  for (const Slot& slot : slots_) {
    if (slot.instance ? slot.pool->HasWork(slot.slot_no) : WantsInstance(slot, now)) return true;
  }
  return false;
}

void Worker::RetireTemporarySlots(Clock::time_point now) {
  auto idle_limit = core_->options.fairness.spare_idle;
  for (Slot& slot : slots_) {
    if (slot.temporary() && now - slot.last_used >= idle_limit) DropTemporarySlot(slot);
  }
}

// Idle-time upkeep; returns when it next has something to do (max() when
// nothing is scheduled: only a command or a call wakes the worker then).
Clock::time_point Worker::Maintenance() {
  Clock::time_point now = Clock::now();
  RetireTemporarySlots(now);
  bool shutting_down = core_->shutting_down.load();
  Clock::time_point next = Clock::time_point::max();
  for (Slot& slot : slots_) {
    if (slot.dropped) continue;
    if (slot.temporary()) next = std::min(next, slot.last_used + core_->options.fairness.spare_idle);
    if (!slot.instance) {
      if (!shutting_down && !slot.pool->closed()) {
        next = std::min(next, std::max(slot.retry_at, slot.pool->NextAttempt()));
      }
      continue;
    }
    auto max_idle = slot.pool->options().recycle.max_idle;
    if (max_idle.count() == 0 || shutting_down) continue;
    if (now - slot.last_used >= max_idle) {
      core_->metrics.recycled++;
      Retire(slot);
      Instantiate(slot);
    } else {
      next = std::min(next, slot.last_used + max_idle);
    }
  }
  std::erase_if(slots_, [](const Slot& s) { return s.dropped; });
  if (spare_ && slots_.empty()) {
    if (slotless_since_ == Clock::time_point{}) slotless_since_ = now;
    next = std::min(next, slotless_since_ + 10 * core_->options.fairness.spare_idle);
  } else {
    slotless_since_ = {};
  }
  context_->MaybeCollectGarbage();
  return next;
}

bool Worker::Stopping() {
  MutexLock lock(mu_);
  return stop_;
}

void Worker::WaitForWork(Clock::time_point until) {
  MutexLock lock(mu_);
  while (!wake_ && !stop_) {
    if (until == Clock::time_point::max()) {
      cv_.Wait(mu_);
    } else if (!cv_.WaitUntil(mu_, until)) {
      break;
    }
  }
  wake_ = false;
}

// One call per slot that has one, the claimed pool's slots first.
bool Worker::RunReadyCalls(const PoolImpl*& claim) {
  bool worked = false;
  if (claim) {
    for (Slot& slot : slots_) {
      if (slot.pool.get() == claim && slot.instance && !slot.dropped && RunOneCall(slot, claim)) {
        worked = true;
      }
    }
  }
  for (Slot& slot : slots_) {
    if (slot.instance && !slot.dropped && slot.pool->HasWork(slot.slot_no) && RunOneCall(slot, claim)) {
      worked = true;
    }
  }
  return worked;
}

bool Worker::InstantiateMissing() {
  bool worked = false;
  Clock::time_point now = Clock::now();
  for (Slot& slot : slots_) {
    if (WantsInstance(slot, now)) {
      Instantiate(slot);
      worked = true;
    }
  }
  return worked;
}

// A spare without slots for long enough ends, unless it is being claimed:
// taking itself out of the idle state first means no claim can land after.
bool Worker::Lingered(Clock::time_point now) {
  if (!spare_ || !slots_.empty() || has_commands_.load() || slotless_since_ == Clock::time_point{}) {
    return false;
  }
  if (now - slotless_since_ < 10 * core_->options.fairness.spare_idle) return false;
  if (!idle_.exchange(false)) return false;
  exited_.store(true);
  return true;
}

bool Worker::YieldForWork() {
  Clock::time_point until = Clock::now() + kYieldBeforeSleep;
  do {
    // Lets the submitting threads run when they share this core.
    sched_yield();
    if (has_commands_.load()) return true;
    for (const Slot& slot : slots_) {
      if (slot.instance && !slot.dropped && slot.pool->HasWork(slot.slot_no)) return true;
    }
  } while (Clock::now() < until);
  return false;
}

void Worker::Loop() {
  for (;;) {
    RunCommands();
    if (Stopping()) break;
    const PoolImpl* claim = TakeClaim();
    if (claim) core_->Test(TestPoint::kClaimed);
    bool worked = RunReadyCalls(claim);
    if (InstantiateMissing()) worked = true;
    std::erase_if(slots_, [](const Slot& s) { return s.dropped; });
    // Woken for work this worker could not serve: pass it on.
    PassOnClaim(claim, nullptr);
    if (worked || YieldForWork()) continue;
    Clock::time_point next = Maintenance();
    // Publish idleness before the last look, so a submitter either sees us
    // idle and claims us, or we see its call.
    idle_.store(true);
    if (!HasWork()) {
      WaitForWork(next);
      if (Lingered(Clock::now())) break;
    }
    idle_.store(false);
  }
  Teardown();
}

void Worker::Teardown() {
  // Commands posted before stop_ was set and not run: what they hold (a
  // closing pool, which holds the runtime's core) must not outlive us.
  // Dropped outside the lock: a pool's destructor may post again.
  std::vector<std::function<void(Worker&)>> unrun;
  {
    MutexLock lock(mu_);
    unrun.swap(commands_);
    has_commands_.store(false);
  }
  unrun.clear();
  for (Slot& slot : slots_) {
    if (slot.instance) Retire(slot);
    if (slot.temporary()) core_->metrics.temporary_instances--;
  }
  slots_.clear();
  context_.reset();  // interrupter_ stays valid: requests become no-ops
}

}  // namespace keel::exec
