// The executor's internals: call records, pools, workers, the deadline
// watchdog and the callback threads. Callers reach workers only through
// pool queues; workers reach callers only through call records and the
// callback threads, never by waiting on them.
#ifndef KEEL_EXEC_CORE_H_
#define KEEL_EXEC_CORE_H_

#include <pthread.h>

#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "base/mutex.h"
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
  HostContext context;     // CallOptions::context, for its host functions

  std::atomic<CallState> state{CallState::kQueued};
  // Set by the worker before the call leaves kQueued.
  std::atomic<uint64_t> engine_tag{0};
  std::atomic<exec::Worker*> worker{nullptr};
  std::atomic<bool> aborted{false};  // Abort() interrupted it

  // Resolution.
  Mutex mu;
  CondVar cv;
  bool resolved GUARDED_BY(mu) = false;
  bool detached GUARDED_BY(mu) = false;
  // Call::Detach() let the handle go: a result no callback takes goes to
  // the detached sink.
  bool released GUARDED_BY(mu) = false;
  std::atomic<bool> resolved_flag{false};  // mirrors `resolved` for lock-free reads
  // Written once under `mu` before `resolved_flag` is set; immutable after.
  CallResult result;
  std::vector<std::function<void(const CallResult&)>> callbacks GUARDED_BY(mu);
  // Run by Resolve() itself, on the resolving thread (OnCompleteInline).
  std::vector<std::function<void(const CallResult&)>> inline_callbacks GUARDED_BY(mu);
  std::optional<std::stop_callback<std::function<void()>>> stop_callback;
};

struct CallAccess {
  static Call Make(std::shared_ptr<CallRecord> record) { return Call(std::move(record)); }
  static const std::shared_ptr<CallRecord>& Record(const Call& call) { return call.record_; }
};

struct RuntimeAccess {
  static std::shared_ptr<exec::RuntimeCore> Core(const Runtime& runtime);
  static const std::shared_ptr<PoolImpl>& Impl(const Pool& pool) { return pool.impl_; }
};

// What a Module hides from its users: the engine's module.
struct CompiledModule {
  std::shared_ptr<const engine::Module> engine;
  EngineKind engine_kind = EngineKind::kSpiderMonkey;  // whose code it is
};

struct ModuleAccess {
  static const std::shared_ptr<const engine::Module>& Engine(const Module& module) {
    return module.compiled_->engine;
  }
};

}  // namespace internal

namespace exec {

using internal::CallRecord;

// Makes `context` the one Caller::call_context() returns on this thread
// while the guest runs (host functions run on the thread that called the
// guest, one call at a time).
class ScopedCallContext {
 public:
  explicit ScopedCallContext(const HostContext& context);
  ~ScopedCallContext();
  ScopedCallContext(const ScopedCallContext&) = delete;
  ScopedCallContext& operator=(const ScopedCallContext&) = delete;

 private:
  const HostContext* previous_;
};

// Points in the executor where a test can hold a thread (exec/testing.h).
enum class TestPoint : uint8_t {
  kDequeued,     // a worker took a call off a queue and checked for shutdown
  kInterrupted,  // Shutdown() has interrupted what was running
  kClaimed,      // a worker woke up for a submit's claim, before it looks for calls
};

// Threads that run user code, so that neither workers nor the watchdog
// ever run code that might block: completion callbacks and the detached
// sink on the callback threads; host functions' interrupt wake-ups and
// starvation checks on a separate one-thread executor (the waker), so a
// slow callback delays neither. A task that throws is caught and counted.
class CallbackExecutor {
 public:
  explicit CallbackExecutor(int threads);
  ~CallbackExecutor();
  // Runs everything still queued, then joins. Idempotent. Called from one
  // of its own threads (a callback that shuts the runtime down), it joins
  // the others and lets that one end after its callback returns.
  void Stop();
  // Queues `fn`. After Stop(), runs it on the calling thread (call.h states
  // the rule), so a callback registered late still runs exactly once.
  void Post(std::function<void()> fn);
  // True on one of this executor's threads.
  bool OnOwnThread() const;
  uint64_t exceptions() const { return state_->exceptions.load(); }

 private:
  // Shared with the threads, so that one detached by Stop() outlives us.
  struct State {
    Mutex mu;
    CondVar cv;
    std::deque<std::function<void()>> queue GUARDED_BY(mu);
    bool stop GUARDED_BY(mu) = false;
    std::atomic<uint64_t> exceptions{0};
  };
  static void Loop(const std::shared_ptr<State>& state);
  static void Run(State& state, std::function<void()>& fn);

