// The call handle and the resolution rules every path shares.
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

const CallResult& Call::Wait() const {
  static const CallResult kInvalid =
      tl::unexpected(Error(ErrorCode::kFailedPrecondition, "invalid call handle"));
  if (!record_) return kInvalid;
  if (!ready()) {
    std::unique_lock<std::mutex> lock(record_->mu);
    record_->cv.wait(lock, [&] { return record_->resolved; });
  }
  return record_->result;
}

const CallResult* Call::WaitFor(std::chrono::nanoseconds timeout) const {
  if (!record_) return &Wait();
  if (!ready()) {
    std::unique_lock<std::mutex> lock(record_->mu);
    if (!record_->cv.wait_for(lock, timeout, [&] { return record_->resolved; })) return nullptr;
  }
  return &record_->result;
}

void Call::OnComplete(std::function<void(const CallResult&)> fn) const {
  if (!record_) {
    fn(Wait());
    return;
  }
  {
    std::lock_guard<std::mutex> lock(record_->mu);
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
    std::lock_guard<std::mutex> lock(record_->mu);
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
  {
    std::lock_guard<std::mutex> lock(record->mu);
    if (record->resolved) return false;
    record->resolved = true;
    record->detached = detach;
    record->result = std::move(result);
    callbacks.swap(record->callbacks);
    inline_callbacks.swap(record->inline_callbacks);
    // Counted before anyone can see the resolution, so that a caller that
    // wakes up finds the metrics consistent.
    metrics.CountResolution(cause, trap);
    metrics.end_to_end.Record(Clock::now() - record->submitted);
    record->resolved_flag.store(true, std::memory_order_release);
  }
  record->cv.notify_all();
  for (auto& fn : inline_callbacks) fn(record->result);
  for (auto& fn : callbacks) {
    executor->Post([record, fn = std::move(fn)] { fn(record->result); });
  }
  return true;
}

bool RuntimeCore::Withdraw(const std::shared_ptr<CallRecord>& record) {
  CallState expected = CallState::kQueued;
  if (!record->state.compare_exchange_strong(expected, CallState::kWithdrawn)) return false;
  record->pool->OnDequeued(*record);
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
  if (Worker* worker = record->worker.load()) worker->interrupter()->Request(record->engine_tag.load());
}

void RuntimeCore::DeliverDetached(const std::shared_ptr<CallRecord>& record, CallResult actual) {
  bool detached;
  {
    std::lock_guard<std::mutex> lock(record->mu);
    detached = record->detached;
  }
  if (!detached || !options.detached_sink) return;
  metrics.detached_results++;
  executor->Post([sink = options.detached_sink, id = record->id,
                    actual = std::move(actual)] { sink(id, actual); });
}

}  // namespace keel::exec
