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

}  // namespace

Worker::Worker(RuntimeCore* core, int index) : core_(core), index_(index) {}

Worker::~Worker() { Stop(); }

Result<void> Worker::Start(size_t stack_bytes) {
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, stack_bytes);
  int rc = pthread_create(&thread_, &attr, &Worker::ThreadMain, this);
  pthread_attr_destroy(&attr);
  if (rc != 0) return MakeError(ErrorCode::kInternal, "cannot start worker thread");
  started_ = true;
  std::unique_lock<std::mutex> lock(start_mu_);
  start_cv_.wait(lock, [&] { return start_result_.has_value(); });
  return *start_result_;
}

void* Worker::ThreadMain(void* self) {
  auto* worker = static_cast<Worker*>(self);
  size_t stack = worker->core_->options.worker_stack_bytes;
  // Leave the guest all but a margin for host functions and the engine.
  engine::ContextOptions options{.stack_quota_bytes = stack - std::max<size_t>(stack / 4, 1 << 20)};
  auto context = engine::DefaultEngine().NewContext(options);
  {
    std::lock_guard<std::mutex> lock(worker->start_mu_);
    if (context) {
      worker->context_ = std::move(*context);
      worker->interrupter_ = worker->context_->interrupter();
      worker->start_result_ = Result<void>();
    } else {
      worker->start_result_ = Result<void>(tl::unexpected(context.error()));
    }
  }
  worker->start_cv_.notify_all();
  if (worker->context_) worker->Loop();
  return nullptr;
}

void Worker::Stop() {
  if (!started_) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    wake_ = true;
  }
  cv_.notify_all();
  pthread_join(thread_, nullptr);
  started_ = false;
}

void Worker::Wake() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    wake_ = true;
  }
  cv_.notify_one();
}

void Worker::Post(std::function<void(Worker&)> command) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    // A stopped worker runs nothing more; keeping the command would keep
    // what it holds (e.g. a closed pool) alive forever.
    if (stop_) return;
    commands_.push_back(std::move(command));
    has_commands_.store(true);
    wake_ = true;
  }
  cv_.notify_one();
}

std::shared_ptr<engine::Interrupter> Worker::interrupter() const { return interrupter_; }

void Worker::InterruptCurrent(const std::string& why) {
  std::shared_ptr<CallRecord> record;
  {
    std::lock_guard<std::mutex> lock(current_mu_);
    record = current_;
  }
  if (!record) return;
  core_->Resolve(record, tl::unexpected(Error(ErrorCode::kShuttingDown, why)), Cause::kShuttingDown);
  interrupter_->Request(record->engine_tag.load());
}

bool Worker::RunCommands() {
  if (!has_commands_.load()) return false;
  std::vector<std::function<void(Worker&)>> commands;
  {
    std::lock_guard<std::mutex> lock(mu_);
    commands.swap(commands_);
    has_commands_.store(false);
  }
  for (auto& command : commands) command(*this);
  return !commands.empty();
}

void Worker::AddSlot(std::shared_ptr<PoolImpl> pool, int slot_no) {
  Slot slot;
  slot.pool = std::move(pool);
  slot.slot_no = slot_no;
  slots_.push_back(std::move(slot));
}

void Worker::RemovePool(const PoolImpl* pool) {
  for (Slot& slot : slots_) {
    if (slot.pool.get() == pool && slot.instance) Retire(slot);
  }
  std::erase_if(slots_, [pool](const Slot& s) { return s.pool.get() == pool; });
}

