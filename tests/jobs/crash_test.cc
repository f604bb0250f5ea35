// Crash tests: `keel worker` processes killed with SIGKILL in the middle of
// work. No accepted job is lost, every job reaches a final state, only jobs
// that had started when their worker died run again, and jobs it had only
// claimed come back after their short claim lease, not the run lease.
//
// What a killed worker held is read from the store once nothing it sent can
// still land: a PostgreSQL server finishes a transaction whose COMMIT it
// has received even after the client is gone, so the test first waits for
// the worker's sessions to end (SQLite commits in the process, so a dead
// worker writes nothing more). The other worker is stopped (SIGSTOP) while
// the snapshot is taken, so that it cannot take over leases meanwhile.
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
    log_ = std::filesystem::temp_directory_path() /
           ("keel_crash_" + std::to_string(getpid()) + ".log");
  }

  void TearDown() override {
    for (int pid : pids_) {
      kill(pid, SIGCONT);
      kill(pid, SIGKILL);
      testing::WaitProcess(pid);
    }
    if (HasFailure()) {
      auto log = ReadFile(log_.string());
      if (log) std::cerr << "--- worker log ---\n" << std::string(log->begin(), log->end());
    }
    std::filesystem::remove(log_);
  }

  int StartWorker(const std::string& name, const std::string& lease = "2s") {
    int pid = testing::SpawnProcess({KEEL_BIN, "worker", "--store", location_->NameFor(name),
                                     "--name", name, "--lease", lease, "--workers", "2",
                                     "--max-in-flight", "8"},
                                    log_.string());
    EXPECT_GT(pid, 0);
    pids_.push_back(pid);
    return pid;
  }

  // Kills worker `name` and returns once nothing it sent can still change
  // the store.
  void Kill(int pid, const std::string& name) {
    ASSERT_EQ(kill(pid, SIGKILL), 0);
    EXPECT_EQ(testing::WaitProcess(pid), 128 + SIGKILL);
    std::erase(pids_, pid);
    if (location_->pg_url().empty()) return;
    std::string sessions =
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = '" + name + "'";
    EXPECT_TRUE(WaitUntil([&] { return testing::PgQueryInt(location_->pg_url(), sessions) == 0; },
                          30s))
        << "the sessions of " << name << " did not end";
  }

  std::vector<std::string> SubmitJobs(int n, const std::string& sleep_ms = "150",
                                      const std::string& tag = "job") {
    std::vector<std::string> ids;
    for (int i = 0; i < n; ++i) {
      JobSpec spec;
      spec.module_digest = digest_;
      spec.export_name = "echo";
      std::string input = sleep_ms + ":" + tag + "-" + std::to_string(i);
      spec.input.assign(input.begin(), input.end());
      spec.max_attempts = 10;
      spec.retry_backoff = 0ms;
      spec.idempotency_key = "crash-" + tag + "-" + std::to_string(i);
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

  // The jobs `runner` holds: all, or only those it started.
  std::set<std::string> HeldBy(const std::string& runner, bool started_only = false) {
    std::set<std::string> ids;
    auto running = store_->List({.state = JobState::kRunning, .limit = 10000});
    EXPECT_TRUE(running);
    if (running) {
      for (const Job& j : *running) {
        if (j.runner == runner && (!started_only || j.started_at)) ids.insert(j.id);
      }
    }
    return ids;
  }

  void ExpectAllSucceededAndOnlyStartedReRan(const std::vector<std::string>& ids,
                                             const std::set<std::string>& started_at_kill,
                                             const std::string& tag = "job") {
    for (size_t i = 0; i < ids.size(); ++i) {
      auto job = store_->Get(ids[i]);
      ASSERT_TRUE(job);
      EXPECT_EQ(job->state, JobState::kSucceeded) << ids[i];
      EXPECT_EQ(std::string(job->result.begin(), job->result.end()),
                tag + "-" + std::to_string(i));
      if (job->attempts > 1) {
        EXPECT_TRUE(started_at_kill.count(ids[i]))
            << ids[i] << " re-ran (" << job->attempts << " attempts, runner " << job->runner
            << ", last error " << (job->error ? job->error->ToString() : "none")
            << ") but had not been started by the killed worker";
      }
    }
  }

  std::filesystem::path log_;
  std::vector<int> pids_;
};

TEST_P(CrashTest, KilledWorkerLosesNoJob) {
  std::vector<std::string> ids = SubmitJobs(40);
  int a = StartWorker("worker-a");
  ASSERT_TRUE(WaitUntil([&] {
    return Count(JobState::kSucceeded) >= 5 && !HeldBy("worker-a", true).empty();
  }));
  Kill(a, "worker-a");
  // Usually not empty; but the worker may have been between jobs, or its
  // last starts not yet recorded (they are, a few milliseconds in).
  std::set<std::string> started = HeldBy("worker-a", /*started_only=*/true);
  StartWorker("worker-b");
  ASSERT_TRUE(WaitUntil([&] { return Count(JobState::kSucceeded) == 40; }))
      << "succeeded " << Count(JobState::kSucceeded);
  ExpectAllSucceededAndOnlyStartedReRan(ids, started);
  // The jobs that were running when the worker died ran again.
  for (const auto& id : started) EXPECT_GE(store_->Get(id)->attempts, 2u) << id;
}

TEST_P(CrashTest, TwoWorkersShareTheQueueAndOneIsKilled) {
  std::vector<std::string> ids = SubmitJobs(60);
  int a = StartWorker("worker-a");
  int b = StartWorker("worker-b");
  ASSERT_TRUE(WaitUntil([&] { return Count(JobState::kSucceeded) >= 10; }));
  ASSERT_EQ(kill(b, SIGSTOP), 0);
  Kill(a, "worker-a");
  std::set<std::string> started = HeldBy("worker-a", /*started_only=*/true);
  ASSERT_EQ(kill(b, SIGCONT), 0);
  ASSERT_TRUE(WaitUntil([&] { return Count(JobState::kSucceeded) == 60; }))
      << "succeeded " << Count(JobState::kSucceeded);
  ExpectAllSucceededAndOnlyStartedReRan(ids, started);
  auto all = store_->List({.limit = 1000});
  std::set<std::string> runners;
  for (const Job& j : *all) runners.insert(j.runner);
  EXPECT_TRUE(runners.count("worker-b"));
}

// Short jobs teach the worker to claim ahead; two long ones then hold both
// of its slots, so the short jobs it claimed after them wait, unstarted.
// Killed, it leaves those to their claim lease (5 s with a 60 s run
// lease): another worker runs them long before the long jobs' leases end,
// and they ran once.
TEST_P(CrashTest, ClaimedJobsOfAKilledWorkerComeBackBeforeItsRunLease) {
  std::vector<std::string> warmup = SubmitJobs(10, "0", "warm");
  std::vector<std::string> slow = SubmitJobs(2, "60000", "slow");
  std::vector<std::string> quick = SubmitJobs(12, "0", "quick");
  int a = StartWorker("worker-a", "60s");
  ASSERT_TRUE(WaitUntil([&] {
    std::set<std::string> started = HeldBy("worker-a", true);
    return started.count(slow[0]) && started.count(slow[1]) &&
           HeldBy("worker-a").size() > started.size();
  })) << "no claimed job waited behind the slow ones";
  Kill(a, "worker-a");
  std::set<std::string> claimed = HeldBy("worker-a");
  StartWorker("worker-b", "60s");
  ASSERT_TRUE(WaitUntil([&] { return Count(JobState::kSucceeded) == 22; }, 40s))
      << "succeeded " << Count(JobState::kSucceeded);
  ExpectAllSucceededAndOnlyStartedReRan(quick, {}, "quick");
  int claimed_quick = 0;
  for (const auto& id : quick) claimed_quick += claimed.count(id);
  EXPECT_GT(claimed_quick, 0);
  // The slow ones are still leased to the dead worker, which started them.
  for (const auto& id : slow) {
    Job job = *store_->Get(id);
    EXPECT_EQ(job.state, JobState::kRunning);
    EXPECT_EQ(job.runner, "worker-a");
    EXPECT_TRUE(job.started_at);
  }
}

INSTANTIATE_TEST_SUITE_P(Stores, CrashTest,
                         ::testing::Values(Backend::kSqlite, Backend::kPostgres),
                         testing::BackendName);

}  // namespace
}  // namespace keel::jobs