  std::shared_ptr<State> state_;
  std::vector<std::thread> threads_;
  bool stopped_ = false;
};

// Fires deadlines: a queued call is withdrawn and resolves
// kDeadlineExceeded; a running one resolves at once and its worker's
// engine is asked to interrupt exactly that call (by tag). Also runs the
// pools' starvation checks (see PoolImpl::CheckStarvation).
class Watchdog {
 public:
  explicit Watchdog(RuntimeCore* core);
  ~Watchdog();
  void Stop();
  void Watch(const std::shared_ptr<CallRecord>& record);
  // Interrupts `tag` on `interrupter` at `when` (instantiation deadlines).
  void WatchTag(Clock::time_point when, std::shared_ptr<engine::Interrupter> interrupter,
                uint64_t tag);
  // Runs pool->CheckStarvation() at `when`.
  void WatchPool(Clock::time_point when, std::weak_ptr<PoolImpl> pool);

 private:
  struct Entry {
    Clock::time_point when;
    std::weak_ptr<CallRecord> record;
    std::shared_ptr<engine::Interrupter> interrupter;
    uint64_t tag = 0;
    std::weak_ptr<PoolImpl> pool;
    bool operator>(const Entry& other) const { return when > other.when; }
  };
  void Push(Entry entry) EXCLUDES(mu_);
  void Loop() EXCLUDES(mu_);
  void Fire(Entry& entry);
  void Compact() REQUIRES(mu_);

  RuntimeCore* core_;
  Mutex mu_;
  CondVar cv_;
  std::vector<Entry> heap_ GUARDED_BY(mu_);  // min-heap by `when`
  size_t compact_at_ GUARDED_BY(mu_) = 4096;
  bool stop_ GUARDED_BY(mu_) = false;
  std::thread thread_;
};

// A place for one instance of a pool on one worker. A temporary slot (on a
// spare worker, serving only the shared queue) has slot_no -1.
struct Slot {
  std::shared_ptr<PoolImpl> pool;
  int slot_no = 0;
  std::unique_ptr<engine::Instance> instance;
  uint64_t calls = 0;
  Clock::time_point last_used;
  bool replacing = false;      // the last instance was poisoned
  Clock::time_point retry_at;  // earliest next instantiation attempt
  bool dropped = false;        // a temporary slot given up; erased between passes
  bool temporary() const { return slot_no < 0; }
};

// One OS thread owning an engine context and the instances on it. A spare
// worker is started when a pool's calls wait although it has free
// instances, because every worker hosting them is held by other pools'
// calls; it serves such pools through temporary slots.
class Worker {
 public:
  Worker(RuntimeCore* core, int index, bool spare);
  ~Worker();
  // Starts the thread and waits until its engine context is ready.
  Result<void> Start(size_t stack_bytes);
  void Stop();  // finishes the current call, drops instances, joins
  void Wake();
  // Claims an idle worker for new work of `pool`: true (and the worker is
  // woken, and serves `pool` first) if it was idle and nobody claimed it
  // since it went idle.
  bool ClaimIfIdle(const PoolImpl* pool) EXCLUDES(mu_);
  void Post(std::function<void(Worker&)> command) EXCLUDES(mu_);
  bool idle() const { return idle_.load(); }
  // The pool whose call runs here now, if any, and since when.
  const PoolImpl* running_pool() const { return running_pool_.load(); }
  Clock::time_point running_since() const {
    return Clock::time_point(Clock::duration(running_since_.load()));
  }
  bool spare() const { return spare_; }
  // A spare worker that ended after lingering without slots.
  bool exited() const { return exited_.load(); }
  int index() const { return index_; }

  // Shutdown: resolves the running call kShuttingDown and interrupts it,
  // and interrupts an instantiation in progress.
  void InterruptCurrent(const std::string& why) EXCLUDES(current_mu_);
  // Abort of `record` if it runs here: interrupts its tag.
  std::shared_ptr<engine::Interrupter> interrupter() const;

  // Commands (run on the worker thread).
  void AddSlot(std::shared_ptr<PoolImpl> pool, int slot_no);
  void RemovePool(const PoolImpl* pool);
  void CollectGarbage();

