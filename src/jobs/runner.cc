#include "jobs/runner.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <thread>
#include <utility>
#include <vector>

#include <spdlog/spdlog.h>

#include "base/mutex.h"
#include "jobs/internal.h"

namespace keel::jobs {

namespace {

using SteadyClock = std::chrono::steady_clock;
using Key = std::pair<std::string, uint64_t>;  // (job id, claim): names a lease

// Threads that make the store calls of starts and releases; many let the
// store's group commit batch them, as each call blocks until its commit.
constexpr int kStoreWorkers = 256;
// Threads that record outcomes, each taking every outcome waiting (up to
// kMaxOutcomeBatch) as one CompleteAll: a burst of short jobs costs a
// hand-off per batch, not per job. Several, so that outcomes keep being
// taken while a batch waits for its commit.
constexpr int kOutcomeRecorders = 4;
constexpr size_t kMaxOutcomeBatch = 512;
constexpr std::chrono::milliseconds kMaxClaimLease{5000};
constexpr std::chrono::milliseconds kBackpressureRetry{5};
constexpr std::chrono::milliseconds kClaimErrorDelay{100};
constexpr std::chrono::milliseconds kWithdrawnCallbackWait{5000};
// A job that finishes sooner has its start recorded with its outcome, in
// one write; a longer one gets a Start() of its own, which extends its lease
// to the run lease.
constexpr std::chrono::milliseconds kStartRecordDelay{20};
// How often to look whether a job still in its pool's queue has started.
constexpr std::chrono::milliseconds kQueuedStartRecheck{100};
// How long a job handed to the executor may expect to wait in its pool's
// queue (its deadline runs there): enough to keep a pool busy between
// hand-overs when its jobs are short, nothing when they are not.
constexpr std::chrono::milliseconds kMaxQueueWait{10};
// A pool unused this long is forgotten by the load estimate.
constexpr std::chrono::seconds kIdlePoolMemory{60};
// Weight of each new sample in the moving average of run times.
constexpr double kRunTimeWeight = 0.2;

std::string DefaultRunnerName() {
  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  return std::string(host) + ":" + std::to_string(getpid());
}

// Errors that a later attempt cannot fix.
bool Permanent(const Error& error) {
  switch (error.code) {
    case ErrorCode::kNotFound:
    case ErrorCode::kInvalidArgument:
    case ErrorCode::kResourceExhausted:
    case ErrorCode::kInvalidModule:
    case ErrorCode::kLinkError:
      return true;
    default:
      return false;
  }
}

RunnerOptions Normalized(RunnerOptions options) {
  if (options.name.empty()) options.name = DefaultRunnerName();
  options.max_in_flight = std::max<size_t>(options.max_in_flight, 1);
  options.claim_batch = std::clamp<size_t>(options.claim_batch, 1, kMaxClaimBatch);
  if (options.lease.count() <= 0) options.lease = std::chrono::milliseconds(30000);
  if (options.claim_lease.count() <= 0) {
    options.claim_lease = std::min(options.lease, kMaxClaimLease);
  }
  return options;
}

// Where a held job is.
enum class Phase : uint8_t {
  kWaiting,    // claimed; waiting for a slot
  kAdmitted,   // has a slot; waiting for the dispatcher
  kRunning,    // in the executor
  kRecording,  // its outcome or release is being recorded
};

// Whether the store knows the job started (kNone: not yet, and not asked).
enum class StartRecord : uint8_t { kNone, kPending, kDone, kFailed };

// A store write: starts and releases for the store workers, outcomes
// (kComplete) for the recorders.
struct Task {
  enum class Kind : uint8_t { kStart, kComplete, kRelease };
  Kind kind = Kind::kStart;
  Key key;
  Outcome outcome;  // kComplete
};

struct Entry {
  ClaimedJob job;
  std::shared_ptr<Pool> pool;       // null if `unresolved`
  std::optional<Error> unresolved;  // why no pool runs it
  size_t pool_slots = 1;            // the pool's instances
  Phase phase = Phase::kWaiting;
  StartRecord start = StartRecord::kNone;
  std::optional<Task> after_start;     // the outcome, once the start is recorded
  std::chrono::milliseconds lease{0};  // length of the lease held
  SteadyClock::time_point renew_at;
  SteadyClock::time_point record_start_at;  // kRunning, StartRecord::kNone: when to record it
  bool renewing = false;  // a Heartbeat() is in flight
  SteadyClock::time_point submitted;
  size_t ahead = 0;  // the runner's jobs in its pool when it was admitted
  std::shared_ptr<Call> call;
};

}  // namespace

// How many jobs the runner may take on, from how long recent jobs held a
// slot of their pool and how long those in the executor have been there
// (a job running long makes its pool look slow at once, before it ends).
// Not thread-safe: RunnerState guards it.
class Load {
 public:
  explicit Load(std::chrono::milliseconds claim_ahead, size_t max_in_flight)
      : claim_ahead_(claim_ahead), max_in_flight_(max_in_flight) {}

