// The executor's internals: call records, pools, workers, the deadline
// watchdog and the callback threads. Callers reach workers only through
// pool queues; workers reach callers only through call records and the
// callback threads, never by waiting on them.
#ifndef KEEL_EXEC_CORE_H_
#define KEEL_EXEC_CORE_H_

#include <pthread.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <queue>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "engine/engine.h"
#include "exec/metrics.h"
#include "keel/runtime.h"

namespace keel {

namespace exec {
class Worker;
struct RuntimeCore;
}  // namespace exec

namespace internal {

// One call, shared by its handle, its queue entry, its worker and the
// watchdog. `state` moves only forward; whoever moves it out of kQueued
// owns the queue accounting. The handle resolves exactly once, under `mu`.
struct CallRecord {
  CallId id = 0;
  std::shared_ptr<PoolImpl> pool;
  Clock::time_point submitted;
  Clock::time_point deadline = Clock::time_point::max();

  // The request.
  bool bytes = false;
  uint32_t export_index = 0;
  std::string export_name;
  std::vector<Value> args;
  std::vector<uint8_t> input;
  int affinity_slot = -1;  // slot whose queue holds it; -1: the shared queue

  std::atomic<CallState> state{CallState::kQueued};
  // Set by the worker before the call leaves kQueued.
  std::atomic<uint64_t> engine_tag{0};
  std::atomic<exec::Worker*> worker{nullptr};

  // Resolution.
  std::mutex mu;
  std::condition_variable cv;
  bool resolved = false;                   // guarded by mu
  bool detached = false;                   // guarded by mu
  std::atomic<bool> resolved_flag{false};  // mirrors `resolved` for lock-free reads
  CallResult result;                       // immutable once resolved
  std::vector<std::function<void(const CallResult&)>> callbacks;  // guarded by mu
  // Run by Resolve() itself, on the resolving thread (OnCompleteInline).
  std::vector<std::function<void(const CallResult&)>> inline_callbacks;  // guarded by mu
  std::optional<std::stop_callback<std::function<void()>>> stop_callback;
};

struct CallAccess {
  static Call Make(std::shared_ptr<CallRecord> record) { return Call(std::move(record)); }
};

}  // namespace internal

namespace exec {

using internal::CallRecord;

// Threads that run user callbacks, so that neither workers nor the
// watchdog ever run user code that might block.
class CallbackExecutor {
 public:
  explicit CallbackExecutor(int threads);
  ~CallbackExecutor();
  // Runs everything still queued, then joins. Idempotent.
  void Stop();
  // After Stop(), runs `fn` on the calling thread, so that a callback
  // registered late still runs exactly once.
  void Post(std::function<void()> fn);

 private:
  void Loop();
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

// Fires deadlines: a queued call is withdrawn and resolves
// kDeadlineExceeded; a running one resolves at once and its worker's
// engine is asked to interrupt exactly that call (by tag).
class Watchdog {
 public:
  explicit Watchdog(RuntimeCore* core);
  ~Watchdog();
  void Stop();
  void Watch(const std::shared_ptr<CallRecord>& record);
  // Interrupts `tag` on `interrupter` at `when` (instantiation deadlines).
  void WatchTag(Clock::time_point when, std::shared_ptr<engine::Interrupter> interrupter,
                uint64_t tag);

 private:
  struct Entry {
    Clock::time_point when;
    std::weak_ptr<CallRecord> record;
    std::shared_ptr<engine::Interrupter> interrupter;
    uint64_t tag = 0;
    bool operator>(const Entry& other) const { return when > other.when; }
  };
  void Push(Entry entry);
  void Loop();
  void Fire(Entry& entry);
  void Compact();  // guarded by mu_

  RuntimeCore* core_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Entry> heap_;  // min-heap by `when`
  size_t compact_at_ = 4096;
  bool stop_ = false;
  std::thread thread_;
};

// A place for one instance of a pool on one worker.
struct Slot {
  std::shared_ptr<PoolImpl> pool;
  int slot_no = 0;
  std::unique_ptr<engine::Instance> instance;
  uint64_t calls = 0;
  Clock::time_point last_used;
  bool replacing = false;           // the last instance was poisoned
  Clock::time_point retry_at;       // earliest next instantiation attempt
};

// One OS thread owning an engine context and the instances on it.
class Worker {
 public:
  Worker(RuntimeCore* core, int index);
  ~Worker();
  Result<void> Start(size_t stack_bytes);
  void Stop();   // finishes the current call, drops instances, joins
  void Wake();
  void Post(std::function<void(Worker&)> command);
  bool idle() const { return idle_.load(); }
  int index() const { return index_; }

  // Shutdown: resolves the running call kShuttingDown and interrupts it.
  void InterruptCurrent(const std::string& why);
  std::shared_ptr<engine::Interrupter> interrupter() const;

  // Commands (run on the worker thread).
  void AddSlot(std::shared_ptr<PoolImpl> pool, int slot_no);
  void RemovePool(const PoolImpl* pool);

 private:
  static void* ThreadMain(void* self);
  void Loop();
  bool RunCommands();
  bool RunOneCall(Slot& slot);
  void Execute(Slot& slot, std::shared_ptr<CallRecord> record);
  bool Instantiate(Slot& slot);
  void Retire(Slot& slot);
  bool HasWork() const;
  // Yields the CPU for a short while; true as soon as work comes in.
  bool YieldForWork();
  Clock::time_point Maintenance();