 private:
  static void* ThreadMain(void* self);
  void Loop();
  bool Stopping() EXCLUDES(mu_);
  void WaitForWork(Clock::time_point until) EXCLUDES(mu_);
  bool RunCommands() EXCLUDES(mu_);
  const PoolImpl* TakeClaim() EXCLUDES(mu_);
  bool RunReadyCalls(const PoolImpl*& claim);
  void PassOnClaim(const PoolImpl*& claim, const Slot* running);
  bool WantsInstance(const Slot& slot, Clock::time_point now) const;
  bool InstantiateMissing();
  bool RunOneCall(Slot& slot, const PoolImpl*& claim);
  void Execute(Slot& slot, std::shared_ptr<CallRecord> record, const PoolImpl*& claim);
  bool BeginCall(const std::shared_ptr<CallRecord>& record, uint64_t tag);
  CallResult RunInGuest(Slot& slot, CallRecord& record, uint64_t tag);
  void FinishCall(Slot& slot, const std::shared_ptr<CallRecord>& record, CallResult result,
                  Clock::time_point start);
  void AfterCall(Slot& slot, bool poisoned);
  bool ResetToSnapshot(Slot& slot);
  Result<void> Prepare(PoolImpl& pool, engine::Instance& instance, uint64_t tag);
  void SetCurrent(std::shared_ptr<CallRecord> record) EXCLUDES(current_mu_);
  bool Instantiate(Slot& slot);
  Result<std::unique_ptr<engine::Instance>> TryInstantiate(PoolImpl& pool);
  void Retire(Slot& slot);
  void DropTemporarySlot(Slot& slot);
  void RetireTemporarySlots(Clock::time_point now);
  bool HasWork() const;
  // Yields the CPU for a short while; true as soon as work comes in.
  bool YieldForWork();
  Clock::time_point Maintenance();
  bool Lingered(Clock::time_point now);
  void Teardown();

  RuntimeCore* core_;
  const int index_;
  WorkerCounters& counters_;  // core_->metrics.ForWorker(index_)
  const bool spare_;
  pthread_t thread_{};
  bool started_ = false;
  std::unique_ptr<engine::Context> context_;
  std::shared_ptr<engine::Interrupter> interrupter_;  // set before the loop starts
  std::vector<Slot> slots_;  // worker thread only

  Mutex mu_;
  CondVar cv_;
  std::vector<std::function<void(Worker&)>> commands_ GUARDED_BY(mu_);
  bool wake_ GUARDED_BY(mu_) = false;
  bool stop_ GUARDED_BY(mu_) = false;
  // The pool whose submit woke us; compared, never dereferenced.
  const PoolImpl* claim_ GUARDED_BY(mu_) = nullptr;
  std::atomic<bool> has_commands_{false};
  std::atomic<bool> idle_{false};
  std::atomic<const PoolImpl*> running_pool_{nullptr};
  std::atomic<Clock::rep> running_since_{0};
  std::atomic<bool> exited_{false};
  Clock::time_point slotless_since_;  // worker thread only; spares linger, then end

  Mutex current_mu_;
  std::shared_ptr<CallRecord> current_ GUARDED_BY(current_mu_);  // the call in the guest
  std::atomic<uint64_t> instantiating_tag_{0};                    // 0: none

  Mutex start_mu_;
  CondVar start_cv_;
  std::optional<Result<void>> start_result_ GUARDED_BY(start_mu_);
};

// Instantiates every compiled module once, off the caller's thread and
// under a deadline, so that a start function (or _initialize) that traps
// or never finishes refuses the module at Compile.
class Prober {
 public:
  explicit Prober(RuntimeCore* core);
  ~Prober();
  void Stop() EXCLUDES(mu_);
  // Blocks until the probe ends.
  [[nodiscard]] Result<void> Probe(const std::shared_ptr<const engine::Module>& module,
                                   const ModuleOptions& options) EXCLUDES(mu_);

 private:
  struct Job;
  static void* ThreadMain(void* self);
  void Loop() EXCLUDES(mu_);
  Result<void> Run(engine::Context& context, Job& job) EXCLUDES(mu_);