  // A job of `pool` (with `slots` instances) takes a place in it; returns
  // how many of the runner's jobs it already had.
  size_t Admit(const Pool* pool, size_t slots) {
    PoolLoad& load = pools_[pool];
    load.slots = slots;
    ++running_;
    return load.running++;
  }
  // The job gave its place back; it had been in the executor since
  // `submitted` (nullopt: it never got there).
  void Leave(const Pool* pool, std::optional<SteadyClock::time_point> submitted) {
    PoolLoad& load = pools_[pool];
    --running_;
    --load.running;
    if (submitted) {
      auto it = load.in_executor.find(*submitted);
      if (it != load.in_executor.end()) load.in_executor.erase(it);
    }
    load.last_active = SteadyClock::now();
  }
  void Submitted(const Pool* pool, SteadyClock::time_point at) {
    pools_[pool].in_executor.insert(at);
  }
  // A job that held a slot for `took` (its wait behind the `ahead` jobs
  // queued before it taken out).
  void Ran(const Pool* pool, size_t ahead, SteadyClock::duration took);

  size_t running() const { return running_; }
  // How many jobs may be in the executor with `concurrency` slots: one per
  // slot, and while jobs are short a few more, that should start within
  // kMaxQueueWait.
  size_t Cap(size_t concurrency) const { return concurrency + Ahead(kMaxQueueWait); }
  // Whether `pool` takes one more job, by the same rule.
  bool HasRoom(const Pool* pool, size_t slots) const;
  // How many jobs to hold (claimed or running) with `concurrency` slots: one
  // per slot, plus those that should start within claim_ahead.
  size_t Wanted(size_t concurrency) const;
  // Σ slots × Depth over the pools.
  size_t Ahead(std::chrono::milliseconds horizon) const;
  // Forgets pools idle for long (closed, or no longer used).
  void Prune();

 private:
  struct PoolLoad {
    size_t slots = 1;
    size_t running = 0;      // admitted or in the executor
    double mean_run_us = 0;  // of a slot per job
    std::multiset<SteadyClock::time_point> in_executor;  // when each was submitted
    SteadyClock::time_point last_active = SteadyClock::now();
  };

  // The time a slot takes per job: the recent mean, or longer if a job has
  // been in the executor for longer already.
  static double SlotTimeUs(const PoolLoad& load, SteadyClock::time_point now);
  // Jobs per slot that should start within `horizon` at `slot_us` each.
  size_t Depth(double slot_us, std::chrono::milliseconds horizon) const;

  const std::chrono::milliseconds claim_ahead_;
  const size_t max_in_flight_;
  size_t running_ = 0;
  std::map<const Pool*, PoolLoad> pools_;
};

void Load::Ran(const Pool* pool, size_t ahead, SteadyClock::duration took) {
  PoolLoad& load = pools_[pool];
  double queued_ahead = ahead >= load.slots ? static_cast<double>(ahead - load.slots + 1) : 0.0;
  double us = std::chrono::duration<double, std::micro>(took).count() /
              (1 + queued_ahead / static_cast<double>(load.slots));
  us = std::max(1.0, us);
  load.mean_run_us =
      load.mean_run_us <= 0 ? us : load.mean_run_us + kRunTimeWeight * (us - load.mean_run_us);
}

double Load::SlotTimeUs(const PoolLoad& load, SteadyClock::time_point now) {
  if (load.in_executor.empty()) return load.mean_run_us;
  double oldest =
      std::chrono::duration<double, std::micro>(now - *load.in_executor.begin()).count();
  return load.mean_run_us <= 0 ? 0 : std::max(load.mean_run_us, oldest);
}

size_t Load::Depth(double slot_us, std::chrono::milliseconds horizon) const {
  if (slot_us <= 0) return 0;  // nothing known yet
  double horizon_us = std::chrono::duration<double, std::micro>(horizon).count();
  return static_cast<size_t>(std::min(horizon_us / slot_us, static_cast<double>(max_in_flight_)));
}

size_t Load::Ahead(std::chrono::milliseconds horizon) const {
  auto now = SteadyClock::now();
  size_t ahead = 0;
  for (const auto& [pool, load] : pools_) {
    ahead += load.slots * Depth(SlotTimeUs(load, now), horizon);
  }
  return ahead;
}

bool Load::HasRoom(const Pool* pool, size_t slots) const {
  auto it = pools_.find(pool);
  if (it == pools_.end()) return slots > 0;
  const PoolLoad& load = it->second;
  return load.running < slots * (1 + Depth(SlotTimeUs(load, SteadyClock::now()), kMaxQueueWait));
}

size_t Load::Wanted(size_t concurrency) const {
  return std::min(max_in_flight_, concurrency + Ahead(claim_ahead_));
}

void Load::Prune() {
  auto stale = SteadyClock::now() - kIdlePoolMemory;
  std::erase_if(pools_, [&](const auto& item) {
    return item.second.running == 0 && item.second.last_active < stale;
  });
}

// What the runner holds and decides, shared with completion callbacks,
// which may outlive the runner: they touch only this state, and nothing
// once `closed`.
class RunnerState {
 public:
  explicit RunnerState(RunnerOptions options)
      : options(std::move(options)),
        load_(this->options.claim_ahead, this->options.max_in_flight) {}

