// Pools: admission control, the FIFO and affinity queues, and crash-loop
// protection.
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
      affinity_queues_(slot_workers_.size()),
      affinity_live_(new std::atomic<int64_t>[slot_workers_.size()]) {
  for (size_t i = 0; i < slot_workers_.size(); ++i) affinity_live_[i] = 0;
  for (exec::Worker* w : slot_workers_) {
    if (std::find(workers_.begin(), workers_.end(), w) == workers_.end()) workers_.push_back(w);
  }
}

Result<void> PoolImpl::CheckAvailable(Clock::time_point now) const {
  if (now < quarantined_until_) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(quarantined_until_ - now);
    return MakeError(ErrorCode::kUnavailable,
                     ModuleLabel(*module_) + " is quarantined for " + std::to_string(left.count()) +
                         " ms more after " + std::to_string(consecutive_failures_) +
                         " consecutive instantiation failures; last: " + quarantine_reason_);
  }
  return {};
}

Result<Call> PoolImpl::Submit(std::shared_ptr<internal::CallRecord> record,
                              const CallOptions& options) {
  exec::Metrics& metrics = core_->metrics;
  Clock::time_point now = Clock::now();
  std::chrono::nanoseconds timeout = options.timeout.count() > 0
                                         ? options.timeout
                                         : std::chrono::nanoseconds(options_.default_timeout);
  Clock::time_point deadline = Clock::time_point::max();
  if (timeout.count() > 0) deadline = now + timeout;
  if (options.deadline) deadline = std::min(deadline, *options.deadline);
  if (deadline <= now) {
    metrics.rejected_deadline++;
    return MakeError(ErrorCode::kDeadlineExceeded, "the call's deadline has already passed");
  }
  record->id = core_->next_call_id.fetch_add(1);
  record->submitted = now;
  record->deadline = deadline;
  record->pool = shared_from_this();
  if (options.affinity_key) {
    record->affinity_slot = static_cast<int>(SlotForKey(*options.affinity_key, slot_workers_.size()));
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (core_->shutting_down.load()) {
      metrics.rejected_shutting_down++;
      return MakeError(ErrorCode::kShuttingDown, "the runtime is shutting down");
    }
    if (closed_.load()) {
      return MakeError(ErrorCode::kFailedPrecondition, "the pool of " + ModuleLabel(*module_) + " is closed");
    }
    if (auto available = CheckAvailable(now); !available) {
      metrics.rejected_unavailable++;
      return MakeError(available.error());
    }
    if (static_cast<size_t>(total_live_.load()) >= options_.max_queue) {
      metrics.rejected_overloaded++;
      return MakeError(ErrorCode::kOverloaded,
                       "the queue of " + ModuleLabel(*module_) + " is full (" +
                           std::to_string(options_.max_queue) + " calls)");
    }
    if (record->affinity_slot >= 0) {
      affinity_queues_[record->affinity_slot].push_back(record);
      affinity_live_[record->affinity_slot]++;
    } else {
      // Withdrawn calls stay in the deque until popped; sweep them if they
      // pile up behind a long-running call.
      if (shared_queue_.size() > 2 * options_.max_queue + 64) {
        std::erase_if(shared_queue_, [](const auto& r) { return r->state.load() != CallState::kQueued; });
      }
      shared_queue_.push_back(record);
      shared_live_++;
    }
    total_live_++;
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
  NotifyWorkers(record->affinity_slot);
  return internal::CallAccess::Make(std::move(record));
}

void PoolImpl::NotifyWorkers(int slot_no) {
  if (slot_no >= 0) {
    exec::Worker* w = slot_workers_[slot_no];
    if (w->idle()) w->Wake();
    return;
  }
  for (exec::Worker* w : workers_) {
    if (w->idle()) {
      w->Wake();
      return;
    }
  }
}

std::shared_ptr<internal::CallRecord> PoolImpl::Pop(int slot_no) {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto* queue : {&affinity_queues_[slot_no], &shared_queue_}) {
    while (!queue->empty()) {
      auto record = std::move(queue->front());
      queue->pop_front();
      if (record->state.load() == CallState::kQueued) return record;
    }
  }
  return nullptr;
}

bool PoolImpl::HasWork(int slot_no) const {
  return shared_live_.load() > 0 || affinity_live_[slot_no].load() > 0;
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
    std::lock_guard<std::mutex> lock(mu_);
    for (auto* queue : [this] {
           std::vector<std::deque<std::shared_ptr<internal::CallRecord>>*> all{&shared_queue_};
           for (auto& q : affinity_queues_) all.push_back(&q);
           return all;
         }()) {
      for (auto& r : *queue) records.push_back(std::move(r));
      queue->clear();
    }
  }
  for (auto& r : records) {
    if (core_->Withdraw(r)) core_->Resolve(r, tl::unexpected(error), cause);
  }
}

void PoolImpl::OnInstantiated() {
  std::lock_guard<std::mutex> lock(mu_);
  consecutive_failures_ = 0;
  backoff_ = std::chrono::milliseconds(0);
  quarantined_until_ = {};
  quarantine_reason_.clear();
}

void PoolImpl::OnInstantiationFailed(const Error& error) {
  core_->metrics.instantiation_failures++;
  bool quarantine = false;
  std::string reason;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++consecutive_failures_;
    quarantine_reason_ = error.ToString();
    Clock::time_point now = Clock::now();
    if (consecutive_failures_ >= options_.quarantine.failures && now >= quarantined_until_) {
      backoff_ = backoff_.count() == 0
                     ? options_.quarantine.initial_backoff
                     : std::min(backoff_ * 2, options_.quarantine.max_backoff);
      quarantined_until_ = now + backoff_;
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

Clock::time_point PoolImpl::NextAttempt() const {
  std::lock_guard<std::mutex> lock(mu_);
  return quarantined_until_;
}

void PoolImpl::Close() {
  if (closed_.exchange(true)) return;
  FailQueued(Error(ErrorCode::kCancelled, "the pool was closed before the call started"),
             exec::Cause::kCancelledQueued);
  auto self = shared_from_this();
  for (exec::Worker* w : workers_) {
    w->Post([self](exec::Worker& worker) { worker.RemovePool(self.get()); });
  }
}

PoolStats PoolImpl::Stats() const {
  PoolStats s;
  s.target_instances = slot_workers_.size();
  s.healthy_instances = static_cast<size_t>(std::max(0, healthy_.load()));
  s.busy_instances = static_cast<size_t>(std::max(0, busy_.load()));
  s.queued = static_cast<size_t>(std::max<int64_t>(0, total_live_.load()));
  std::lock_guard<std::mutex> lock(mu_);
  Clock::time_point now = Clock::now();
  if (now < quarantined_until_) {
    s.quarantined = true;
    s.quarantine_reason = quarantine_reason_;
    s.quarantine_remaining =
        std::chrono::duration_cast<std::chrono::milliseconds>(quarantined_until_ - now);
  }
  return s;
}

// --- Pool (the public handle) ---------------------------------------------------

Pool::~Pool() = default;

Result<Call> Pool::Submit(std::string_view export_name, std::vector<Value> args,
                          const CallOptions& options) {
  const Module& module = *impl_->module();
  auto func = engine::LookupFunc(module.engine_module()->info(), export_name);
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
  if (auto ok = abi::CheckByteExport(module.engine_module()->info(), export_name); !ok) {
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