  RuntimeCore* core_;
  pthread_t thread_{};
  bool started_ = false;  // set by the constructor only
  bool joined_ = false;   // Stop() is called by one thread (Shutdown)
  Mutex mu_;
  CondVar cv_;
  std::deque<Job*> queue_ GUARDED_BY(mu_);
  bool stop_ GUARDED_BY(mu_) = false;
  std::shared_ptr<engine::Interrupter> interrupter_ GUARDED_BY(mu_);
  uint64_t probing_tag_ GUARDED_BY(mu_) = 0;
};

// State shared by the runtime, its pools and workers. Outlives all of them
// (pools hold it), so a pool used after shutdown fails cleanly.
struct RuntimeCore {
  RuntimeOptions options;
  engine::Engine* engine = nullptr;  // options.engine's; process-wide
  // The linear memory of every instance of this runtime (every worker's
  // context charges it).
  std::shared_ptr<engine::MemoryBudget> memory_budget;
  Metrics metrics;
  std::atomic<bool> shutting_down{false};
  std::atomic<uint64_t> next_call_id{1};
  std::atomic<uint64_t> next_tag{1};
  std::unique_ptr<CallbackExecutor> executor;
  std::unique_ptr<CallbackExecutor> waker;
  std::unique_ptr<Watchdog> watchdog;
  std::unique_ptr<Prober> prober;
  std::vector<std::unique_ptr<Worker>> workers;  // the core workers; fixed
  std::atomic<size_t> next_worker{0};

  Mutex pools_mu;
  std::vector<std::weak_ptr<PoolImpl>> pools GUARDED_BY(pools_mu);

  // Spare workers: started on demand, bounded by options.max_spare_workers,
  // stopped at shutdown.
  Mutex spares_mu;
  std::vector<std::unique_ptr<Worker>> spares GUARDED_BY(spares_mu);

  // Shutdown waits here for running calls to finish.
  Mutex drain_mu;
  CondVar drain_cv;

  Mutex test_hook_mu;
  std::function<void(TestPoint)> test_hook GUARDED_BY(test_hook_mu);
  std::atomic<bool> has_test_hook{false};

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
  // Call::Detach(): no handle waits for `record` any more.
  void Release(const std::shared_ptr<CallRecord>& record);
  CancelOutcome Abort(const std::shared_ptr<CallRecord>& record);
  // The deadline of `record` passed.
  void Expire(const std::shared_ptr<CallRecord>& record);
  void DeliverDetached(const std::shared_ptr<CallRecord>& record, CallResult actual);
  // Interrupts `record`'s call where it runs; the host function it may be
  // blocked in is woken on the waker thread.
  void Interrupt(const CallRecord& record);
  // A running call ended (and `running` was decremented); wakes Shutdown's
  // drain when it was the last.
  void OnCallEnded();
  // Asks every worker but `except` to collect garbage (an allocation failed).
  void CollectEverywhere(const Worker* except);
  // A spare worker that is idle and not in `exclude`, or a new one;
  // nullptr at the limit.
  Worker* SpareWorker(const std::vector<Worker*>& exclude) EXCLUDES(spares_mu);
  void Test(TestPoint point) EXCLUDES(test_hook_mu);
};

}  // namespace exec

// The pool behind a Pool handle.
class PoolImpl : public std::enable_shared_from_this<PoolImpl> {
 public:
  // Slot i of the pool lives on slot_workers[i].
  PoolImpl(std::shared_ptr<exec::RuntimeCore> core, std::shared_ptr<const Module> module,
           PoolOptions options, std::vector<exec::Worker*> slot_workers);

  Result<Call> Submit(std::shared_ptr<internal::CallRecord> record, const CallOptions& options)
      EXCLUDES(mu_);
  // Next call for `slot_no` (its affinity queue first, then the shared
  // queue; a temporary slot, -1, only the shared queue), already moved out
  // of the queue; nullptr if none.
  std::shared_ptr<internal::CallRecord> Pop(int slot_no) EXCLUDES(mu_);
  bool HasWork(int slot_no) const;
  bool HasSharedWork() const { return shared_live_.load() > 0; }
  // Queue accounting for a call that left kQueued (started or withdrawn);
  // called once, by whoever moved it.
  void OnDequeued(const internal::CallRecord& record);
  // Fails every queued call with `error`/`cause`.
  void FailQueued(const Error& error, exec::Cause cause) EXCLUDES(mu_);

  // Instantiation outcomes, for crash-loop protection.
  void OnInstantiated() EXCLUDES(mu_);
  void OnInstantiationFailed(const Error& error) EXCLUDES(mu_);
  // Whether a slot without an instance may try instantiating now; a
  // quarantined pool tries again only once a call arrived after its backoff.
  bool MayInstantiate(Clock::time_point now) const EXCLUDES(mu_);
  // When a slot may try on its own next (max() in quarantine).
  Clock::time_point NextAttempt() const EXCLUDES(mu_);