  const RunnerOptions options;
  mutable Mutex mu;
  CondVar claim_cv;     // the claimer: room for claims, or stopping
  CondVar dispatch_cv;  // the dispatcher: jobs admitted, or stopping
  CondVar task_cv;      // store workers: tasks, or closed
  CondVar outcome_cv;   // outcome recorders: outcomes, or closed
  CondVar beat_cv;      // the heartbeater: leases to renew, or closed
  CondVar idle_cv;      // Stop(): jobs recorded

  bool claiming GUARDED_BY(mu) = true;
  bool dispatching GUARDED_BY(mu) = true;
  bool closed GUARDED_BY(mu) = false;
  // Set once the store workers have ended: a start they record may still
  // hand its job's outcome to the recorders.
  bool recording_closed GUARDED_BY(mu) = false;

  std::map<Key, Entry> entries GUARDED_BY(mu);  // every job held
  std::deque<Key> waiting GUARDED_BY(mu);       // kWaiting, in claim order
  std::deque<Key> admitted GUARDED_BY(mu);      // kAdmitted, for the dispatcher
  std::deque<Task> tasks GUARDED_BY(mu);     // starts and releases
  std::deque<Task> outcomes GUARDED_BY(mu);  // kComplete tasks

  std::atomic<uint64_t> claimed{0}, started{0}, released{0}, succeeded{0}, failed{0},
      timed_out{0}, retried{0}, lost_leases{0}, backpressure_waits{0};

  // How many more jobs to claim now: enough for the free slots, plus those
  // that should start within claim_ahead judging by recent run times.
  size_t ClaimBudget() const REQUIRES(mu) {
    size_t want = load_.Wanted(Concurrency());
    size_t active = waiting.size() + load_.running();
    size_t room = options.max_in_flight - std::min(options.max_in_flight, entries.size());
    return std::min({want > active ? want - active : 0, room, options.claim_batch});
  }

  // Adds freshly claimed jobs, then schedules.
  void AddClaimed(std::vector<Entry> fresh) REQUIRES(mu) {
    load_.Prune();
    for (Entry& entry : fresh) {
      learned_concurrency_ = std::max(learned_concurrency_, entry.pool_slots);
      Key key(entry.job.id, entry.job.claim);
      waiting.push_back(key);
      entries.emplace(std::move(key), std::move(entry));
    }
    Schedule();
    beat_cv.Signal();
  }

  // Admits waiting jobs whose pool has a free slot, in claim order, and
  // records the failure of those no pool runs. While a pool's recent jobs
  // are short, a few more than its slots are admitted, to wait in its queue
  // at most about kMaxQueueWait: handing each job over only as a slot frees
  // would cost thread hand-offs per job.
  void Schedule() REQUIRES(mu) {
    bool admitted_any = false;
    size_t cap = load_.Cap(Concurrency());
    std::set<const Pool*> full;
    for (auto it = waiting.begin(); it != waiting.end();) {
      Entry& entry = entries.at(*it);
      if (entry.unresolved) {
        Error error = *entry.unresolved;
        bool retry = !Permanent(error);
        Queue({Task::Kind::kComplete, *it, Outcome::Failed(std::move(error), retry)}, entry);
      } else if (!dispatching || load_.running() >= cap) {
        break;
      } else if (full.contains(entry.pool.get()) ||
                 !load_.HasRoom(entry.pool.get(), entry.pool_slots)) {
        full.insert(entry.pool.get());
        ++it;
        continue;
      } else {
        SetPhase(entry, Phase::kAdmitted);
        admitted.push_back(*it);
        admitted_any = true;
      }
      it = waiting.erase(it);
    }
    if (admitted_any) dispatch_cv.Signal();
  }

