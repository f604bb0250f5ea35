#include "jobs/runner.h"

#include <unistd.h>

#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include <spdlog/spdlog.h>

namespace keel::jobs {

namespace {

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

}  // namespace

// Shared with completion callbacks, which may outlive the runner: they only
// touch this state, never the store, once the runner has stopped.
struct RunnerState {
  std::mutex mu;
  std::condition_variable cv;
  bool stopping = false;  // guarded by mu
  // Leases held: (id, attempt) of every job claimed and not yet recorded.
  std::map<std::pair<std::string, uint32_t>, bool> leases;  // guarded by mu
  // Attempts finished in the executor, waiting to be recorded.
  struct Finished {
    ClaimedJob job;
    Outcome outcome;
  };
  std::deque<Finished> finished;  // guarded by mu
  // Jobs the pool refused for now (overloaded): resubmitted before claiming more.
  std::deque<ClaimedJob> pending;  // guarded by mu

  std::atomic<uint64_t> claimed{0}, succeeded{0}, failed{0}, timed_out{0}, retried{0},
      lost_leases{0}, backpressure_waits{0};
};

class Runner::Impl {
 public:
  Impl(JobStore* store, PoolResolver resolver, RunnerOptions options)
      : store_(store), resolver_(std::move(resolver)), options_(std::move(options)),
        state_(std::make_shared<RunnerState>()) {
    if (options_.name.empty()) options_.name = DefaultRunnerName();
    if (options_.heartbeat_every.count() == 0) options_.heartbeat_every = options_.lease / 3;
    if (options_.max_in_flight == 0) options_.max_in_flight = 1;
  }

  void Start() {
    claimer_ = std::thread([this] { ClaimLoop(); });
    heartbeater_ = std::thread([this] { HeartbeatLoop(); });
    // Recording outcomes blocks on commits; several recorders let the
    // store's group commit batch them.
    for (int i = 0; i < kRecorders; ++i) recorders_.emplace_back([this] { RecordLoop(); });
  }

  void Stop(std::chrono::milliseconds grace) {
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      if (stopped_) return;
      stopped_ = true;
      claiming_ = false;
    }
    state_->cv.notify_all();
    claimer_.join();
    {
      // Give jobs in flight the grace period to finish and be recorded.
      std::unique_lock<std::mutex> lock(state_->mu);
      state_->cv.wait_for(lock, grace, [&] { return state_->leases.empty(); });
      state_->stopping = true;
    }
    state_->cv.notify_all();
    for (auto& t : recorders_) t.join();
    heartbeater_.join();
  }

  RunnerStats Stats() const {
    RunnerStats s;
    s.claimed = state_->claimed;
    s.succeeded = state_->succeeded;
    s.failed = state_->failed;
    s.timed_out = state_->timed_out;
    s.retried = state_->retried;
    s.lost_leases = state_->lost_leases;
    s.backpressure_waits = state_->backpressure_waits;
    std::lock_guard<std::mutex> lock(state_->mu);
    s.in_flight = static_cast<int64_t>(state_->leases.size());
    return s;
  }

 private:
  static constexpr int kRecorders = 64;

  void ClaimLoop() {
    auto last_purge = std::chrono::steady_clock::now();
    for (;;) {
      size_t capacity;
      {
        std::unique_lock<std::mutex> lock(state_->mu);
        if (!claiming_) return;
        // Backpressure: refused jobs go first; no new claims while any wait.
        if (!state_->pending.empty()) {
          std::deque<ClaimedJob> retry;
          retry.swap(state_->pending);
          lock.unlock();
          for (auto& job : retry) Dispatch(std::move(job));
          lock.lock();
          if (!state_->pending.empty()) {
            state_->backpressure_waits++;
            state_->cv.wait_for(lock, std::chrono::milliseconds(5), [&] { return !claiming_; });
            continue;
          }
        }
        capacity = options_.max_in_flight - std::min(options_.max_in_flight, state_->leases.size());
        if (capacity == 0) {
          state_->cv.wait_for(lock, std::chrono::milliseconds(50), [&] {
            return !claiming_ || state_->leases.size() < options_.max_in_flight;
          });
          continue;
        }
      }
      auto claimed = store_->Claim({.runner = options_.name,
                                    .max_jobs = std::min(capacity, options_.claim_batch),
                                    .lease = options_.lease,
                                    .wait = options_.idle_wait});
      if (!claimed) {
        spdlog::warn("claiming jobs failed: {}", claimed.error().ToString());
        std::unique_lock<std::mutex> lock(state_->mu);
        state_->cv.wait_for(lock, std::chrono::milliseconds(100), [&] { return !claiming_; });
        continue;
      }
      for (ClaimedJob& job : *claimed) {
        state_->claimed++;
        {
          std::lock_guard<std::mutex> lock(state_->mu);
          state_->leases[{job.id, job.attempt}] = true;
        }
        Dispatch(std::move(job));
      }
      if (std::chrono::steady_clock::now() - last_purge > std::chrono::minutes(1)) {
        (void)store_->Purge(options_.retention);
        last_purge = std::chrono::steady_clock::now();
      }
    }
  }

