// Callback threads and the deadline watchdog.
#include <algorithm>

#include "exec/core.h"

namespace keel::exec {

namespace {

// The executor whose thread this is, if any.
thread_local const void* tls_executor_state = nullptr;

}  // namespace

CallbackExecutor::CallbackExecutor(int threads) : state_(std::make_shared<State>()) {
  for (int i = 0; i < std::max(1, threads); ++i) {
    threads_.emplace_back([state = state_] { Loop(state); });
  }
}

CallbackExecutor::~CallbackExecutor() { Stop(); }

void CallbackExecutor::Stop() {
  if (stopped_) return;
  stopped_ = true;
  {
    MutexLock lock(state_->mu);
    state_->stop = true;
  }
  state_->cv.SignalAll();
  for (auto& t : threads_) {
    // A callback that shuts the runtime down cannot join its own thread;
    // that thread owns a share of the state and ends after the callback.
    if (t.get_id() == std::this_thread::get_id()) {
      t.detach();
    } else {
      t.join();
    }
  }
}

bool CallbackExecutor::OnOwnThread() const { return tls_executor_state == state_.get(); }

void CallbackExecutor::Post(std::function<void()> fn) {
  {
    MutexLock lock(state_->mu);
    if (!state_->stop) {
      state_->queue.push_back(std::move(fn));
      state_->cv.Signal();
      return;
    }
  }
  Run(*state_, fn);
}

void CallbackExecutor::Run(State& state, std::function<void()>& fn) {
  try {
    fn();
  } catch (...) {
    // A user's callback must not end the process or the callback thread.
    state.exceptions++;
  }
}

void CallbackExecutor::Loop(const std::shared_ptr<State>& state) {
  tls_executor_state = state.get();
  MutexLock lock(state->mu);
  for (;;) {
    while (!state->stop && state->queue.empty()) state->cv.Wait(state->mu);
    if (state->queue.empty()) return;  // stopping and drained: every callback ran
    auto fn = std::move(state->queue.front());
    state->queue.pop_front();
    lock.Unlock();
    Run(*state, fn);
    fn = nullptr;  // whatever it captured goes outside the lock too
    lock.Lock();
  }
}

Watchdog::Watchdog(RuntimeCore* core) : core_(core), thread_([this] { Loop(); }) {}

Watchdog::~Watchdog() { Stop(); }

void Watchdog::Stop() {
  {
    MutexLock lock(mu_);
    if (stop_) return;
    stop_ = true;
  }
  cv_.SignalAll();
  thread_.join();
}

void Watchdog::Watch(const std::shared_ptr<CallRecord>& record) {
  if (record->deadline == Clock::time_point::max()) return;
  Push(Entry{record->deadline, record, nullptr, 0, {}});
}

void Watchdog::WatchTag(Clock::time_point when, std::shared_ptr<engine::Interrupter> interrupter,
                        uint64_t tag) {
  Push(Entry{when, {}, std::move(interrupter), tag, {}});
}

void Watchdog::WatchPool(Clock::time_point when, std::weak_ptr<PoolImpl> pool) {
  Push(Entry{when, {}, nullptr, 0, std::move(pool)});
}

void Watchdog::Push(Entry entry) {
  bool earliest;
  {
    MutexLock lock(mu_);
    earliest = heap_.empty() || entry.when < heap_.front().when;
    heap_.push_back(std::move(entry));
    std::push_heap(heap_.begin(), heap_.end(), std::greater<>());
    if (heap_.size() >= compact_at_) Compact();
  }
  if (earliest) cv_.Signal();
}

// Entries of calls that resolved are dead weight until their deadline; drop
// them when the heap has doubled since the last sweep (amortized O(1)).
void Watchdog::Compact() {
  std::erase_if(heap_, [](const Entry& e) {
    if (e.interrupter || !e.pool.expired()) return false;
    auto record = e.record.lock();
    return !record || record->resolved_flag.load(std::memory_order_acquire);
  });
  std::make_heap(heap_.begin(), heap_.end(), std::greater<>());
  compact_at_ = std::max<size_t>(4096, heap_.size() * 2);
}

void Watchdog::Loop() {
  MutexLock lock(mu_);
  while (!stop_) {
    if (heap_.empty()) {
      cv_.Wait(mu_);
      continue;
    }
    Clock::time_point next = heap_.front().when;
    if (Clock::now() < next) {
      cv_.WaitUntil(mu_, next);
      continue;
    }
    std::pop_heap(heap_.begin(), heap_.end(), std::greater<>());
    Entry entry = std::move(heap_.back());
    heap_.pop_back();
    lock.Unlock();
    Fire(entry);
    entry = Entry{};  // releases what it holds outside the lock
    lock.Lock();
  }
}

void Watchdog::Fire(Entry& entry) {
  if (entry.interrupter) {
    // A slow wake-up of a host function must not delay other deadlines.
    if (auto wake = entry.interrupter->RequestDeferred(entry.tag)) core_->waker->Post(std::move(wake));
    return;
  }
  if (auto pool = entry.pool.lock()) {
    // It may start a spare worker, which takes a while: not on this thread.
    core_->waker->Post([pool = std::move(pool)] { pool->CheckStarvation(); });
    return;
  }
  if (auto record = entry.record.lock()) core_->Expire(record);
}

}  // namespace keel::exec