  // Moves `entry` to recording `task`, which waits for the start record if
  // that is still being written.
  void Queue(Task task, Entry& entry) REQUIRES(mu) {
    SetPhase(entry, Phase::kRecording);
    if (entry.start == StartRecord::kPending) {
      entry.after_start = std::move(task);
      return;
    }
    Push(std::move(task));
  }

  // Hands `task` to the threads that write it.
  void Push(Task task) REQUIRES(mu) {
    if (task.kind == Task::Kind::kComplete) {
      outcomes.push_back(std::move(task));
      outcome_cv.Signal();
    } else {
      tasks.push_back(std::move(task));
      task_cv.Signal();
    }
  }

  // Maintains the load; every phase change goes through here.
  void SetPhase(Entry& entry, Phase phase) REQUIRES(mu) {
    bool was = entry.phase == Phase::kAdmitted || entry.phase == Phase::kRunning;
    bool is = phase == Phase::kAdmitted || phase == Phase::kRunning;
    if (phase == Phase::kRunning && entry.phase != Phase::kRunning) {
      load_.Submitted(entry.pool.get(), entry.submitted);
    }
    if (was && !is) {
      std::optional<SteadyClock::time_point> submitted;
      if (entry.phase == Phase::kRunning) submitted = entry.submitted;
      load_.Leave(entry.pool.get(), submitted);
      claim_cv.Signal();
    } else if (!was && is) {
      entry.ahead = load_.Admit(entry.pool.get(), entry.pool_slots);
    }
    entry.phase = phase;
  }


  // Forgets a job (recorded, released, or its lease lost), if still held.
  void Forget(const Key& key) REQUIRES(mu) {
    auto it = entries.find(key);
    if (it != entries.end()) Erase(it);
  }

  void Erase(std::map<Key, Entry>::iterator it) REQUIRES(mu) {
    SetPhase(it->second, Phase::kRecording);
    entries.erase(it);
    claim_cv.Signal();
    idle_cv.SignalAll();
  }

  // A call the executor resolved: frees its slot and queues recording the
  // outcome, or a release if the call never ran or was cut short by
  // shutdown or by Stop().
  void OnCallDone(const Key& key, const CallResult& result) EXCLUDES(mu) {
    MutexLock lock(mu);
    auto it = entries.find(key);
    if (closed || it == entries.end()) return;
    Entry& entry = it->second;
    const bool withdrawn = entry.call && entry.call->state() == CallState::kWithdrawn;
    entry.call.reset();
    if (!withdrawn) load_.Ran(entry.pool.get(), entry.ahead, SteadyClock::now() - entry.submitted);
    if (entry.start == StartRecord::kFailed) {  // not ours any more
      Erase(it);
      Schedule();
      return;
    }
    Task task{Task::Kind::kComplete, key, {}};
    ErrorCode code = result ? ErrorCode::kInternal : result.error().code;
    if (withdrawn || code == ErrorCode::kShuttingDown || code == ErrorCode::kCancelled) {
      task.kind = Task::Kind::kRelease;
    } else if (result) {
      task.outcome = Outcome::Succeeded(result->bytes);
    } else if (code == ErrorCode::kDeadlineExceeded) {
      task.outcome = Outcome::TimedOut(result.error(), true);
    } else {
      task.outcome = Outcome::Failed(result.error(), !Permanent(result.error()));
    }
    Queue(std::move(task), entry);
    Schedule();
  }

  std::chrono::milliseconds RenewAfter(std::chrono::milliseconds lease) const {
    return options.heartbeat_every.count() > 0 ? options.heartbeat_every : lease / 3;
  }

 private:
  size_t Concurrency() const REQUIRES(mu) {
    return options.concurrency > 0 ? options.concurrency : learned_concurrency_;
  }

  Load load_ GUARDED_BY(mu);
  size_t learned_concurrency_ GUARDED_BY(mu) = 1;
};

class Runner::Impl {
 public:
  Impl(JobStore* store, PoolResolver resolver, RunnerOptions options)
      : store_(store),
        resolver_(std::move(resolver)),
        state_(std::make_shared<RunnerState>(Normalized(std::move(options)))) {}

  void Start() {
    claimer_ = std::thread([this] { ClaimLoop(); });
    dispatcher_ = std::thread([this] { DispatchLoop(); });
    heartbeater_ = std::thread([this] { HeartbeatLoop(); });
    for (int i = 0; i < kStoreWorkers; ++i) store_workers_.emplace_back([this] { StoreLoop(); });
    for (int i = 0; i < kOutcomeRecorders; ++i) recorders_.emplace_back([this] { RecordLoop(); });
  }