  // Hands one claimed job to the executor, or records why it cannot run.
  void Dispatch(ClaimedJob job) {
    auto pool = resolver_(job.spec.module_digest);
    if (!pool) {
      Finish(std::move(job), Outcome::Failed(pool.error(), !Permanent(pool.error())));
      return;
    }
    auto call = (*pool)->SubmitBytes(job.spec.export_name, job.spec.input,
                                     {.timeout = job.spec.deadline});
    if (!call) {
      const Error& error = call.error();
      if (error.code == ErrorCode::kOverloaded) {
        std::lock_guard<std::mutex> lock(state_->mu);
        state_->pending.push_back(std::move(job));
        return;
      }
      if (error.code == ErrorCode::kShuttingDown) return;  // the lease expires; it runs again
      Finish(std::move(job), Outcome::Failed(error, !Permanent(error)));
      return;
    }
    auto state = state_;
    call->OnComplete([state, job = std::move(job)](const CallResult& result) mutable {
      Outcome outcome;
      if (result) {
        outcome = Outcome::Succeeded(result->bytes);
      } else if (result.error().code == ErrorCode::kShuttingDown) {
        // Not the job's fault: leave it to the lease, so it runs again.
        std::lock_guard<std::mutex> lock(state->mu);
        state->leases.erase({job.id, job.attempt});
        state->cv.notify_all();
        return;
      } else if (result.error().code == ErrorCode::kDeadlineExceeded) {
        outcome = Outcome::TimedOut(result.error(), true);
      } else {
        outcome = Outcome::Failed(result.error(), !Permanent(result.error()));
      }
      {
        std::lock_guard<std::mutex> lock(state->mu);
        state->finished.push_back({std::move(job), std::move(outcome)});
      }
      state->cv.notify_all();
    });
    // The call goes on without a handle; the callback takes its result.
    call->Detach();
  }

  void Finish(ClaimedJob job, Outcome outcome) {
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      state_->finished.push_back({std::move(job), std::move(outcome)});
    }
    state_->cv.notify_all();
  }

  void RecordLoop() {
    for (;;) {
      RunnerState::Finished item;
      {
        std::unique_lock<std::mutex> lock(state_->mu);
        state_->cv.wait(lock, [&] { return state_->stopping || !state_->finished.empty(); });
        if (state_->finished.empty()) return;
        item = std::move(state_->finished.front());
        state_->finished.pop_front();
      }
      Record(item);
      {
        std::lock_guard<std::mutex> lock(state_->mu);
        state_->leases.erase({item.job.id, item.job.attempt});
      }
      state_->cv.notify_all();
    }
  }

  void Record(const RunnerState::Finished& item) {
    const Outcome& outcome = item.outcome;
    auto recorded = store_->Complete(item.job.id, item.job.attempt, outcome);
    if (!recorded) {
      if (recorded.error().code == ErrorCode::kFailedPrecondition) state_->lost_leases++;
      // Either way the job is not lost: its lease expires and it runs again.
      spdlog::warn("job {} attempt {}: outcome not recorded: {}", item.job.id, item.job.attempt,
                   recorded.error().ToString());
      return;
    }
    switch (outcome.kind) {
      case Outcome::Kind::kSucceeded: state_->succeeded++; break;
      case Outcome::Kind::kFailed: state_->failed++; break;
      case Outcome::Kind::kTimedOut: state_->timed_out++; break;
    }
    if (*recorded == JobState::kQueued) state_->retried++;
  }

  void HeartbeatLoop() {
    std::unique_lock<std::mutex> lock(state_->mu);
    while (!state_->stopping) {
      state_->cv.wait_for(lock, options_.heartbeat_every, [&] { return state_->stopping; });
      if (state_->stopping) return;
      std::vector<std::pair<std::string, uint32_t>> leases;
      for (const auto& [key, held] : state_->leases) leases.push_back(key);
      lock.unlock();
      for (const auto& [id, attempt] : leases) {
        auto renewed = store_->Heartbeat(id, attempt, options_.lease);
        if (!renewed) {
          if (renewed.error().code == ErrorCode::kFailedPrecondition) state_->lost_leases++;
          spdlog::warn("job {} attempt {}: heartbeat failed: {}", id, attempt, renewed.error().ToString());
        }
      }
      lock.lock();
    }
  }

  JobStore* store_;
  PoolResolver resolver_;
  RunnerOptions options_;
  std::shared_ptr<RunnerState> state_;
  bool stopped_ = false;   // guarded by state_->mu
  bool claiming_ = true;   // guarded by state_->mu
  std::thread claimer_;
  std::thread heartbeater_;
  std::vector<std::thread> recorders_;
};

Result<std::unique_ptr<Runner>> Runner::Start(JobStore* store, PoolResolver resolver,
                                              RunnerOptions options) {
  if (!store || !resolver) return MakeError(ErrorCode::kInvalidArgument, "runner needs a store and a resolver");
  auto impl = std::make_unique<Impl>(store, std::move(resolver), std::move(options));
  impl->Start();
  return std::unique_ptr<Runner>(new Runner(std::move(impl)));
}

Runner::Runner(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Runner::~Runner() { Stop(std::chrono::seconds(5)); }

void Runner::Stop(std::chrono::milliseconds grace) { impl_->Stop(grace); }

RunnerStats Runner::Stats() const { return impl_->Stats(); }

}  // namespace keel::jobs
