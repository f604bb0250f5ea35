// Crash tests: `keel worker` processes killed with SIGKILL in the middle of
// work. No accepted job is lost, every job reaches a final state, and only
// jobs whose lease expired (they were running at the kill) run again.
#include <signal.h>
#include <unistd.h>

#include <iostream>
#include <set>
#include <thread>

#include <gtest/gtest.h>

#include "base/file.h"
#include "jobs/store.h"
#include "jobs/store_fixture.h"
#include "testing/subprocess.h"

namespace keel::jobs {
namespace {

using namespace std::chrono_literals;
using testing::Backend;

class CrashTest : public testing::StoreTest {
 protected:
  void SetUp() override {
    StoreTest::SetUp();
    log_ = std::filesystem::temp_directory_path() / ("keel_crash_" + std::to_string(getpid()) + ".log");
  }

  void TearDown() override {
    for (int pid : pids_) {
      kill(pid, SIGKILL);
      testing::WaitProcess(pid);
    }
    if (HasFailure()) {
      auto log = ReadFile(log_.string());
      if (log) std::cerr << "--- worker log ---\n" << std::string(log->begin(), log->end());
    }
    std::filesystem::remove(log_);
  }

  int StartWorker(const std::string& name) {
    int pid = testing::SpawnProcess({KEEL_BIN, "worker", "--store", location_->name(), "--name", name,
                                     "--lease", "1s", "--workers", "2", "--max-in-flight", "8"},
                                    log_.string());
    EXPECT_GT(pid, 0);
    pids_.push_back(pid);
    return pid;
  }

  void Kill(int pid) {
    ASSERT_EQ(kill(pid, SIGKILL), 0);
    EXPECT_EQ(testing::WaitProcess(pid), 128 + SIGKILL);
    std::erase(pids_, pid);
  }

  std::vector<std::string> SubmitJobs(int n) {
    std::vector<std::string> ids;
    for (int i = 0; i < n; ++i) {
      JobSpec spec;
      spec.module_digest = digest_;
      spec.export_name = "echo";
      std::string input = "150:job-" + std::to_string(i);
      spec.input.assign(input.begin(), input.end());
      spec.max_attempts = 10;
      spec.retry_backoff = 0ms;
      spec.idempotency_key = "crash-" + std::to_string(i);
      auto r = store_->Submit(spec);
      EXPECT_TRUE(r) << r.error().ToString();
      ids.push_back(r->id);
    }
    return ids;
  }

  int Count(JobState state) {
    auto counts = store_->CountByState();
    return counts ? static_cast<int>((*counts)[static_cast<size_t>(state)]) : -1;
  }

  bool WaitUntil(const std::function<bool()>& pred, std::chrono::seconds limit = 90s) {
    auto until = std::chrono::steady_clock::now() + limit;
    while (!pred()) {
      if (std::chrono::steady_clock::now() > until) return false;
      std::this_thread::sleep_for(20ms);
    }
    return true;
  }

  // After the kill: which jobs held a lease of the dead worker.
  std::set<std::string> RunningJobs() {
    std::set<std::string> ids;
    auto running = store_->List({.state = JobState::kRunning, .limit = 10000});
    if (running) {
      for (const Job& j : *running) ids.insert(j.id);
    }
    return ids;
  }

  void ExpectAllSucceededAndOnlyLeasedReRan(const std::vector<std::string>& ids,
                                            const std::set<std::string>& leased_at_kill) {
    for (size_t i = 0; i < ids.size(); ++i) {
      auto job = store_->Get(ids[i]);
      ASSERT_TRUE(job);
      EXPECT_EQ(job->state, JobState::kSucceeded) << ids[i];
      EXPECT_EQ(std::string(job->result.begin(), job->result.end()), "job-" + std::to_string(i));
      if (job->attempts > 1) {
        EXPECT_TRUE(leased_at_kill.count(ids[i]))
            << ids[i] << " re-ran (" << job->attempts << " attempts, runner " << job->runner
            << ", last error " << (job->error ? job->error->ToString() : "none")
            << ") but was not leased by the killed worker";
      }
    }
  }

  std::filesystem::path log_;
  std::vector<int> pids_;
};

TEST_P(CrashTest, KilledWorkerLosesNoJob) {
  std::vector<std::string> ids = SubmitJobs(40);
  int a = StartWorker("worker-a");
  ASSERT_TRUE(WaitUntil([&] { return Count(JobState::kSucceeded) >= 5 && Count(JobState::kRunning) > 0; }));
  Kill(a);
  std::set<std::string> leased = RunningJobs();
  EXPECT_FALSE(leased.empty());
  StartWorker("worker-b");
  ASSERT_TRUE(WaitUntil([&] { return Count(JobState::kSucceeded) == 40; }))
      << "succeeded " << Count(JobState::kSucceeded);
  ExpectAllSucceededAndOnlyLeasedReRan(ids, leased);
  // The jobs that were running when the worker died ran again.
  for (const auto& id : leased) EXPECT_GE(store_->Get(id)->attempts, 2u) << id;
}

TEST_P(CrashTest, TwoWorkersShareTheQueueAndOneIsKilled) {
  std::vector<std::string> ids = SubmitJobs(60);
  int a = StartWorker("worker-a");
  StartWorker("worker-b");
  ASSERT_TRUE(WaitUntil([&] { return Count(JobState::kSucceeded) >= 10; }));
  Kill(a);
  std::set<std::string> leased;
  auto running = store_->List({.state = JobState::kRunning, .limit = 10000});
  ASSERT_TRUE(running);
  for (const Job& j : *running) {
    if (j.runner == "worker-a") leased.insert(j.id);
  }
  ASSERT_TRUE(WaitUntil([&] { return Count(JobState::kSucceeded) == 60; }))
      << "succeeded " << Count(JobState::kSucceeded);
  ExpectAllSucceededAndOnlyLeasedReRan(ids, leased);
  auto all = store_->List({.limit = 1000});
  std::set<std::string> runners;
  for (const Job& j : *all) runners.insert(j.runner);
  EXPECT_TRUE(runners.count("worker-b"));
}

INSTANTIATE_TEST_SUITE_P(Stores, CrashTest, ::testing::Values(Backend::kSqlite, Backend::kPostgres),
                         testing::BackendName);

}  // namespace
}  // namespace keel::jobs