  void Stop(std::chrono::milliseconds grace) {
    {
      MutexLock lock(state_->mu);
      if (stopped_) return;
      stopped_ = true;
      state_->claiming = false;
      state_->dispatching = false;
      state_->claim_cv.SignalAll();
      state_->dispatch_cv.SignalAll();
    }
    claimer_.join();
    dispatcher_.join();
    std::vector<Key> withdrawn;
    for (const auto& [key, call] : ReleaseUnstarted()) {
      // Still queued in its pool: withdrawn; its callback releases it.
      if (call->state() == CallState::kQueued &&
          call->Cancel() == keel::CancelOutcome::kWithdrawn) {
        withdrawn.push_back(key);
      }
    }
    {
      MutexLock lock(state_->mu);
      auto until = SteadyClock::now() + grace;
      while (!state_->entries.empty() && SteadyClock::now() < until) {
        state_->idle_cv.WaitUntil(state_->mu, until);
      }
      // However short the grace, the withdrawn calls' callbacks (prompt)
      // must have queued their releases.
      auto callbacks_until = SteadyClock::now() + kWithdrawnCallbackWait;
      while (Running(withdrawn) && SteadyClock::now() < callbacks_until) {
        state_->idle_cv.WaitUntil(state_->mu, callbacks_until);
      }
      state_->closed = true;
      state_->task_cv.SignalAll();
      state_->beat_cv.SignalAll();
    }
    // The heartbeater first: once it has seen `closed` it hands nothing
    // more to the store workers or the recorders.
    heartbeater_.join();
    for (auto& worker : store_workers_) worker.join();
    {
      MutexLock lock(state_->mu);
      state_->recording_closed = true;
      state_->outcome_cv.SignalAll();
    }
    for (auto& recorder : recorders_) recorder.join();
  }

  void StopClaiming() EXCLUDES(state_->mu) {
    MutexLock lock(state_->mu);
    state_->claiming = false;
    state_->claim_cv.SignalAll();
  }

  bool Abort(std::string_view id) EXCLUDES(state_->mu) {
    std::shared_ptr<Call> call;
    {
      MutexLock lock(state_->mu);
      for (const auto& [key, entry] : state_->entries) {
        if (key.first == id && entry.call) {
          call = entry.call;
          break;
        }
      }
    }
    return call && call->Abort() == CancelOutcome::kAborted;
  }

  RunnerStats Stats() const {
    RunnerStats s;
    s.claimed = state_->claimed;
    s.started = state_->started;
    s.released = state_->released;
    s.succeeded = state_->succeeded;
    s.failed = state_->failed;
    s.timed_out = state_->timed_out;
    s.retried = state_->retried;
    s.lost_leases = state_->lost_leases;
    s.backpressure_waits = state_->backpressure_waits;
    MutexLock lock(state_->mu);
    s.in_flight = static_cast<int64_t>(state_->entries.size());
    for (const auto& [key, entry] : state_->entries) s.waiting += entry.phase == Phase::kWaiting;
    return s;
  }

 private:
  const RunnerOptions& options() const { return state_->options; }

  // A claim that returned after StopClaiming() or Stop() is given back at
  // once (false): a draining runner takes no job, even one its last claim
  // was waiting for.
  bool StillClaiming(const std::vector<ClaimedJob>& claimed) EXCLUDES(state_->mu) {
    {
      MutexLock lock(state_->mu);
      if (state_->claiming) return true;
    }
    for (const ClaimedJob& job : claimed) (void)store_->Release(job.id, job.claim);
    return false;
  }

  void ClaimLoop() {
    auto last_purge = SteadyClock::now();
    for (;;) {
      size_t budget = 0;
      {
        MutexLock lock(state_->mu);
        while (state_->claiming && (budget = state_->ClaimBudget()) == 0) {
          state_->claim_cv.Wait(state_->mu);
        }
        if (!state_->claiming) return;
      }
      auto claimed = store_->Claim({.runner = options().name,
                                    .max_jobs = budget,
                                    .lease = options().claim_lease,
                                    .wait = options().idle_wait});
      if (!claimed) {
        spdlog::warn("claiming jobs failed: {}", claimed.error().ToString());
        MutexLock lock(state_->mu);
        if (state_->claiming) state_->claim_cv.WaitFor(state_->mu, kClaimErrorDelay);
        continue;
      }
      if (!claimed->empty() && !StillClaiming(*claimed)) return;
      if (!claimed->empty()) AddClaimed(std::move(*claimed));
      if (SteadyClock::now() - last_purge > std::chrono::minutes(1)) {
        (void)store_->Purge(options().retention);
        last_purge = SteadyClock::now();
      }
    }
  }

