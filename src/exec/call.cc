// The call handle and the resolution rules every path shares.
#include <algorithm>

#include "exec/core.h"

namespace keel {

std::string_view ToString(CallState state) {
  switch (state) {
    case CallState::kQueued: return "queued";
    case CallState::kRunning: return "running";
    case CallState::kPostReturn: return "post_return";
    case CallState::kDone: return "done";
    case CallState::kWithdrawn: return "withdrawn";
  }
  return "?";
}

std::string_view ToString(CancelOutcome outcome) {
  switch (outcome) {
    case CancelOutcome::kWithdrawn: return "withdrawn";
    case CancelOutcome::kDetached: return "detached";
    case CancelOutcome::kAborted: return "aborted";
    case CancelOutcome::kTooLate: return "too_late";
  }
  return "?";
}

Call& Call::operator=(Call&& other) noexcept {
  if (this != &other) {
    if (record_ && !ready()) Cancel();
    record_ = std::move(other.record_);
  }
  return *this;
}

Call::~Call() {
  if (record_ && !ready()) Cancel();
}

CallId Call::id() const { return record_ ? record_->id : 0; }

CallState Call::state() const { return record_ ? record_->state.load() : CallState::kDone; }

bool Call::ready() const { return !record_ || record_->resolved_flag.load(std::memory_order_acquire); }

CancelOutcome Call::Cancel() {
  if (!record_) return CancelOutcome::kTooLate;
  return record_->pool->core().Cancel(record_);
}

void Call::Detach() {
  if (!record_) return;
  std::shared_ptr<internal::CallRecord> record = std::move(record_);
  record->pool->core().Release(record);
}

CancelOutcome Call::Abort() {
  if (!record_) return CancelOutcome::kTooLate;
  return record_->pool->core().Abort(record_);
}

const CallResult& Call::Wait() const {
  static const CallResult kInvalid =
      tl::unexpected(Error(ErrorCode::kFailedPrecondition, "invalid call handle"));
  if (!record_) return kInvalid;
  if (!ready()) {
    MutexLock lock(record_->mu);
    while (!record_->resolved) record_->cv.Wait(record_->mu);
  }
  return record_->result;
}

const CallResult* Call::WaitFor(std::chrono::nanoseconds timeout) const {
  if (!record_) return &Wait();
  if (!ready()) {
    Clock::time_point until = Clock::now() + timeout;
    MutexLock lock(record_->mu);
    while (!record_->resolved) {
      if (!record_->cv.WaitUntil(record_->mu, until) && !record_->resolved) return nullptr;
    }
  }
  return &record_->result;
}

void Call::OnComplete(std::function<void(const CallResult&)> fn) const {
  if (!record_) {
    fn(Wait());
    return;
  }
  {
    MutexLock lock(record_->mu);
    if (!record_->resolved) {
      record_->callbacks.push_back(std::move(fn));
      return;
    }
  }
  auto record = record_;
  record_->pool->core().executor->Post([record, fn = std::move(fn)] { fn(record->result); });
}

void Call::OnCompleteInline(std::function<void(const CallResult&)> fn) const {
  if (!record_) {
    fn(Wait());
    return;
  }
  {
    MutexLock lock(record_->mu);
    if (!record_->resolved) {
      record_->inline_callbacks.push_back(std::move(fn));
      return;
    }
  }
  fn(record_->result);
}

void Call::Awaiter::await_suspend(std::coroutine_handle<> handle) const {
  call->OnComplete([handle](const CallResult&) { handle.resume(); });
}

}  // namespace keel

