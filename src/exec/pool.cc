// Pools: admission control, the FIFO and affinity queues, crash-loop
// protection and starvation checks.
#include <algorithm>

#include "abi/bytecall.h"
#include "exec/core.h"

namespace keel {

namespace {

// Spreads affinity keys over slots (keys are often small consecutive ints).
size_t SlotForKey(uint64_t key, size_t slots) {
  key ^= key >> 33;
  key *= 0xff51afd7ed558ccdULL;
  key ^= key >> 33;
  return static_cast<size_t>(key % slots);
}

std::string ModuleLabel(const Module& module) {
  return module.name().empty() ? "module" : "module '" + module.name() + "'";
}

}  // namespace

PoolImpl::PoolImpl(std::shared_ptr<exec::RuntimeCore> core, std::shared_ptr<const Module> module,
                   PoolOptions options, std::vector<exec::Worker*> slot_workers)
    : core_(std::move(core)),
      module_(std::move(module)),
      options_(std::move(options)),
      slot_workers_(std::move(slot_workers)),
      affinity_live_(new std::atomic<int64_t>[slot_workers_.size()]),
      slot_ready_(new std::atomic<bool>[slot_workers_.size()]) {
  for (size_t i = 0; i < slot_workers_.size(); ++i) {
    affinity_live_[i] = 0;
    slot_ready_[i] = false;
  }
  for (exec::Worker* w : slot_workers_) {
    if (std::find(workers_.begin(), workers_.end(), w) == workers_.end()) workers_.push_back(w);
  }
  MutexLock lock(mu_);
  affinity_queues_.resize(slot_workers_.size());
}

std::string PoolImpl::QuarantineMessage(Clock::time_point now) const {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(quarantined_until_ - now);
  return ModuleLabel(*module_) + " is quarantined for " + std::to_string(left.count()) +
         " ms more after " + std::to_string(consecutive_failures_) +
         " consecutive instantiation failures; last: " + quarantine_reason_;
}

// Admission of one call at `now`: the queue bound and the quarantine. True
// when this call ends a quarantine's backoff (the slots must try again).
Result<bool> PoolImpl::Admit(Clock::time_point now) {
  exec::Metrics& metrics = core_->metrics;
  if (core_->shutting_down.load()) {
    metrics.rejected_shutting_down++;
    return MakeError(ErrorCode::kShuttingDown, "the runtime is shutting down");
  }
  if (closed_.load()) {
    return MakeError(ErrorCode::kFailedPrecondition, "the pool of " + ModuleLabel(*module_) + " is closed");
  }
  if (now < quarantined_until_) {
    metrics.rejected_unavailable++;
    return MakeError(ErrorCode::kUnavailable, QuarantineMessage(now));
  }
  if (static_cast<size_t>(total_live_.load()) >= options_.max_queue) {
    metrics.rejected_overloaded++;
    return MakeError(ErrorCode::kOverloaded, "the queue of " + ModuleLabel(*module_) + " is full (" +
                                                 std::to_string(options_.max_queue) + " calls)");
  }
  // The backoff is over: this call is what lets the slots try again.
  if (in_quarantine_ && !retry_permitted_) {
    retry_permitted_ = true;
    return true;
  }
  return false;
}

void PoolImpl::Enqueue(const std::shared_ptr<internal::CallRecord>& record) {
  // Withdrawn calls stay in their deque until popped; sweep them when they
  // pile up (e.g. behind a long call), so queue memory stays bounded by
  // max_queue on every path.
  if (entries_ >= 2 * options_.max_queue + 64) SweepWithdrawn();
  if (record->affinity_slot >= 0) {
    affinity_queues_[record->affinity_slot].push_back(record);
    affinity_live_[record->affinity_slot]++;
  } else {
    shared_queue_.push_back(record);
    shared_live_++;
  }
  entries_++;
  total_live_++;
}

void PoolImpl::SweepWithdrawn() {
  auto withdrawn = [](const auto& r) { return r->state.load() != CallState::kQueued; };
  entries_ = 0;
  std::erase_if(shared_queue_, withdrawn);
  entries_ += shared_queue_.size();
  for (auto& queue : affinity_queues_) {
    std::erase_if(queue, withdrawn);
    entries_ += queue.size();
  }
}

Result<Call> PoolImpl::Submit(std::shared_ptr<internal::CallRecord> record,
                              const CallOptions& options) {
  exec::Metrics& metrics = core_->metrics;
  Clock::time_point now = Clock::now();
  std::chrono::nanoseconds timeout = options.timeout.count() > 0
                                         ? options.timeout
                                         : std::chrono::nanoseconds(options_.default_timeout);
  Clock::time_point deadline = Clock::time_point::max();
  if (timeout.count() > 0) deadline = now + std::min(timeout, std::chrono::nanoseconds(Clock::time_point::max() - now));
  if (options.deadline) deadline = std::min(deadline, *options.deadline);
  if (deadline <= now) {
    metrics.rejected_deadline++;
    return MakeError(ErrorCode::kDeadlineExceeded, "the call's deadline has already passed");
  }
  record->id = core_->next_call_id.fetch_add(1);
  record->submitted = now;
  record->deadline = deadline;
  record->pool = shared_from_this();
  record->context = options.context;
  if (options.affinity_key) record->affinity_slot = AffinitySlot(*options.affinity_key);
  bool retry = false;
  {
    MutexLock lock(mu_);
    auto admitted = Admit(now);
    if (!admitted) return MakeError(admitted.error());
    retry = *admitted;
    Enqueue(record);
  }
  // No slot has an instance to claim a worker for: wake them all to build.
  if (retry) {
    for (exec::Worker* w : workers_) w->Wake();
  }
  metrics.submitted++;
  metrics.queued++;
  core_->watchdog->Watch(record);
  if (options.stop_token.stop_possible()) {
    std::weak_ptr<internal::CallRecord> weak = record;
    record->stop_callback.emplace(options.stop_token, std::function<void()>([weak] {
                                    if (auto r = weak.lock()) r->pool->core().Cancel(r);
                                  }));
  }
  if (!Notify(record->affinity_slot) && record->affinity_slot < 0) {
    ArmStarvationCheck(core_->options.fairness.starvation_delay);
  }
  return internal::CallAccess::Make(std::move(record));
}

// Claiming an idle worker means the next submit picks another, so N calls
// reach N idle workers; the claimed worker serves this pool first.
bool PoolImpl::Notify(int slot_no) {
  if (slot_no >= 0) return slot_workers_[slot_no]->ClaimIfIdle(this);
  for (size_t i = 0; i < slot_workers_.size(); ++i) {
    if (slot_ready_[i].load() && slot_workers_[i]->ClaimIfIdle(this)) return true;
  }
  MutexLock lock(mu_);
  for (exec::Worker* w : temporary_workers_) {
    if (w->ClaimIfIdle(this)) return true;
  }
  return false;
}

void PoolImpl::ArmStarvationCheck(std::chrono::milliseconds delay) {
  {
    MutexLock lock(mu_);
    if (starvation_check_armed_ || closed_.load()) return;
    starvation_check_armed_ = true;
  }
  core_->watchdog->WatchPool(Clock::now() + delay, weak_from_this());
}

// Our instances whose workers have run another pool's call since before
// `held_since`: those instances cannot serve our queue.
size_t PoolImpl::BlockedInstances(Clock::time_point held_since) const {
  size_t blocked = 0;
  for (exec::Worker* w : slot_workers_) {
    const PoolImpl* running = w->running_pool();
    if (running != nullptr && running != this && w->running_since() <= held_since) blocked++;
  }
  return blocked;
}

// Temporary instances that can serve us now: their spare is not busy with
// another pool's call (a spare may host several pools).
size_t PoolImpl::UsableTemporaries() const {
  size_t usable = 0;
  for (exec::Worker* w : temporary_workers_) {
    const PoolImpl* running = w->running_pool();
    if (running == nullptr || running == this) usable++;
  }
  return usable;
}

Clock::time_point PoolImpl::OldestSharedSubmit() const {
  for (const auto& r : shared_queue_) {
    if (r->state.load() == CallState::kQueued) return r->submitted;
  }
  return Clock::time_point::max();
}

void PoolImpl::CheckStarvation() {
  const auto delay = core_->options.fairness.starvation_delay;
  Clock::time_point now = Clock::now();
  std::vector<exec::Worker*> ours;
  {
    MutexLock lock(mu_);
    starvation_check_armed_ = false;
    if (closed_.load() || shared_live_.load() == 0 || now < quarantined_until_) return;
    // Calls that have not waited long yet: look again when they have.
    Clock::time_point oldest = OldestSharedSubmit();
    if (oldest == Clock::time_point::max()) return;
    if (now - oldest < delay) {
      lock.Unlock();
      ArmStarvationCheck(std::chrono::duration_cast<std::chrono::milliseconds>(oldest + delay - now) +
                         std::chrono::milliseconds(1));
      return;
    }
    // Only long calls of other pools count: under ordinary mixed load
    // every worker runs some other pool's short call now and then.
    if (UsableTemporaries() >= BlockedInstances(now - delay)) return;
    ours = temporary_workers_;
  }
  exec::Worker* spare = core_->SpareWorker(ours);
  if (!spare) {
    core_->metrics.spare_denied++;
    // At the limit: try again later, while calls still wait.
    ArmStarvationCheck(4 * delay);
    return;
  }
  {
    MutexLock lock(mu_);
    if (closed_.load()) return;  // the claimed spare just goes idle again
    temporary_workers_.push_back(spare);
  }
  core_->metrics.spare_grants++;
  spare->Post([self = shared_from_this()](exec::Worker& w) { w.AddSlot(self, -1); });
  // Still waiting after this one is up? Look again.
  ArmStarvationCheck(delay);
}

void PoolImpl::OnTemporarySlotGone(exec::Worker* worker) {
  MutexLock lock(mu_);
  auto it = std::find(temporary_workers_.begin(), temporary_workers_.end(), worker);
  if (it != temporary_workers_.end()) temporary_workers_.erase(it);
}

std::shared_ptr<internal::CallRecord> PoolImpl::Pop(int slot_no) {
  MutexLock lock(mu_);
  auto take = [this](std::deque<std::shared_ptr<internal::CallRecord>>& queue) REQUIRES(mu_) {
    while (!queue.empty()) {
      auto record = std::move(queue.front());
      queue.pop_front();
      entries_--;
      if (record->state.load() == CallState::kQueued) return record;
    }
    return std::shared_ptr<internal::CallRecord>();
  };
  if (slot_no >= 0) {
    if (auto record = take(affinity_queues_[slot_no])) return record;
  }
  return take(shared_queue_);
}

bool PoolImpl::HasWork(int slot_no) const {
  return shared_live_.load() > 0 || (slot_no >= 0 && affinity_live_[slot_no].load() > 0);
}

void PoolImpl::OnDequeued(const internal::CallRecord& record) {
  if (record.affinity_slot >= 0) {
    affinity_live_[record.affinity_slot]--;
  } else {
    shared_live_--;
  }
  total_live_--;
  core_->metrics.queued--;
}

void PoolImpl::FailQueued(const Error& error, exec::Cause cause) {
  std::vector<std::shared_ptr<internal::CallRecord>> records;
  {
    MutexLock lock(mu_);
    for (auto& r : shared_queue_) records.push_back(std::move(r));
    shared_queue_.clear();
    for (auto& queue : affinity_queues_) {
      for (auto& r : queue) records.push_back(std::move(r));
      queue.clear();
    }
    entries_ = 0;
  }
  for (auto& r : records) {
    if (core_->Withdraw(r)) core_->Resolve(r, tl::unexpected(error), cause);
  }
}

void PoolImpl::OnInstantiated() {
  MutexLock lock(mu_);
  consecutive_failures_ = 0;
  backoff_ = std::chrono::milliseconds(0);
  quarantined_until_ = {};
  in_quarantine_ = false;
  retry_permitted_ = false;
  quarantine_reason_.clear();
}

void PoolImpl::OnInstantiationFailed(const Error& error) {
  core_->metrics.instantiation_failures++;
  bool quarantine = false;
  std::string reason;
  {
    MutexLock lock(mu_);
    ++consecutive_failures_;
    quarantine_reason_ = error.ToString();
    Clock::time_point now = Clock::now();
    if (consecutive_failures_ >= options_.quarantine.failures && now >= quarantined_until_) {
      backoff_ = backoff_.count() == 0
                     ? options_.quarantine.initial_backoff
                     : std::min(backoff_ * 2, options_.quarantine.max_backoff);
      quarantined_until_ = now + backoff_;
      in_quarantine_ = true;
      retry_permitted_ = false;
      quarantine = true;
      reason = ModuleLabel(*module_) + " is quarantined after " +
               std::to_string(consecutive_failures_) +
               " consecutive instantiation failures; last: " + quarantine_reason_;
    }
  }
  if (quarantine) {
    core_->metrics.quarantines++;
    FailQueued(Error(ErrorCode::kUnavailable, reason), exec::Cause::kUnavailable);
  }
}

bool PoolImpl::MayInstantiate(Clock::time_point now) const {
  MutexLock lock(mu_);
  return in_quarantine_ ? retry_permitted_ && now >= quarantined_until_ : true;
}

Clock::time_point PoolImpl::NextAttempt() const {
  MutexLock lock(mu_);
  return in_quarantine_ && !retry_permitted_ ? Clock::time_point::max() : quarantined_until_;
}

std::vector<exec::Worker*> PoolImpl::AllWorkers() const {
  std::vector<exec::Worker*> all = workers_;
  MutexLock lock(mu_);
  for (exec::Worker* w : temporary_workers_) {
    if (std::find(all.begin(), all.end(), w) == all.end()) all.push_back(w);
  }
  return all;
}

void PoolImpl::Close() {
  if (closed_.exchange(true)) return;
  FailQueued(Error(ErrorCode::kCancelled, "the pool was closed before the call started"),
             exec::Cause::kCancelledQueued);
  auto self = shared_from_this();
  for (exec::Worker* w : AllWorkers()) {
    w->Post([self](exec::Worker& worker) { worker.RemovePool(self.get()); });
  }
}

PoolStats PoolImpl::Stats() const {
  PoolStats s;
  s.target_instances = slot_workers_.size();
  s.healthy_instances = static_cast<size_t>(std::max(0, healthy_.load()));
  s.busy_instances = static_cast<size_t>(std::max(0, busy_.load()));
  s.queued = static_cast<size_t>(std::max<int64_t>(0, total_live_.load()));
  MutexLock lock(mu_);
  s.temporary_instances = temporary_workers_.size();
  Clock::time_point now = Clock::now();
  if (now < quarantined_until_) {
    s.quarantined = true;
    s.quarantine_reason = quarantine_reason_;
    s.quarantine_remaining =
        std::chrono::duration_cast<std::chrono::milliseconds>(quarantined_until_ - now);
  }
  return s;
}

int PoolImpl::AffinitySlot(uint64_t key) const {
  return static_cast<int>(SlotForKey(key, slot_workers_.size()));
}

size_t PoolImpl::QueueEntries() const {
  MutexLock lock(mu_);
  size_t n = shared_queue_.size();
  for (const auto& queue : affinity_queues_) n += queue.size();
  return n;
}

// --- Pool (the public handle) ---------------------------------------------------

Pool::~Pool() { impl_->Close(); }

Result<Call> Pool::Submit(std::string_view export_name, std::vector<Value> args,
                          const CallOptions& options) {
  const Module& module = *impl_->module();
  auto func = engine::LookupFunc(internal::ModuleAccess::Engine(module)->info(), export_name);
  if (!func) return MakeError(func.error());
  const FuncType& type = *func->type;
  if (args.size() != type.params.size()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "export '" + std::string(export_name) + "' takes " +
                         std::to_string(type.params.size()) + " argument(s) " + type.ToString() +
                         ", got " + std::to_string(args.size()));
  }
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i].type() != type.params[i]) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "export '" + std::string(export_name) + "' argument " +
                           std::to_string(i + 1) + " is " + std::string(ToString(type.params[i])) +
                           ", got " + std::string(ToString(args[i].type())));
    }
  }
  auto record = std::make_shared<internal::CallRecord>();
  record->export_index = func->export_index;
  record->export_name = std::string(export_name);
  record->args = std::move(args);
  return impl_->Submit(std::move(record), options);
}

Result<Call> Pool::SubmitBytes(std::string_view export_name, std::vector<uint8_t> input,
                               const CallOptions& options) {
  const Module& module = *impl_->module();
  if (auto ok = abi::CheckByteExport(internal::ModuleAccess::Engine(module)->info(), export_name); !ok) {
    return MakeError(ok.error());
  }
  size_t limit = impl_->options().byte_limits.max_input_bytes;
  if (input.size() > limit) {
    return MakeError(ErrorCode::kResourceExhausted,
                     "input of " + std::to_string(input.size()) + " bytes exceeds the limit of " +
                         std::to_string(limit));
  }
  auto record = std::make_shared<internal::CallRecord>();
  record->bytes = true;
  record->export_name = std::string(export_name);
  record->input = std::move(input);
  return impl_->Submit(std::move(record), options);
}

PoolStats Pool::Stats() const { return impl_->Stats(); }

const std::shared_ptr<const Module>& Pool::module() const { return impl_->module(); }

void Pool::Close() { impl_->Close(); }

}  // namespace keel