  // Finds the pool of each claimed job (outside the lock: the resolver may
  // compile) and hands the jobs to the scheduler.
  void AddClaimed(std::vector<ClaimedJob> claimed) {
    std::map<std::string, Result<std::shared_ptr<Pool>>> pools;
    std::vector<Entry> fresh;
    auto renew_at = SteadyClock::now() + state_->RenewAfter(options().claim_lease);
    for (ClaimedJob& job : claimed) {
      auto found = pools.find(job.spec.module_digest);
      if (found == pools.end()) {
        found = pools.emplace(job.spec.module_digest, resolver_(job.spec.module_digest)).first;
      }
      Entry entry{.job = std::move(job), .lease = options().claim_lease, .renew_at = renew_at};
      if (found->second) {
        entry.pool = *found->second;
        entry.pool_slots = std::max<size_t>(1, entry.pool->Stats().target_instances);
      } else {
        entry.unresolved = found->second.error();
      }
      fresh.push_back(std::move(entry));
    }
    state_->claimed += fresh.size();
    MutexLock lock(state_->mu);
    state_->AddClaimed(std::move(fresh));
  }

  // A job to hand to the executor, copied out under the lock.
  struct Submission {
    Key key;
    std::shared_ptr<Pool> pool;
    std::string export_name;
    std::vector<uint8_t> input;
    std::chrono::milliseconds deadline;
  };

  // Hands admitted jobs to the executor; waits while their pool is
  // overloaded.
  void DispatchLoop() {
    MutexLock lock(state_->mu);
    for (;;) {
      while (state_->admitted.empty() && state_->dispatching) state_->dispatch_cv.Wait(state_->mu);
      if (!state_->dispatching) return;  // Stop() releases what is left
      std::vector<Submission> batch;
      for (const Key& key : state_->admitted) {
        Entry& entry = state_->entries.at(key);
        batch.push_back({key, entry.pool, entry.job.spec.export_name, entry.job.spec.input,
                         entry.job.spec.deadline});
      }
      state_->admitted.clear();
      lock.Unlock();
      std::vector<Key> refused;
      for (Submission& submission : batch) {
        if (!Submit(submission)) refused.push_back(std::move(submission.key));
      }
      lock.Lock();
      if (refused.empty()) continue;
      state_->admitted.insert(state_->admitted.begin(), refused.begin(), refused.end());
      state_->backpressure_waits++;
      state_->dispatch_cv.WaitFor(state_->mu, kBackpressureRetry);
    }
  }

  // Submits one job to its pool. False if the pool is overloaded (try
  // again later); any other refusal is recorded.
  bool Submit(Submission& submission) EXCLUDES(state_->mu) {
    CallOptions call_options{.timeout = submission.deadline};
    auto submitted = SteadyClock::now();
    auto call = submission.pool->SubmitBytes(submission.export_name, std::move(submission.input),
                                             call_options);
    if (!call && call.error().code == ErrorCode::kOverloaded) return false;
    MutexLock lock(state_->mu);
    Entry& entry = state_->entries.at(submission.key);
    if (!call) {
      const Error& error = call.error();
      Task task{Task::Kind::kRelease, submission.key, {}};
      if (error.code != ErrorCode::kShuttingDown) {
        task = {Task::Kind::kComplete, submission.key, Outcome::Failed(error, !Permanent(error))};
      }
      state_->Queue(std::move(task), entry);
      state_->Schedule();
      return true;
    }
    auto shared = std::make_shared<Call>(std::move(*call));
    entry.call = shared;
    entry.submitted = submitted;
    entry.record_start_at = submitted + kStartRecordDelay;  // by the heartbeater
    state_->SetPhase(entry, Phase::kRunning);
    state_->started++;
    state_->beat_cv.Signal();
    lock.Unlock();
    // The entry owns the handle (to cancel the call); the callback holds
    // only the job's key, so nothing keeps a finished call alive.
    shared->OnComplete([state = state_, key = submission.key](const CallResult& result) {
      state->OnCallDone(key, result);
    });
    return true;
  }

  void StoreLoop() {
    for (;;) {
      Task task;
      {
        MutexLock lock(state_->mu);
        while (state_->tasks.empty() && !state_->closed) state_->task_cv.Wait(state_->mu);
        if (state_->tasks.empty()) return;  // closed, and every task handed over ran
        task = std::move(state_->tasks.front());
        state_->tasks.pop_front();
      }
      // Outcomes go to the recorders (Push), not here.
      if (task.kind == Task::Kind::kStart) {
        RunStart(task.key);
      } else {
        RunRelease(task.key);
      }
    }
  }