bool Worker::Instantiate(Slot& slot) {
  PoolImpl& pool = *slot.pool;
  const PoolOptions& options = pool.options();
  uint64_t tag = core_->next_tag.fetch_add(1);
  Clock::time_point now = Clock::now();
  core_->watchdog->WatchTag(now + options.instantiate_timeout, interrupter_, tag);
  auto instance = context_->Instantiate(pool.module()->engine_module(),
                                        options.linker ? options.linker : EmptyLinker(),
                                        options.host_state_factory ? options.host_state_factory() : nullptr,
                                        tag);
  if (!instance) {
    Error error = instance.error();
    if (error.code == ErrorCode::kInterrupted) {
      error.message = "instantiation exceeded its deadline of " +
                      std::to_string(options.instantiate_timeout.count()) + " ms";
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
  pool.SlotHealthy(true);
  pool.OnInstantiated();
  return true;
}

void Worker::Retire(Slot& slot) {
  slot.instance.reset();
  core_->metrics.instances_live--;
  slot.pool->SlotHealthy(false);
}

bool Worker::RunOneCall(Slot& slot) {
  auto record = slot.pool->Pop(slot.slot_no);
  if (!record) return false;
  Execute(slot, std::move(record));
  return true;
}

void Worker::Execute(Slot& slot, std::shared_ptr<CallRecord> record) {
  PoolImpl& pool = *slot.pool;
  Metrics& metrics = core_->metrics;
  // Tag and worker are published before the call can be seen running, so
  // the watchdog always interrupts the right call.
  uint64_t tag = core_->next_tag.fetch_add(1);
  record->engine_tag.store(tag);
  record->worker.store(this);
  Clock::time_point start = Clock::now();
  if (start >= record->deadline) {
    core_->Expire(record);
    return;
  }
  if (core_->shutting_down.load()) {
    if (core_->Withdraw(record)) {
      core_->Resolve(record, tl::unexpected(Error(ErrorCode::kShuttingDown, "the runtime is shutting down")),
                     Cause::kShuttingDown);
    }
    return;
  }
  CallState expected = CallState::kQueued;
  if (!record->state.compare_exchange_strong(expected, CallState::kRunning)) return;
  pool.OnDequeued(*record);
  {
    std::lock_guard<std::mutex> lock(current_mu_);
    current_ = record;
  }
  metrics.started++;
  metrics.running++;
  metrics.queue_wait.Record(start - record->submitted);
  pool.SlotBusy(true);

  CallResult result;
  engine::Instance& instance = *slot.instance;
  if (HostState* state = instance.host_state()) state->OnCallStart();
  if (record->bytes) {
    const ByteCallLimits& limits = pool.options().byte_limits;
    auto out = abi::CallBytes(instance, record->export_name, record->input,
                              {limits.max_input_bytes, limits.max_output_bytes}, tag,
                              [&] { record->state.store(CallState::kPostReturn); });
    if (out) {
      result = CallOutput{{}, std::move(*out)};
    } else {
      result = tl::unexpected(std::move(out.error()));
    }
  } else {
    const FuncType& type = pool.module()->engine_module()->info().exports[record->export_index].func;
    CallOutput out;
    out.values.resize(type.results.size());
    auto ok = instance.Call(engine::Func{record->export_index, &type}, record->args, out.values, tag);
    if (ok) {
      result = std::move(out);
    } else {
      result = tl::unexpected(std::move(ok.error()));
    }
  }
  record->state.store(CallState::kDone);
  if (!result) {
    if (const HostState* state = instance.host_state()) state->AnnotateError(result.error());
  }
  {
    std::lock_guard<std::mutex> lock(current_mu_);
    current_.reset();
  }
  Clock::time_point end = Clock::now();
  metrics.running--;
  metrics.run_time.Record(end - start);
  metrics.CountRunEnd(RunEndOf(result));
  pool.SlotBusy(false);
  slot.calls++;
  slot.last_used = end;
  bool poisoned = instance.poisoned();

  Cause cause = Cause::kOk;
  TrapKind trap = TrapKind::kNone;
  if (!result) {
    const Error& error = result.error();
    if (error.code == ErrorCode::kTrap) {
      cause = Cause::kTrap;
      trap = error.trap;
    } else {
      // kInterrupted normally means the watchdog or shutdown resolved the
      // handle first; anything else is a failure of the call itself.
      cause = Cause::kError;
    }
  }
  if (!core_->Resolve(record, std::move(result), cause, trap)) {
    core_->DeliverDetached(record, std::move(result));
  }

  if (poisoned) {
    metrics.poisoned++;
    Retire(slot);
    slot.replacing = true;
    Instantiate(slot);  // the caller already has its answer
    return;
  }
  const RecyclePolicy& recycle = pool.options().recycle;
  if (recycle.fresh_per_call || (recycle.max_calls > 0 && slot.calls >= recycle.max_calls)) {
    metrics.recycled++;
    Retire(slot);
    Instantiate(slot);
  }
}

bool Worker::HasWork() const {
  if (has_commands_.load()) return true;
  Clock::time_point now = Clock::now();
  for (const Slot& slot : slots_) {
    if (slot.instance ? slot.pool->HasWork(slot.slot_no)
                      : !slot.pool->closed() && now >= std::max(slot.retry_at, slot.pool->NextAttempt())) {
      return true;
    }
  }
  return false;
}

Clock::time_point Worker::Maintenance() {
  Clock::time_point now = Clock::now();
  Clock::time_point next = now + std::chrono::seconds(1);
  for (Slot& slot : slots_) {
    if (!slot.instance) {
      next = std::min(next, std::max(slot.retry_at, slot.pool->NextAttempt()));
      continue;
    }
    auto max_idle = slot.pool->options().recycle.max_idle;
    if (max_idle.count() == 0) continue;
    if (now - slot.last_used >= max_idle) {
      core_->metrics.recycled++;
      Retire(slot);
      Instantiate(slot);
    } else {
      next = std::min(next, slot.last_used + max_idle);
    }
  }
  context_->MaybeCollectGarbage();
  return next;
}

bool Worker::YieldForWork() {
  Clock::time_point until = Clock::now() + kYieldBeforeSleep;
  do {
    // Lets the submitting threads run when they share this core.
    sched_yield();
    if (has_commands_.load()) return true;
    for (const Slot& slot : slots_) {
      if (slot.instance && slot.pool->HasWork(slot.slot_no)) return true;
    }
  } while (Clock::now() < until);
  return false;
}

void Worker::Loop() {
  for (;;) {
    RunCommands();
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stop_) break;
    }
    bool worked = false;
    for (Slot& slot : slots_) {
      if (slot.instance && RunOneCall(slot)) worked = true;
    }
    Clock::time_point now = Clock::now();
    for (Slot& slot : slots_) {
      if (!slot.instance && !slot.pool->closed() &&
          now >= std::max(slot.retry_at, slot.pool->NextAttempt())) {
        Instantiate(slot);
        worked = true;
      }
    }
    if (worked || YieldForWork()) continue;
    Clock::time_point next = Maintenance();
    // Publish idleness before the last look, so a submitter either sees us
    // idle and wakes us, or we see its call.
    idle_.store(true);
    if (!HasWork()) {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_until(lock, next, [&] { return wake_ || stop_; });
      wake_ = false;
    }
    idle_.store(false);
  }
  for (Slot& slot : slots_) {
    if (slot.instance) Retire(slot);
  }
  slots_.clear();
  context_.reset();  // interrupter_ stays valid: requests become no-ops
}

}  // namespace keel::exec
