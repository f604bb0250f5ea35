// The runner on real stores: jobs run on the executor and every outcome is
// recorded; retries, timeouts, permanent failures, cancellation,
// backpressure, what it claims and when a job's deadline starts.
#include "jobs/runner.h"

#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "base/file.h"
#include "abi/sandbox.h"
#include "base/test_engine.h"
#include "jobs/module_pools.h"
#include "jobs/store_fixture.h"

namespace keel::jobs {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;
using testing::Backend;

template <typename Pred>
bool Eventually(Pred pred, std::chrono::milliseconds limit = 60s) {
  auto until = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

std::vector<uint8_t> Bytes(std::string_view s) { return {s.begin(), s.end()}; }

class RunnerTest : public testing::StoreTest {
 protected:
  void SetUp() override {
    StoreTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    auto runtime = Runtime::Create({.engine = TestEngine(), .workers = 2});
    ASSERT_TRUE(runtime);
    runtime_ = std::move(*runtime);
  }

  void TearDown() override {
    if (runner_) runner_->Stop(10s);
    if (runtime_) runtime_->Shutdown(5s);
    runner_.reset();
    pools_.reset();
    store_.reset();
  }

  void CreatePools(PoolOptions pool_options = {}) {
    pools_ = std::make_unique<ModulePools>(runtime_.get(), store_.get(),
                                           abi::SandboxedPoolOptions(std::move(pool_options)));
  }

  void StartRunner(PoolOptions pool_options = {}, RunnerOptions options = {}) {
    if (!pools_) CreatePools(std::move(pool_options));
    options.idle_wait = 100ms;
    auto runner = Runner::Start(
        store_.get(), [this](const std::string& d) { return pools_->ForDigest(d); }, options);
    ASSERT_TRUE(runner);
    runner_ = std::move(*runner);
  }

  std::string Submit(std::string export_name, std::string input, uint32_t attempts = 3,
                     std::chrono::milliseconds deadline = 10s) {
    JobSpec spec;
    spec.module_digest = digest_;
    spec.export_name = std::move(export_name);
    spec.input = Bytes(input);
    spec.max_attempts = attempts;
    spec.deadline = deadline;
    spec.retry_backoff = 0ms;
    auto r = store_->Submit(spec);
    EXPECT_TRUE(r) << r.error().ToString();
    return r ? r->id : "";
  }

  Job WaitFinished(const std::string& id) {
    Job job;
    EXPECT_TRUE(Eventually([&] {
      auto j = store_->Get(id);
      if (!j) return false;
      job = *j;
      return IsFinished(j->state);
    })) << "job " << id << " did not finish";
    return job;
  }

  std::unique_ptr<Runtime> runtime_;
  std::unique_ptr<ModulePools> pools_;
  std::unique_ptr<Runner> runner_;
};

TEST_P(RunnerTest, RunsJobsAndRecordsResults) {
  StartRunner();
  std::vector<std::string> ids;
  for (int i = 0; i < 50; ++i) ids.push_back(Submit("echo", "0:payload-" + std::to_string(i)));
  for (int i = 0; i < 50; ++i) {
    Job job = WaitFinished(ids[i]);
    EXPECT_EQ(job.state, JobState::kSucceeded);
    EXPECT_EQ(std::string(job.result.begin(), job.result.end()), "payload-" + std::to_string(i));
    EXPECT_EQ(job.attempts, 1u);
  }
  // The store records an outcome before the runner counts it.
  EXPECT_TRUE(Eventually([&] { return runner_->Stats().succeeded == 50u; }));
}

TEST_P(RunnerTest, FailuresAreRetriedUntilDead) {
  StartRunner();
  Job job = WaitFinished(Submit("fail", "x", 3));
  EXPECT_EQ(job.state, JobState::kDead);
  EXPECT_EQ(job.attempts, 3u);
  ASSERT_TRUE(job.error);
  EXPECT_EQ(job.error->code, ErrorCode::kTrap);
}

TEST_P(RunnerTest, DeadlinePerAttemptTimesOut) {
  StartRunner();
  Job job = WaitFinished(Submit("echo", "60000:never", 1, 100ms));
  EXPECT_EQ(job.state, JobState::kDead);
  ASSERT_TRUE(job.error);
  EXPECT_EQ(job.error->code, ErrorCode::kDeadlineExceeded);
  // The instance that was interrupted was replaced; the next job runs.
  EXPECT_EQ(WaitFinished(Submit("echo", "0:after")).state, JobState::kSucceeded);
}

// A guest that writes bytes that are not text to stderr and traps: the
// outcome is recorded (PostgreSQL refused the message, so the job stayed
// running for a lease, ran again and ended dead), the message as text.
TEST_P(RunnerTest, TrapWithAnyBytesOnStderrIsRecorded) {
  StartRunner();
  Job job = WaitFinished(Submit("shout", std::string("bad \xff\0 bytes \xe2\x82", 15), 1));
  EXPECT_EQ(job.state, JobState::kDead);
  EXPECT_EQ(job.attempts, 1u);
  ASSERT_TRUE(job.error);
  EXPECT_EQ(job.error->code, ErrorCode::kTrap);
  EXPECT_THAT(job.error->message, HasSubstr("bad \uFFFD\uFFFD bytes \uFFFD"));
  EXPECT_EQ(runner_->Stats().lost_leases, 0u);
}

TEST_P(RunnerTest, UnknownExportFailsWithoutRetry) {
  StartRunner();
  Job job = WaitFinished(Submit("no_such_export", "x", 5));
  EXPECT_EQ(job.state, JobState::kFailed);
  EXPECT_EQ(job.attempts, 1u);
  EXPECT_THAT(job.error->message, HasSubstr("no_such_export"));
}

TEST_P(RunnerTest, CancelledQueuedJobNeverRunsAndRunningOneKeepsItsResult) {
  std::string queued = Submit("echo", "0:never");
  auto cancelled = store_->Cancel(queued);
  ASSERT_TRUE(cancelled);
  EXPECT_EQ(*cancelled, CancelOutcome::kWithdrawn);
  StartRunner();
  std::string running = Submit("echo", "300:kept");
  ASSERT_TRUE(Eventually([&] { return store_->Get(running)->started_at.has_value(); }));
  EXPECT_EQ(*store_->Cancel(running), CancelOutcome::kDetached);
  Job job = WaitFinished(running);
  EXPECT_EQ(job.state, JobState::kCancelled);
  EXPECT_EQ(std::string(job.result.begin(), job.result.end()), "kept");
  Job never = *store_->Get(queued);
  EXPECT_EQ(never.state, JobState::kCancelled);
  EXPECT_EQ(never.attempts, 0u);
}

// The runner fills no pool's queue itself; another caller of the same pool
// can, and then the runner waits.
TEST_P(RunnerTest, BackpressureWhenThePoolIsFull) {
  CreatePools({.instances = 1, .max_queue = 2});
  auto pool = pools_->ForDigest(digest_);
  ASSERT_TRUE(pool) << pool.error().ToString();
  // Another caller fills the pool: one call running (2 s) and the queue
  // full behind it.
  std::vector<Call> others;
  for (int i = 0; i < 3; ++i) {
    auto call = (*pool)->SubmitBytes("echo", Bytes(i == 0 ? "2000:other" : "0:other"));
    ASSERT_TRUE(call) << call.error().ToString();
    others.push_back(std::move(*call));
    if (i == 0) {
      ASSERT_TRUE(Eventually([&] { return others[0].state() == CallState::kRunning; }));
    }
  }
  ASSERT_EQ((*pool)->SubmitBytes("echo", Bytes("0:x")).error().code, ErrorCode::kOverloaded);
  std::vector<std::string> ids;
  for (int i = 0; i < 10; ++i) ids.push_back(Submit("echo", "5:j" + std::to_string(i)));
  StartRunner();
  for (const auto& id : ids) EXPECT_EQ(WaitFinished(id).state, JobState::kSucceeded);
  EXPECT_GT(runner_->Stats().backpressure_waits, 0u);
  // Backpressure never costs an attempt.
  for (const auto& id : ids) EXPECT_EQ(store_->Get(id)->attempts, 1u);
  for (auto& call : others) EXPECT_TRUE(call.Wait());
}

// 30 jobs of 100 ms on two workers take 1.5 s; each may take 1 s from its
// start. Counted from the claim (or from a wait in a local queue), the
// later ones would be out of time before they began.
TEST_P(RunnerTest, DeadlineStartsWhenTheJobStarts) {
  std::vector<std::string> ids;
  for (int i = 0; i < 30; ++i) {
    ids.push_back(Submit("echo", "100:j" + std::to_string(i), /*attempts=*/1, 1000ms));
  }
  StartRunner();
  for (const auto& id : ids) {
    Job job = WaitFinished(id);
    EXPECT_EQ(job.state, JobState::kSucceeded) << (job.error ? job.error->ToString() : "");
    EXPECT_EQ(job.attempts, 1u);
    ASSERT_TRUE(job.started_at);
    EXPECT_GE(*job.finished_at, *job.started_at);
  }
}

// With slow jobs and two workers the runner holds about two leases, not
// the whole queue.
TEST_P(RunnerTest, ClaimsOnlyWhatItCanStartSoon) {
  std::vector<std::string> ids;
  for (int i = 0; i < 20; ++i) ids.push_back(Submit("echo", "200:j" + std::to_string(i)));
  StartRunner();
  int64_t most_leased = 0;
  ASSERT_TRUE(Eventually([&] {
    auto counts = store_->CountByState();
    if (!counts) return false;
    most_leased = std::max(most_leased, (*counts)[static_cast<size_t>(JobState::kRunning)]);
    return (*counts)[static_cast<size_t>(JobState::kSucceeded)] == 20;
  }));
  // Two running, and for a moment two more: claimed while the outcomes of
  // the two before them were being recorded.
  EXPECT_LE(most_leased, 4);
  EXPECT_GE(most_leased, 1);
  for (const auto& id : ids) EXPECT_EQ(store_->Get(id)->attempts, 1u);
}

// One instance and room for two jobs: the second is claimed and waits for
// the instance; stopping gives it back at once, uncounted, instead of
// leaving it to its lease.
TEST_P(RunnerTest, StopGivesBackClaimedJobsThatDidNotStart) {
  std::string first = Submit("echo", "1000:first");
  std::string second = Submit("echo", "0:second");
  std::string third = Submit("echo", "0:third");
  StartRunner({.instances = 1}, {.concurrency = 2, .lease = 60s});
  ASSERT_TRUE(Eventually([&] {
    return runner_->Stats().waiting == 1 && store_->Get(first)->started_at.has_value();
  }));
  EXPECT_EQ(store_->Get(second)->state, JobState::kRunning);  // leased
  EXPECT_EQ(store_->Get(third)->state, JobState::kQueued);   // not claimed: no room
  runner_->Stop(0ms);
  Job released = *store_->Get(second);
  EXPECT_EQ(released.state, JobState::kQueued);
  EXPECT_EQ(released.attempts, 0u);
  EXPECT_FALSE(released.lease_until);
  EXPECT_EQ(store_->Get(third)->state, JobState::kQueued);
  // The running one keeps its lease: it is not known to be unfinished.
  EXPECT_EQ(store_->Get(first)->state, JobState::kRunning);
  EXPECT_EQ(runner_->Stats().released, 1u);
}

// A claimed job is running to the store: a cancel detaches it; it runs
// when its slot frees and ends cancelled with its result kept.
TEST_P(RunnerTest, CancelledClaimedJobRunsAndKeepsItsResult) {
  std::string first = Submit("echo", "500:first");
  std::string second = Submit("echo", "0:second");
  StartRunner({.instances = 1}, {.concurrency = 2});
  ASSERT_TRUE(Eventually([&] { return runner_->Stats().waiting == 1; }));
  EXPECT_EQ(store_->Cancel(second), CancelOutcome::kDetached);
  EXPECT_EQ(WaitFinished(first).state, JobState::kSucceeded);
  Job job = WaitFinished(second);
  EXPECT_EQ(job.state, JobState::kCancelled);
  EXPECT_EQ(job.attempts, 1u);
  EXPECT_EQ(std::string(job.result.begin(), job.result.end()), "second");
}

INSTANTIATE_TEST_SUITE_P(Stores, RunnerTest,
                         ::testing::Values(Backend::kSqlite, Backend::kPostgres),
                         testing::BackendName);

}  // namespace
}  // namespace keel::jobs