  // Records the start of a job that has been running for a while, then
  // lets its outcome be recorded. If the lease is gone (expired), the job
  // is not ours to run: its call is cancelled.
  void RunStart(const Key& key) {
    auto started = store_->Start(key.first, key.second, options().lease);
    std::shared_ptr<Call> cancel;
    {
      MutexLock lock(state_->mu);
      auto it = state_->entries.find(key);
      if (it == state_->entries.end()) return;
      Entry& entry = it->second;
      if (started) {
        entry.start = StartRecord::kDone;
        entry.lease = options().lease;
        entry.renew_at = SteadyClock::now() + state_->RenewAfter(entry.lease);
        state_->beat_cv.Signal();
      } else {
        if (started.error().code == ErrorCode::kFailedPrecondition) state_->lost_leases++;
        spdlog::warn("job {} claim {}: start not recorded: {}", key.first, key.second,
                     started.error().ToString());
        entry.start = StartRecord::kFailed;
        cancel = entry.call;
      }
      if (entry.after_start) {
        if (started) {
          state_->Push(std::move(*entry.after_start));
        } else {
          state_->Erase(it);
        }
      }
    }
    if (cancel) cancel->Cancel();  // its callback forgets the job
  }

  // Takes every outcome waiting, up to kMaxOutcomeBatch, and records them
  // together, until closed and none is left.
  void RecordLoop() {
    for (;;) {
      std::vector<Task> batch;
      {
        MutexLock lock(state_->mu);
        while (state_->outcomes.empty() && !state_->recording_closed) {
          state_->outcome_cv.Wait(state_->mu);
        }
        if (state_->outcomes.empty()) return;  // closed, and every outcome handed over recorded
        size_t n = std::min(state_->outcomes.size(), kMaxOutcomeBatch);
        auto end = state_->outcomes.begin() + static_cast<ptrdiff_t>(n);
        batch.assign(std::make_move_iterator(state_->outcomes.begin()), std::make_move_iterator(end));
        state_->outcomes.erase(state_->outcomes.begin(), end);
      }
      RecordOutcomes(batch);
    }
  }

  void RecordOutcomes(const std::vector<Task>& batch) {
    std::vector<Completion> completions;
    completions.reserve(batch.size());
    for (const Task& task : batch) {
      completions.push_back({task.key.first, task.key.second, &task.outcome});
    }
    std::vector<Result<JobState>> recorded = store_->CompleteAll(completions);
    for (size_t i = 0; i < batch.size(); ++i) Count(batch[i], recorded[i]);
    MutexLock lock(state_->mu);
    for (const Task& task : batch) state_->Forget(task.key);
  }

  // Counts one outcome's recording in the stats, or logs why it failed.
  void Count(const Task& task, const Result<JobState>& recorded) {
    const Outcome& outcome = task.outcome;
    if (!recorded) {
      if (recorded.error().code == ErrorCode::kFailedPrecondition) state_->lost_leases++;
      // Either way the job is not lost: its lease expires and it runs again.
      spdlog::warn("job {} claim {}: outcome not recorded: {}", task.key.first, task.key.second,
                   recorded.error().ToString());
      return;
    }
    switch (outcome.kind) {
      case Outcome::Kind::kSucceeded:
        state_->succeeded++;
        break;
      case Outcome::Kind::kFailed:
        state_->failed++;
        break;
      case Outcome::Kind::kTimedOut:
        state_->timed_out++;
        break;
    }
    if (*recorded == JobState::kQueued) state_->retried++;
  }

  void RunRelease(const Key& key) {
    auto released = store_->Release(key.first, key.second);
    if (released) {
      state_->released++;
    } else {
      if (released.error().code == ErrorCode::kFailedPrecondition) state_->lost_leases++;
      spdlog::warn("job {} claim {}: not released: {}", key.first, key.second,
                   released.error().ToString());
    }
    Forget(key);
  }

  void Forget(const Key& key) {
    MutexLock lock(state_->mu);
    state_->Forget(key);
  }

  // Renews each lease when it is due.
  void HeartbeatLoop() {
    MutexLock lock(state_->mu);
    while (!state_->closed) {
      std::vector<std::pair<Key, std::chrono::milliseconds>> due;
      std::optional<SteadyClock::time_point> next;
      auto now = SteadyClock::now();
      for (auto& [key, entry] : state_->entries) {
        // A start being recorded sets the lease itself.
        if (entry.renewing || entry.start == StartRecord::kPending) continue;
        if (entry.phase == Phase::kRunning && entry.start == StartRecord::kNone) {
          if (entry.record_start_at <= now && RecordStartIfRunning(key, entry)) continue;
          if (!next || entry.record_start_at < *next) next = entry.record_start_at;
        }
        if (entry.renew_at > now) {
          if (!next || entry.renew_at < *next) next = entry.renew_at;
        } else {
          entry.renewing = true;
          due.emplace_back(key, entry.lease);
        }
      }
      if (due.empty()) {
        if (next) {
          state_->beat_cv.WaitUntil(state_->mu, *next);
        } else {
          state_->beat_cv.Wait(state_->mu);
        }
        continue;
      }
      lock.Unlock();
      std::vector<Result<TimePoint>> renewed;
      for (const auto& [key, lease] : due) {
        renewed.push_back(store_->Heartbeat(key.first, key.second, lease));
      }
      lock.Lock();
      for (size_t i = 0; i < due.size(); ++i) Renewed(due[i].first, due[i].second, renewed[i]);
      state_->Schedule();
    }
  }