namespace keel::exec {

bool RuntimeCore::Resolve(const std::shared_ptr<CallRecord>& record, CallResult&& result,
                          Cause cause, TrapKind trap, bool detach) {
  std::vector<std::function<void(const CallResult&)>> callbacks;
  std::vector<std::function<void(const CallResult&)>> inline_callbacks;
  bool to_sink = false;
  {
    MutexLock lock(record->mu);
    if (record->resolved) return false;
    record->resolved = true;
    record->detached = detach;
    record->result = std::move(result);
    callbacks.swap(record->callbacks);
    inline_callbacks.swap(record->inline_callbacks);
    // A released call's result that no callback takes goes to the sink. A
    // detach (a stop request) sends the real result there when it comes.
    to_sink = record->released && callbacks.empty() && !detach && options.detached_sink;
    if (to_sink) metrics.detached_results++;
    // Counted before anyone can see the resolution, so that a caller that
    // wakes up finds the metrics consistent.
    metrics.CountResolution(cause, trap);
    metrics.end_to_end.Record(Clock::now() - record->submitted);
    record->resolved_flag.store(true, std::memory_order_release);
  }
  record->cv.SignalAll();
  for (auto& fn : inline_callbacks) fn(record->result);
  for (auto& fn : callbacks) {
    executor->Post([record, fn = std::move(fn)] { fn(record->result); });
  }
  if (to_sink) {
    executor->Post([sink = options.detached_sink, record] { sink(record->id, record->result); });
  }
  return true;
}

void RuntimeCore::Release(const std::shared_ptr<CallRecord>& record) {
  MutexLock lock(record->mu);
  record->released = true;
}

bool RuntimeCore::Withdraw(const std::shared_ptr<CallRecord>& record) {
  CallState expected = CallState::kQueued;
  if (!record->state.compare_exchange_strong(expected, CallState::kWithdrawn)) return false;
  record->pool->OnDequeued(*record);
  // It may sit in a deque until a sweep: let it hold no input meanwhile.
  // Nobody reads the request of a withdrawn call.
  std::vector<uint8_t>().swap(record->input);
  std::vector<Value>().swap(record->args);
  return true;
}

CancelOutcome RuntimeCore::Cancel(const std::shared_ptr<CallRecord>& record) {
  if (Withdraw(record)) {
    Resolve(record, tl::unexpected(Error(ErrorCode::kCancelled, "cancelled before it started")),
            Cause::kCancelledQueued);
    return CancelOutcome::kWithdrawn;
  }
  // Withdrawn by someone else (deadline, shutdown): they resolve it.
  if (record->state.load() == CallState::kWithdrawn) return CancelOutcome::kTooLate;
  bool detached = Resolve(record,
                          tl::unexpected(Error(ErrorCode::kCancelled,
                                               "cancelled while running: the call runs to its "
                                               "end, detached")),
                          Cause::kDetached, TrapKind::kNone, /*detach=*/true);
  return detached ? CancelOutcome::kDetached : CancelOutcome::kTooLate;
}

CancelOutcome RuntimeCore::Abort(const std::shared_ptr<CallRecord>& record) {
  if (Withdraw(record)) {
    Resolve(record, tl::unexpected(Error(ErrorCode::kCancelled, "aborted before it started")),
            Cause::kCancelledQueued);
    return CancelOutcome::kWithdrawn;
  }
  CallState state = record->state.load();
  if (state != CallState::kRunning && state != CallState::kPostReturn) return CancelOutcome::kTooLate;
  if (record->aborted.exchange(true)) return CancelOutcome::kTooLate;
  bool resolved = Resolve(record,
                          tl::unexpected(Error(ErrorCode::kCancelled,
                                               "aborted while running: the guest was interrupted "
                                               "and its instance is replaced")),
                          Cause::kAborted);
  bool detached;
  {
    MutexLock lock(record->mu);
    detached = record->detached;
  }
  // Neither resolved now nor detached: it ended on its own meanwhile.
  if (!resolved && !detached) return CancelOutcome::kTooLate;
  // A detached call has resolved already; it is still interrupted.
  metrics.aborts++;
  Interrupt(*record);
  return CancelOutcome::kAborted;
}

void RuntimeCore::Expire(const std::shared_ptr<CallRecord>& record) {
  if (Withdraw(record)) {
    Resolve(record,
            tl::unexpected(Error(ErrorCode::kDeadlineExceeded, "deadline passed before the call started")),
            Cause::kDeadlineQueued);
    return;
  }
  CallState state = record->state.load();
  if (state != CallState::kRunning && state != CallState::kPostReturn) return;
  Resolve(record,
          tl::unexpected(Error(ErrorCode::kDeadlineExceeded,
                               "deadline passed while running; the guest was interrupted")),
          Cause::kDeadlineRunning);
  // Even a detached call is bounded by its deadline.
  Interrupt(*record);
}

void RuntimeCore::Interrupt(const CallRecord& record) {
  Worker* worker = record.worker.load();
  if (!worker) return;
  if (auto wake = worker->interrupter()->RequestDeferred(record.engine_tag.load())) {
    waker->Post(std::move(wake));
  }
}

void RuntimeCore::DeliverDetached(const std::shared_ptr<CallRecord>& record, CallResult actual) {
  bool detached;
  {
    MutexLock lock(record->mu);
    detached = record->detached;
  }
  if (!detached || !options.detached_sink) return;
  metrics.detached_results++;
  executor->Post([sink = options.detached_sink, id = record->id,
                    actual = std::move(actual)] { sink(id, actual); });
}

void RuntimeCore::OnCallEnded() {
  if (metrics.running.load() != 0 || !shutting_down.load()) return;
  MutexLock lock(drain_mu);
  drain_cv.SignalAll();
}

void RuntimeCore::CollectEverywhere(const Worker* except) {
  for (auto& w : workers) {
    if (w.get() != except) w->Post([](Worker& worker) { worker.CollectGarbage(); });
  }
  MutexLock lock(spares_mu);
  for (auto& w : spares) {
    if (w.get() != except) w->Post([](Worker& worker) { worker.CollectGarbage(); });
  }
}

Worker* RuntimeCore::SpareWorker(const std::vector<Worker*>& exclude) {
  MutexLock lock(spares_mu);
  if (shutting_down.load()) return nullptr;
  // Spares that lingered without slots have ended: reap them.
  std::erase_if(spares, [this](const std::unique_ptr<Worker>& w) {
    if (!w->exited()) return false;
    w->Stop();
    metrics.spare_workers--;
    return true;
  });
  for (auto& w : spares) {
    if (std::find(exclude.begin(), exclude.end(), w.get()) != exclude.end()) continue;
    if (w->ClaimIfIdle(nullptr)) return w.get();
  }
  int limit = options.fairness.max_spare_workers;
  if (limit < 0) limit = 2 * static_cast<int>(workers.size());
  if (static_cast<int>(spares.size()) >= limit) return nullptr;
  auto worker = std::make_unique<Worker>(this, static_cast<int>(workers.size() + spares.size()),
                                         /*spare=*/true);
  if (!worker->Start(options.worker_stack_bytes)) return nullptr;
  metrics.spare_workers++;
  spares.push_back(std::move(worker));
  return spares.back().get();
}

void RuntimeCore::Test(TestPoint point) {
  if (!has_test_hook.load()) return;
  std::function<void(TestPoint)> hook;
  {
    MutexLock lock(test_hook_mu);
    hook = test_hook;
  }
  if (hook) hook(point);
}

}  // namespace keel::exec