  // Wakes one idle worker that can serve `slot_no`'s queue (-1: the shared
  // queue); false when none is idle.
  bool Notify(int slot_no) EXCLUDES(mu_);
  // Schedules CheckStarvation `delay` from now, unless one is scheduled.
  void ArmStarvationCheck(std::chrono::milliseconds delay) EXCLUDES(mu_);
  // Runs on the waker when calls may be starving: hands the pool a spare
  // worker if its shared-queue calls have waited `starvation_delay` while
  // workers hosting its instances have run other pools' calls for as long.
  void CheckStarvation() EXCLUDES(mu_);
  void OnTemporarySlotGone(exec::Worker* worker) EXCLUDES(mu_);

  void Close() EXCLUDES(mu_);
  bool closed() const { return closed_.load(); }
  PoolStats Stats() const EXCLUDES(mu_);
  // Entries in the queues, withdrawn ones included (tests of the bound).
  size_t QueueEntries() const EXCLUDES(mu_);
  int AffinitySlot(uint64_t key) const;

  // Slot `slot_no` has an instance (true) or not; only slots with one are
  // claimed for the shared queue, so a wake-up never lands on a worker
  // that cannot serve it.
  void SlotHealthy(int slot_no, bool healthy) {
    healthy_ += healthy ? 1 : -1;
    slot_ready_[slot_no].store(healthy);
  }
  void SlotBusy(bool busy) { busy_ += busy ? 1 : -1; }

  const std::shared_ptr<const Module>& module() const { return module_; }
  const PoolOptions& options() const { return options_; }
  exec::RuntimeCore& core() { return *core_; }

 private:
  size_t BlockedInstances(Clock::time_point held_since) const;
  size_t UsableTemporaries() const REQUIRES(mu_);
  Clock::time_point OldestSharedSubmit() const REQUIRES(mu_);
  Result<bool> Admit(Clock::time_point now) REQUIRES(mu_);
  void Enqueue(const std::shared_ptr<internal::CallRecord>& record) REQUIRES(mu_);
  void SweepWithdrawn() REQUIRES(mu_);
  std::string QuarantineMessage(Clock::time_point now) const REQUIRES(mu_);
  std::vector<exec::Worker*> AllWorkers() const EXCLUDES(mu_);

  std::shared_ptr<exec::RuntimeCore> core_;
  std::shared_ptr<const Module> module_;
  PoolOptions options_;
  const std::vector<exec::Worker*> slot_workers_;  // immutable
  std::vector<exec::Worker*> workers_;             // distinct slot_workers_; immutable

  mutable Mutex mu_;
  std::deque<std::shared_ptr<internal::CallRecord>> shared_queue_ GUARDED_BY(mu_);
  std::vector<std::deque<std::shared_ptr<internal::CallRecord>>> affinity_queues_ GUARDED_BY(mu_);
  // Deque entries in all queues, withdrawn ones included; swept past a bound.
  size_t entries_ GUARDED_BY(mu_) = 0;
  // Spare workers holding a temporary slot of this pool.
  std::vector<exec::Worker*> temporary_workers_ GUARDED_BY(mu_);
  bool starvation_check_armed_ GUARDED_BY(mu_) = false;
  // Calls in kQueued per queue; withdrawn ones may still sit in a deque.
  std::atomic<int64_t> shared_live_{0};
  std::unique_ptr<std::atomic<int64_t>[]> affinity_live_;
  std::unique_ptr<std::atomic<bool>[]> slot_ready_;
  std::atomic<int64_t> total_live_{0};
  std::atomic<bool> closed_{false};

  // Crash-loop protection.
  int consecutive_failures_ GUARDED_BY(mu_) = 0;
  std::chrono::milliseconds backoff_ GUARDED_BY(mu_){0};
  Clock::time_point quarantined_until_ GUARDED_BY(mu_){};
  bool in_quarantine_ GUARDED_BY(mu_) = false;
  bool retry_permitted_ GUARDED_BY(mu_) = false;
  std::string quarantine_reason_ GUARDED_BY(mu_);

  std::atomic<int> healthy_{0};
  std::atomic<int> busy_{0};
};

}  // namespace keel

#endif  // KEEL_EXEC_CORE_H_