  // Queues the start record of a job whose call has left its pool's queue
  // and returns true; else looks again later (a job waiting in the queue
  // has not started, and keeps its claim lease).
  bool RecordStartIfRunning(const Key& key, Entry& entry) REQUIRES(state_->mu) {
    if (entry.call && entry.call->state() == CallState::kQueued) {
      entry.record_start_at = SteadyClock::now() + kQueuedStartRecheck;
      return false;
    }
    entry.start = StartRecord::kPending;
    state_->Push({Task::Kind::kStart, key, {}});
    return true;
  }

  // The outcome of one heartbeat. A waiting job whose lease is gone
  // (cancelled, or expired and claimed elsewhere) is dropped; a running
  // one finishes, and its outcome is refused.
  void Renewed(const Key& key, std::chrono::milliseconds lease, const Result<TimePoint>& renewed)
      REQUIRES(state_->mu) {
    auto it = state_->entries.find(key);
    if (it == state_->entries.end()) return;
    Entry& entry = it->second;
    entry.renewing = false;
    entry.renew_at = SteadyClock::now() + state_->RenewAfter(lease);
    // The job started meanwhile: this renewal may have cut its run lease
    // back to the claim lease, so renew it now with the run lease.
    if (entry.lease != lease) entry.renew_at = SteadyClock::now();
    if (renewed) return;
    spdlog::warn("job {} claim {}: heartbeat failed: {}", key.first, key.second,
                 renewed.error().ToString());
    if (renewed.error().code != ErrorCode::kFailedPrecondition) return;
    state_->lost_leases++;
    if (entry.phase == Phase::kWaiting) {
      std::erase(state_->waiting, key);
      state_->Erase(it);
    }
  }

  // True while one of `keys` is still in the executor.
  bool Running(const std::vector<Key>& keys) const REQUIRES(state_->mu) {
    for (const Key& key : keys) {
      auto it = state_->entries.find(key);
      if (it != state_->entries.end() && it->second.phase == Phase::kRunning) return true;
    }
    return false;
  }

  // When stopping: gives back every job not handed to the executor, and
  // returns the calls of the others.
  std::vector<std::pair<Key, std::shared_ptr<Call>>> ReleaseUnstarted() {
    MutexLock lock(state_->mu);
    for (auto* queue : {&state_->waiting, &state_->admitted}) {
      for (const Key& key : *queue) {
        state_->Queue({Task::Kind::kRelease, key, {}}, state_->entries.at(key));
      }
      queue->clear();
    }
    state_->task_cv.SignalAll();
    std::vector<std::pair<Key, std::shared_ptr<Call>>> calls;
    for (auto& [key, entry] : state_->entries) {
      if (entry.call) calls.emplace_back(key, entry.call);
    }
    return calls;
  }

  JobStore* store_;
  PoolResolver resolver_;
  std::shared_ptr<RunnerState> state_;
  bool stopped_ GUARDED_BY(state_->mu) = false;
  std::thread claimer_;
  std::thread dispatcher_;
  std::thread heartbeater_;
  std::vector<std::thread> store_workers_;
  std::vector<std::thread> recorders_;
};

Result<std::unique_ptr<Runner>> Runner::Start(JobStore* store, PoolResolver resolver,
                                              RunnerOptions options) {
  if (!store || !resolver) {
    return MakeError(ErrorCode::kInvalidArgument, "runner needs a store and a resolver");
  }
  auto impl = std::make_unique<Impl>(store, std::move(resolver), std::move(options));
  impl->Start();
  return std::unique_ptr<Runner>(new Runner(std::move(impl)));
}

Runner::Runner(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Runner::~Runner() { Stop(std::chrono::seconds(5)); }

void Runner::Stop(std::chrono::milliseconds grace) { impl_->Stop(grace); }

RunnerStats Runner::Stats() const { return impl_->Stats(); }

bool Runner::Abort(std::string_view id) { return impl_->Abort(id); }

void Runner::StopClaiming() { impl_->StopClaiming(); }

}  // namespace keel::jobs