  RuntimeCore* core_;
  int index_;
  pthread_t thread_{};
  bool started_ = false;
  std::unique_ptr<engine::Context> context_;
  std::shared_ptr<engine::Interrupter> interrupter_;  // set before the loop starts
  std::vector<Slot> slots_;  // worker thread only

  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::function<void(Worker&)>> commands_;  // guarded by mu_
  bool wake_ = false;                                  // guarded by mu_
  bool stop_ = false;                                  // guarded by mu_
  std::atomic<bool> has_commands_{false};
  std::atomic<bool> idle_{false};

  std::mutex current_mu_;
  std::shared_ptr<CallRecord> current_;  // the call in the guest, guarded by current_mu_

  std::mutex start_mu_;
  std::condition_variable start_cv_;
  std::optional<Result<void>> start_result_;
};

// State shared by the runtime, its pools and workers. Outlives all of them
// (pools hold it), so a pool used after shutdown fails cleanly.
struct RuntimeCore {
  RuntimeOptions options;
  Metrics metrics;
  std::atomic<bool> shutting_down{false};
  std::atomic<uint64_t> next_call_id{1};
  std::atomic<uint64_t> next_tag{1};
  std::unique_ptr<CallbackExecutor> executor;
  std::unique_ptr<Watchdog> watchdog;
  std::vector<std::unique_ptr<Worker>> workers;
  std::atomic<size_t> next_worker{0};

  std::mutex pools_mu;
  std::vector<std::weak_ptr<PoolImpl>> pools;  // guarded by pools_mu

  // Resolves `record` once with `result`; `detach` marks a caller that left
  // a running call (its real result then goes to the detached sink). False
  // when it had already resolved (then nothing happens). Counts the
  // resolution and runs the completion callbacks.
  // `result` is moved from only on success.
  bool Resolve(const std::shared_ptr<CallRecord>& record, CallResult&& result, Cause cause,
               TrapKind trap = TrapKind::kNone, bool detach = false);
  // Moves a queued call to kWithdrawn; true if this caller did it (and so
  // must resolve it).
  bool Withdraw(const std::shared_ptr<CallRecord>& record);
  CancelOutcome Cancel(const std::shared_ptr<CallRecord>& record);
  // The deadline of `record` passed.
  void Expire(const std::shared_ptr<CallRecord>& record);
  void DeliverDetached(const std::shared_ptr<CallRecord>& record, CallResult actual);
};

}  // namespace exec

// The pool behind a Pool handle.
class PoolImpl : public std::enable_shared_from_this<PoolImpl> {
 public:
  // Slot i of the pool lives on slot_workers[i].
  PoolImpl(std::shared_ptr<exec::RuntimeCore> core, std::shared_ptr<const Module> module,
           PoolOptions options, std::vector<exec::Worker*> slot_workers);

  Result<Call> Submit(std::shared_ptr<internal::CallRecord> record, const CallOptions& options);
  // Next call for `slot_no` (its affinity queue first, then the shared
  // queue), already moved out of the queue; nullptr if none.
  std::shared_ptr<internal::CallRecord> Pop(int slot_no);
  bool HasWork(int slot_no) const;
  // Queue accounting for a call that left kQueued (started or withdrawn);
  // called once, by whoever moved it.
  void OnDequeued(const internal::CallRecord& record);
  // Fails every queued call with `error`/`cause`.
  void FailQueued(const Error& error, exec::Cause cause);

  // Instantiation outcomes, for crash-loop protection.
  void OnInstantiated();
  void OnInstantiationFailed(const Error& error);
  // When the pool's slots may try instantiating next.
  Clock::time_point NextAttempt() const;

  void Close();
  bool closed() const { return closed_.load(); }
  PoolStats Stats() const;

  void SlotHealthy(bool healthy) { healthy_ += healthy ? 1 : -1; }
  void SlotBusy(bool busy) { busy_ += busy ? 1 : -1; }

  const std::shared_ptr<const Module>& module() const { return module_; }
  const PoolOptions& options() const { return options_; }
  exec::RuntimeCore& core() { return *core_; }

 private:
  void NotifyWorkers(int slot_no);
  Result<void> CheckAvailable(Clock::time_point now) const;  // guarded by mu_

  std::shared_ptr<exec::RuntimeCore> core_;
  std::shared_ptr<const Module> module_;
  PoolOptions options_;
  const std::vector<exec::Worker*> slot_workers_;  // immutable
  std::vector<exec::Worker*> workers_;             // distinct slot_workers_; immutable

  mutable std::mutex mu_;
  std::deque<std::shared_ptr<internal::CallRecord>> shared_queue_;                 // guarded by mu_
  std::vector<std::deque<std::shared_ptr<internal::CallRecord>>> affinity_queues_;  // guarded by mu_
  // Calls in kQueued per queue; withdrawn ones may still sit in a deque.
  std::atomic<int64_t> shared_live_{0};
  std::unique_ptr<std::atomic<int64_t>[]> affinity_live_;
  std::atomic<int64_t> total_live_{0};
  std::atomic<bool> closed_{false};

  // Crash-loop protection, guarded by mu_.
  int consecutive_failures_ = 0;
  std::chrono::milliseconds backoff_{0};
  Clock::time_point quarantined_until_{};
  std::string quarantine_reason_;

  std::atomic<int> healthy_{0};
  std::atomic<int> busy_{0};
};

}  // namespace keel

#endif  // KEEL_EXEC_CORE_H_
