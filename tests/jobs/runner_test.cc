// The runner on real stores: jobs run on the executor and every outcome is
// recorded; retries, timeouts, permanent failures, cancellation and
// backpressure.
#include "jobs/runner.h"

#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "base/file.h"
#include "abi/sandbox.h"
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
    auto runtime = Runtime::Create({.workers = 2});
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

  void StartRunner(PoolOptions pool_options = {}, RunnerOptions options = {}) {
    pools_ = std::make_unique<ModulePools>(runtime_.get(), store_.get(),
                                           abi::SandboxedPoolOptions(std::move(pool_options)));
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
  ASSERT_TRUE(Eventually([&] { return store_->Get(running)->state == JobState::kRunning; }));
  EXPECT_EQ(*store_->Cancel(running), CancelOutcome::kDetached);
  Job job = WaitFinished(running);
  EXPECT_EQ(job.state, JobState::kCancelled);
  EXPECT_EQ(std::string(job.result.begin(), job.result.end()), "kept");
  Job never = *store_->Get(queued);
  EXPECT_EQ(never.state, JobState::kCancelled);
  EXPECT_EQ(never.attempts, 0u);
}

TEST_P(RunnerTest, BackpressureWhenThePoolIsFull) {
  StartRunner({.instances = 1, .max_queue = 2}, {.max_in_flight = 64});
  std::vector<std::string> ids;
  for (int i = 0; i < 40; ++i) ids.push_back(Submit("echo", "5:j" + std::to_string(i)));
  for (const auto& id : ids) EXPECT_EQ(WaitFinished(id).state, JobState::kSucceeded);
  EXPECT_GT(runner_->Stats().backpressure_waits, 0u);
  // Backpressure never costs an attempt.
  for (const auto& id : ids) EXPECT_EQ(store_->Get(id)->attempts, 1u);
}

INSTANTIATE_TEST_SUITE_P(Stores, RunnerTest, ::testing::Values(Backend::kSqlite, Backend::kPostgres),
                         testing::BackendName);

}  // namespace
}  // namespace keel::jobs
