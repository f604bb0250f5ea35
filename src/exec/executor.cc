// Callback threads and the deadline watchdog.
#include <algorithm>

#include "exec/core.h"

namespace keel::exec {

CallbackExecutor::CallbackExecutor(int threads) {
  for (int i = 0; i < std::max(1, threads); ++i) threads_.emplace_back([this] { Loop(); });
}

CallbackExecutor::~CallbackExecutor() { Stop(); }

void CallbackExecutor::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_) return;
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
}

void CallbackExecutor::Post(std::function<void()> fn) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stop_) {
      queue_.push_back(std::move(fn));
      cv_.notify_one();
      return;
    }
  }
  fn();
}

void CallbackExecutor::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping and drained: every callback ran
    auto fn = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    fn();
    lock.lock();
  }
}

Watchdog::Watchdog(RuntimeCore* core) : core_(core), thread_([this] { Loop(); }) {}

Watchdog::~Watchdog() { Stop(); }

void Watchdog::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_) return;
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void Watchdog::Watch(const std::shared_ptr<CallRecord>& record) {
  if (record->deadline == Clock::time_point::max()) return;
  Push(Entry{record->deadline, record, nullptr, 0});
}

void Watchdog::WatchTag(Clock::time_point when, std::shared_ptr<engine::Interrupter> interrupter,
                        uint64_t tag) {
  Push(Entry{when, {}, std::move(interrupter), tag});
}

void Watchdog::Push(Entry entry) {
  bool earliest;
  {
    std::lock_guard<std::mutex> lock(mu_);
    earliest = heap_.empty() || entry.when < heap_.front().when;
    heap_.push_back(std::move(entry));
    std::push_heap(heap_.begin(), heap_.end(), std::greater<>());
    if (heap_.size() >= compact_at_) Compact();
  }
  if (earliest) cv_.notify_one();
}

// Entries of calls that resolved are dead weight until their deadline; drop
// them when the heap has doubled since the last sweep (amortized O(1)).
void Watchdog::Compact() {
  std::erase_if(heap_, [](const Entry& e) {
    if (e.interrupter) return false;
    auto record = e.record.lock();
    return !record || record->resolved_flag.load(std::memory_order_acquire);
  });
  std::make_heap(heap_.begin(), heap_.end(), std::greater<>());
  compact_at_ = std::max<size_t>(4096, heap_.size() * 2);
}

void Watchdog::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    if (heap_.empty()) {
      cv_.wait(lock);
      continue;
    }
    Clock::time_point next = heap_.front().when;
    if (Clock::now() < next) {
      cv_.wait_until(lock, next);
      continue;
    }
    std::pop_heap(heap_.begin(), heap_.end(), std::greater<>());
    Entry entry = std::move(heap_.back());
    heap_.pop_back();
    lock.unlock();
    Fire(entry);
    lock.lock();
  }
}

void Watchdog::Fire(Entry& entry) {
  if (entry.interrupter) {
    entry.interrupter->Request(entry.tag);
    return;
  }
  if (auto record = entry.record.lock()) core_->Expire(record);
}

}  // namespace keel::exec
