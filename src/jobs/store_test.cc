// The same behaviour suite over both stores. The PostgreSQL half needs a
// server: KEEL_TEST_PG_URL (scripts/pg-test-server prints it); without it
// those tests are skipped. Each PostgreSQL test gets its own schema.
#include "jobs/store.h"

#include <gtest/gtest.h>
#include <libpq-fe.h>
#include <spawn.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "base/sha256.h"
#include "jobs/internal.h"

namespace keel::jobs {
namespace {

using std::chrono::milliseconds;
using namespace std::chrono_literals;
using namespace std::string_literals;
using namespace std::string_view_literals;

enum class Backend { kSqlite, kPostgres };

std::vector<uint8_t> Bytes(std::string_view text) {
  return std::vector<uint8_t>(text.begin(), text.end());
}

constexpr char kClaimerVar[] = "KEEL_JOBS_TEST_CLAIMER";

// The claiming child of ConcurrentProcessesNeverGetTheSameJob: claims from
// `store` until nothing is left and writes the ids to `out`, one a line.
// Returns the exit status.
int RunClaimer(const std::string& store_name, const std::string& out_path) {
  Result<std::unique_ptr<JobStore>> store = OpenStore(store_name);
  if (!store) return 1;
  std::ofstream out(out_path);
  ClaimRequest request;
  request.runner = "child-" + std::to_string(getpid());
  request.max_jobs = 2;
  while (true) {
    Result<std::vector<ClaimedJob>> claimed = (*store)->Claim(request);
    if (!claimed) return 2;
    if (claimed->empty()) return out.good() ? 0 : 3;
    for (const ClaimedJob& job : *claimed) out << job.id << "\n";
  }
}

// In a child started by SpawnClaimer, claim and exit before any test runs.
[[maybe_unused]] const bool kIsClaimer = [] {
  const char* spec = std::getenv(kClaimerVar);
  if (spec == nullptr) return false;
  std::string_view text(spec);
  size_t tab = text.find('\t');
  std::exit(RunClaimer(std::string(text.substr(0, tab)), std::string(text.substr(tab + 1))));
}();

// Starts this test binary as a claimer child; returns its pid, or -1.
pid_t SpawnClaimer(const std::string& store_name, const std::string& out_path) {
  std::string var = std::string(kClaimerVar) + "=" + store_name + "\t" + out_path;
  std::vector<char*> env;
  for (char** e = environ; *e != nullptr; ++e) env.push_back(*e);
  env.push_back(var.data());
  env.push_back(nullptr);
  char arg0[] = "keel_jobs_test";
  char* argv[] = {arg0, nullptr};
  pid_t pid = -1;
  if (posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, argv, env.data()) != 0) return -1;
  return pid;
}

// Runs one SQL command on the server of `url`; fails the test on error.
void PgCommand(const std::string& url, const std::string& sql) {
  PGconn* conn = PQconnectdb(url.c_str());
  ASSERT_EQ(PQstatus(conn), CONNECTION_OK) << PQerrorMessage(conn);
  PQsetNoticeProcessor(
      conn, [](void*, const char*) {}, nullptr);  // "drop cascades to ..."
  PGresult* result = PQexec(conn, sql.c_str());
  EXPECT_EQ(PQresultStatus(result), PGRES_COMMAND_OK) << PQresultErrorMessage(result);
  PQclear(result);
  PQfinish(conn);
}

// Holds the store's write lock from a connection of its own (PostgreSQL: an
// EXCLUSIVE lock on keel_jobs, which admits reads; SQLite: a write
// transaction), so that writes handed to the store wait and then go in as
// few transactions as its lanes allow once Release()d.
class WriteBlocker {
 public:
  WriteBlocker(Backend backend, const std::string& pg_url, const std::string& schema,
               const std::filesystem::path& dir) {
    if (backend == Backend::kPostgres) {
      pg_ = PQconnectdb(pg_url.c_str());
      EXPECT_EQ(PQstatus(pg_), CONNECTION_OK) << PQerrorMessage(pg_);
      Pg("BEGIN");
      Pg("LOCK TABLE " + schema + ".keel_jobs IN EXCLUSIVE MODE");
    } else {
      EXPECT_EQ(sqlite3_open((dir / "keel.db").c_str(), &sqlite_), SQLITE_OK);
      Sqlite("BEGIN IMMEDIATE");
    }
  }
  ~WriteBlocker() {
    Release();
    if (pg_ != nullptr) PQfinish(pg_);
    if (sqlite_ != nullptr) sqlite3_close(sqlite_);
  }

  void Release() {
    if (released_) return;
    released_ = true;
    if (pg_ != nullptr) Pg("COMMIT");
    if (sqlite_ != nullptr) Sqlite("COMMIT");
  }

 private:
  void Pg(const std::string& sql) {
    PGresult* result = PQexec(pg_, sql.c_str());
    EXPECT_EQ(PQresultStatus(result), PGRES_COMMAND_OK) << PQresultErrorMessage(result);
    PQclear(result);
  }
  void Sqlite(const char* sql) {
    EXPECT_EQ(sqlite3_exec(sqlite_, sql, nullptr, nullptr, nullptr), SQLITE_OK)
        << sqlite3_errmsg(sqlite_);
  }

  PGconn* pg_ = nullptr;
  sqlite3* sqlite_ = nullptr;
  bool released_ = false;
};

class StoreTest : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    static int counter = 0;
    std::string unique = std::to_string(getpid()) + "_" + std::to_string(++counter);
    if (GetParam() == Backend::kPostgres) {
      const char* url = std::getenv("KEEL_TEST_PG_URL");
      if (url == nullptr || url[0] == '\0') {
        GTEST_SKIP() << "KEEL_TEST_PG_URL is not set (start a server with "
                        "scripts/pg-test-server)";
      }
      pg_url_ = url;
      schema_ = "keel_test_" + unique;
      ASSERT_NO_FATAL_FAILURE(PgCommand(pg_url_, "CREATE SCHEMA " + schema_));
      name_ = pg_url_ + (pg_url_.find('?') == std::string::npos ? "?" : "&") +
              "options=-csearch_path%3D" + schema_;
    } else {
      dir_ = std::filesystem::temp_directory_path() / ("keel_jobs_test_" + unique);
      std::filesystem::remove_all(dir_);
      name_ = dir_.string();
    }
    store_ = Open();
    ASSERT_NE(store_, nullptr);
    Result<std::string> digest = store_->PutModule(Bytes("\0asm module bytes"sv));
    ASSERT_TRUE(digest) << digest.error().ToString();
    module_ = *digest;
  }

  void TearDown() override {
    store_.reset();
    if (!schema_.empty()) PgCommand(pg_url_, "DROP SCHEMA " + schema_ + " CASCADE");
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  std::unique_ptr<JobStore> Open(const StoreOptions& options = {}) {
    Result<std::unique_ptr<JobStore>> store = OpenStore(name_, options);
    EXPECT_TRUE(store) << store.error().ToString();
    return store ? std::move(*store) : nullptr;
  }

  JobSpec Spec(std::string_view input = "in") const {
    JobSpec spec;
    spec.module_digest = module_;
    spec.export_name = "run";
    spec.input = Bytes(input);
    spec.deadline = 5s;
    spec.max_attempts = 3;
    spec.retry_backoff = 0ms;
    return spec;
  }

  std::string SubmitOk(const JobSpec& spec) {
    Result<SubmitResult> submitted = store_->Submit(spec);
    EXPECT_TRUE(submitted) << submitted.error().ToString();
    return submitted ? submitted->id : std::string();
  }

  std::vector<ClaimedJob> ClaimOk(JobStore& store, size_t max_jobs, milliseconds lease = 30s,
                                  std::string runner = "runner-a") {
    ClaimRequest request;
    request.runner = std::move(runner);
    request.max_jobs = max_jobs;
    request.lease = lease;
    Result<std::vector<ClaimedJob>> claimed = store.Claim(request);
    EXPECT_TRUE(claimed) << claimed.error().ToString();
    return claimed ? std::move(*claimed) : std::vector<ClaimedJob>();
  }

  // Claims until a job comes back or 20 s pass (leases and backoff expire
  // on the store's clock; no exact timing is assumed).
  std::vector<ClaimedJob> ClaimEventually(JobStore& store, milliseconds lease, std::string runner) {
    auto give_up = std::chrono::steady_clock::now() + 20s;
    while (std::chrono::steady_clock::now() < give_up) {
      ClaimRequest request;
      request.runner = runner;
      request.lease = lease;
      request.wait = 100ms;
      Result<std::vector<ClaimedJob>> claimed = store.Claim(request);
      EXPECT_TRUE(claimed) << claimed.error().ToString();
      if (!claimed || !claimed->empty()) return claimed ? *claimed : std::vector<ClaimedJob>();
    }
    return {};
  }

  Job GetOk(std::string_view id) {
    Result<Job> job = store_->Get(id);
    EXPECT_TRUE(job) << job.error().ToString();
    return job ? *job : Job();
  }

  // Runs `calls` (each a store call on its own thread) while the store's
  // writes are held back, until all of them are waiting for `store`; then
  // lets them go, so that they share transactions (with one commit lane,
  // one transaction: the batch paths), and joins them.
  void RunBatched(JobStore& store, std::vector<std::function<void()>> calls) {
    WriteBlocker blocker(GetParam(), pg_url_, schema_, dir_);
    uint64_t before = store.commit_stats().waiting;
    std::vector<std::thread> threads;
    for (auto& call : calls) threads.emplace_back(std::move(call));
    auto give_up = std::chrono::steady_clock::now() + 20s;
    while (store.commit_stats().waiting < before + threads.size() &&
           std::chrono::steady_clock::now() < give_up) {
      std::this_thread::yield();
    }
    EXPECT_EQ(store.commit_stats().waiting, before + threads.size());
    blocker.Release();
    for (auto& thread : threads) thread.join();
  }

  // Fails jobs with this export name in the database itself (a constraint
  // keel does not know of), so that one row of a batch fails there.
  void RefuseExportInDatabase(std::string_view export_name) {
    if (GetParam() == Backend::kPostgres) {
      PgCommand(pg_url_, "ALTER TABLE " + schema_ + ".keel_jobs ADD CONSTRAINT test_refused "
                         "CHECK (export_name <> '" + std::string(export_name) + "')");
      return;
    }
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open((dir_ / "keel.db").c_str(), &db), SQLITE_OK);
    std::string sql = "CREATE TRIGGER test_refused BEFORE INSERT ON keel_jobs WHEN "
                      "NEW.export_name = '" + std::string(export_name) +
                      "' BEGIN SELECT RAISE(ABORT, 'refused by test_refused'); END";
    EXPECT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr), SQLITE_OK)
        << sqlite3_errmsg(db);
    sqlite3_close(db);
  }

  std::string pg_url_;
  std::string schema_;
  std::filesystem::path dir_;
  std::string name_;
  std::unique_ptr<JobStore> store_;
  std::string module_;
};

TEST_P(StoreTest, ModulesAreContentAddressed) {
  std::vector<uint8_t> bytes(1 << 20);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 7);
  Result<std::string> digest = store_->PutModule(bytes);
  ASSERT_TRUE(digest) << digest.error().ToString();
  EXPECT_EQ(*digest, Sha256Hex(bytes));
  EXPECT_EQ(store_->PutModule(bytes), *digest);  // same bytes, same digest
  Result<std::vector<uint8_t>> back = store_->GetModule(*digest);
  ASSERT_TRUE(back) << back.error().ToString();
  EXPECT_EQ(*back, bytes);

  Result<std::string> empty = store_->PutModule({});
  ASSERT_TRUE(empty);
  EXPECT_EQ(store_->GetModule(*empty), std::vector<uint8_t>());

  EXPECT_EQ(store_->GetModule(std::string(64, 'a')).error().code, ErrorCode::kNotFound);
  EXPECT_EQ(store_->GetModule("not-a-digest").error().code, ErrorCode::kInvalidArgument);
}

TEST_P(StoreTest, SubmitThenGetReturnsTheCommittedJob) {
  JobSpec spec = Spec(std::string_view("\0binary\xff", 8));
  spec.deadline = 1234ms;
  spec.max_attempts = 7;
  spec.retry_backoff = 250ms;
  auto before = Clock::now() - 1s;
  Result<SubmitResult> submitted = store_->Submit(spec);
  ASSERT_TRUE(submitted) << submitted.error().ToString();
  EXPECT_TRUE(submitted->created);
  EXPECT_EQ(submitted->id.size(), 26u);

  Job job = GetOk(submitted->id);
  EXPECT_EQ(job.id, submitted->id);
  EXPECT_EQ(job.state, JobState::kQueued);
  EXPECT_EQ(job.attempts, 0u);
  EXPECT_FALSE(job.cancel_requested);
  EXPECT_EQ(job.spec.module_digest, module_);
  EXPECT_EQ(job.spec.export_name, "run");
  EXPECT_EQ(job.spec.input, spec.input);
  EXPECT_EQ(job.spec.deadline, 1234ms);
  EXPECT_EQ(job.spec.max_attempts, 7u);
  EXPECT_EQ(job.spec.retry_backoff, 250ms);
  EXPECT_TRUE(job.spec.idempotency_key.empty());
  EXPECT_GT(job.created_at, before);
  EXPECT_LT(job.created_at, Clock::now() + 1s);
  EXPECT_FALSE(job.lease_until);
  EXPECT_FALSE(job.finished_at);
  EXPECT_FALSE(job.error);

  EXPECT_EQ(store_->Get("01NOSUCHJOB0000000000000000").error().code, ErrorCode::kNotFound);
}

TEST_P(StoreTest, SubmitRejectsMalformedSpecsAndUnknownModules) {
  JobSpec spec = Spec();
  spec.export_name.clear();
  EXPECT_EQ(store_->Submit(spec).error().code, ErrorCode::kInvalidArgument);
  spec = Spec();
  spec.max_attempts = 0;
  EXPECT_EQ(store_->Submit(spec).error().code, ErrorCode::kInvalidArgument);
  spec = Spec();
  spec.deadline = 0ms;
  EXPECT_EQ(store_->Submit(spec).error().code, ErrorCode::kInvalidArgument);
  spec = Spec();
  spec.module_digest = "xyz";
  EXPECT_EQ(store_->Submit(spec).error().code, ErrorCode::kInvalidArgument);
  spec = Spec();
  spec.module_digest = std::string(64, 'b');
  EXPECT_EQ(store_->Submit(spec).error().code, ErrorCode::kNotFound);
  EXPECT_EQ(store_->CountByState()->at(static_cast<size_t>(JobState::kQueued)), 0);
}

TEST_P(StoreTest, IdempotencyKeyAdmitsOneJob) {
  JobSpec spec = Spec();
  spec.idempotency_key = "order-17";
  Result<SubmitResult> first = store_->Submit(spec);
  ASSERT_TRUE(first);
  EXPECT_TRUE(first->created);
  Result<SubmitResult> second = store_->Submit(spec);
  ASSERT_TRUE(second);
  EXPECT_FALSE(second->created);
  EXPECT_EQ(second->id, first->id);
  EXPECT_EQ(GetOk(first->id).spec.idempotency_key, "order-17");

  // Racing submitters with one key: exactly one creates it, all see its id.
  spec.idempotency_key = "race";
  std::vector<Result<SubmitResult>> results(16);
  std::vector<std::thread> threads;
  for (auto& result : results) {
    threads.emplace_back([&] { result = store_->Submit(spec); });
  }
  for (auto& thread : threads) thread.join();
  int created = 0;
  for (auto& result : results) {
    ASSERT_TRUE(result) << result.error().ToString();
    EXPECT_EQ(result->id, results[0]->id);
    created += result->created;
  }
  EXPECT_EQ(created, 1);

  // Jobs without a key never collide.
  EXPECT_NE(SubmitOk(Spec()), SubmitOk(Spec()));
  EXPECT_EQ(store_->CountByState()->at(static_cast<size_t>(JobState::kQueued)), 4);
}

// What a guest writes to stderr before it traps ends up in the error: any
// bytes, cut anywhere. PostgreSQL text refused them (and the outcome was
// lost); both stores now keep them as valid UTF-8.
TEST_P(StoreTest, ErrorMessagesOfAnyBytesAreStoredAsValidText) {
  const std::string message = "bad \xff byte, nul \0 here, cut \xe2\x82"s;
  const std::string kept = "bad \uFFFD byte, nul \uFFFD here, cut \uFFFD";
  const std::string valid = "caf\u00e9 \u2713 \U0001F600";  // stays as it is
  std::string failed = SubmitOk(Spec("a"));
  std::string retried = SubmitOk(Spec("b"));
  std::string fine = SubmitOk(Spec("c"));
  ASSERT_EQ(ClaimOk(*store_, 3).size(), 3u);
  Result<JobState> state =
      store_->Complete(failed, 1, Outcome::Failed(Error(ErrorCode::kTrap, message), false));
  ASSERT_TRUE(state) << state.error().ToString();
  EXPECT_EQ(*state, JobState::kFailed);
  state = store_->Complete(retried, 1, Outcome::Failed(Error(ErrorCode::kTrap, message), true));
  ASSERT_TRUE(state) << state.error().ToString();
  EXPECT_EQ(*state, JobState::kQueued);
  ASSERT_TRUE(store_->Complete(fine, 1, Outcome::Failed(Error(ErrorCode::kTrap, valid), false)));
  EXPECT_EQ(GetOk(failed).error->message, kept);
  EXPECT_EQ(GetOk(retried).error->message, kept);
  EXPECT_EQ(GetOk(fine).error->message, valid);
  Result<std::vector<Job>> listed = store_->List({.state = JobState::kFailed});
  ASSERT_TRUE(listed);
  for (const Job& job : *listed) {
    EXPECT_EQ(job.error->message, job.id == failed ? kept : valid);
  }
}

// Keys and names are stored exactly, so they must be text PostgreSQL can
// hold: NUL (which libpq silently cut off, so "a\0b" and "a\0c" were one
// key) and invalid UTF-8 are refused on both stores.
TEST_P(StoreTest, KeysAndNamesWithNulOrInvalidUtf8AreRefused) {
  for (std::string bad : {"a\0b"s, "a\0c"s, "\0"s, "key \xff"s, "\xc0\xaf"s}) {
    JobSpec keyed = Spec();
    keyed.idempotency_key = bad;
    Result<SubmitResult> submitted = store_->Submit(keyed);
    ASSERT_FALSE(submitted) << "key accepted";
    EXPECT_EQ(submitted.error().code, ErrorCode::kInvalidArgument);
    EXPECT_NE(submitted.error().message.find("idempotency key"), std::string::npos);
    JobSpec named = Spec();
    named.export_name = "run" + bad;
    EXPECT_EQ(store_->Submit(named).error().code, ErrorCode::kInvalidArgument);
    ClaimRequest request{.runner = "runner" + bad};
    EXPECT_EQ(store_->Claim(request).error().code, ErrorCode::kInvalidArgument);
    EXPECT_EQ(store_->Get(bad).error().code, ErrorCode::kNotFound);
    EXPECT_EQ(store_->Cancel(bad).error().code, ErrorCode::kNotFound);
  }
  JobSpec long_key = Spec();
  long_key.idempotency_key = std::string(kMaxKeyBytes + 1, 'k');
  EXPECT_EQ(store_->Submit(long_key).error().code, ErrorCode::kInvalidArgument);
  EXPECT_EQ(store_->CountByState()->at(static_cast<size_t>(JobState::kQueued)), 0);

  // Any other text is kept exactly and names one job.
  JobSpec keyed = Spec();
  keyed.idempotency_key = "cl\u00e9 \u2713 " + std::string(kMaxKeyBytes - 10, 'k');
  std::string id = SubmitOk(keyed);
  EXPECT_EQ(GetOk(id).spec.idempotency_key, keyed.idempotency_key);
  Result<SubmitResult> again = store_->Submit(keyed);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->id, id);
  // An id with a NUL or invalid UTF-8 names no job, and the error is text.
  Result<Job> missing = store_->Get(id + "\0"s);
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, ErrorCode::kNotFound);
  EXPECT_EQ(store_->Get(id.substr(0, 25) + "\xff").error().message,
            "no job " + id.substr(0, 25) + "\uFFFD");
}

// An idempotency key names one piece of work: the same spec again is that
// job; other work under the key is a conflict, reported with the existing
// job's id and module, and nothing is submitted.
TEST_P(StoreTest, IdempotencyKeyWithOtherWorkIsAConflict) {
  JobSpec spec = Spec("input");
  spec.idempotency_key = "order-18";
  Result<SubmitResult> first = store_->Submit(spec);
  ASSERT_TRUE(first);
  EXPECT_TRUE(first->created);
  EXPECT_FALSE(first->conflict);
  EXPECT_EQ(first->module_digest, module_);

  Result<SubmitResult> same = store_->Submit(spec);
  ASSERT_TRUE(same);
  EXPECT_FALSE(same->created);
  EXPECT_FALSE(same->conflict);
  EXPECT_EQ(same->id, first->id);

  Result<std::string> other_module = store_->PutModule(Bytes("\0asm other"sv));
  ASSERT_TRUE(other_module);
  std::vector<JobSpec> others(6, spec);
  others[0].input = Bytes("other input");
  others[1].export_name = "other";
  others[2].deadline = 6s;
  others[3].max_attempts = 4;
  others[4].retry_backoff = 1ms;
  others[5].module_digest = *other_module;
  for (const JobSpec& other : others) {
    Result<SubmitResult> conflict = store_->Submit(other);
    ASSERT_TRUE(conflict) << conflict.error().ToString();
    EXPECT_FALSE(conflict->created);
    EXPECT_TRUE(conflict->conflict);
    EXPECT_EQ(conflict->id, first->id);
    EXPECT_EQ(conflict->module_digest, module_);
  }
  EXPECT_EQ(store_->CountByState()->at(static_cast<size_t>(JobState::kQueued)), 1);
  EXPECT_EQ(GetOk(first->id).spec.input, Bytes("input"));
}

// A claim counts no attempt; Start() counts it, once, and takes the run
// lease.
TEST_P(StoreTest, StartCountsTheAttemptOnceAndTakesTheRunLease) {
  std::string id = SubmitOk(Spec());
  std::vector<ClaimedJob> claimed = ClaimOk(*store_, 1, 2s);
  ASSERT_EQ(claimed.size(), 1u);
  EXPECT_EQ(GetOk(id).attempts, 0u);
  Result<TimePoint> lease = store_->Start(id, claimed[0].claim, 60s);
  ASSERT_TRUE(lease) << lease.error().ToString();
  EXPECT_GT(*lease, Clock::now() + 50s);
  Job job = GetOk(id);
  EXPECT_EQ(job.attempts, 1u);
  ASSERT_TRUE(job.started_at);
  EXPECT_EQ(job.lease_until, *lease);
  Result<TimePoint> again = store_->Start(id, claimed[0].claim, 60s);
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_NE(again.error().message.find("already started"), std::string::npos);
  EXPECT_EQ(store_->Start(id, claimed[0].claim + 1, 60s).error().code,
            ErrorCode::kFailedPrecondition);
  EXPECT_EQ(store_->Start("01NOSUCHJOB0000000000000000", 1, 60s).error().code,
            ErrorCode::kNotFound);
  EXPECT_EQ(store_->Complete(id, claimed[0].claim, Outcome::Succeeded({})),
            JobState::kSucceeded);
  EXPECT_EQ(GetOk(id).attempts, 1u);
}

// CompleteAll() answers each completion as Complete() would, in order,
// whatever the others in the batch: a success, a retry, a lost lease, the
// same job twice, an unknown and a malformed id.
TEST_P(StoreTest, CompleteAllAnswersEachCompletionOnItsOwn) {
  std::string done = SubmitOk(Spec("done"));
  std::string retried = SubmitOk(Spec("retried"));
  std::string stale = SubmitOk(Spec("stale"));
  ASSERT_EQ(ClaimOk(*store_, 3).size(), 3u);
  Outcome ok = Outcome::Succeeded(Bytes("out"));
  Outcome again = Outcome::Failed(Error(ErrorCode::kTrap, "try again"), true);
  std::vector<Completion> batch = {{done, 1, &ok},
                                   {retried, 1, &again},
                                   {stale, 7, &ok},
                                   {done, 1, &ok},
                                   {"01NOSUCHJOB0000000000000000", 1, &ok},
                                   {"not a job id", 1, &ok}};
  std::vector<Result<JobState>> recorded = store_->CompleteAll(batch);
  ASSERT_EQ(recorded.size(), batch.size());
  EXPECT_EQ(recorded[0], JobState::kSucceeded);
  EXPECT_EQ(recorded[1], JobState::kQueued);
  EXPECT_EQ(recorded[2].error().code, ErrorCode::kFailedPrecondition);
  EXPECT_EQ(recorded[3].error().code, ErrorCode::kFailedPrecondition);
  EXPECT_EQ(recorded[4].error().code, ErrorCode::kNotFound);
  EXPECT_EQ(recorded[5].error().code, ErrorCode::kNotFound);
  Job job = GetOk(done);
  EXPECT_EQ(job.state, JobState::kSucceeded);
  EXPECT_EQ(job.result, Bytes("out"));
  EXPECT_EQ(GetOk(retried).state, JobState::kQueued);
  EXPECT_EQ(GetOk(stale).state, JobState::kRunning);
  EXPECT_TRUE(store_->CompleteAll({}).empty());
}

// How CompleteAll answers when its one write fails: a write that was rolled
// back is retried one completion at a time (so only a bad one fails); a
// failed commit, whose result is unknown, is not retried.
TEST_P(StoreTest, CompleteAllRetriesOneByOneOnlyWhatWasRolledBack) {
  std::string a = SubmitOk(Spec("a"));
  std::string b = SubmitOk(Spec("b"));
  ASSERT_EQ(ClaimOk(*store_, 2).size(), 2u);
  Outcome ok = Outcome::Succeeded(Bytes("out"));
  std::vector<Completion> batch = {{a, 1, &ok}, {b, 9, &ok}};
  Result<void> bad_write = MakeError(ErrorCode::kInternal, "bad statement");

  std::vector<Result<JobState>> answers =
      OutcomeBatch(batch).Answers(*store_, bad_write, false);  // a failed commit
  ASSERT_EQ(answers.size(), 2u);
  EXPECT_EQ(answers[0].error().message, "bad statement");
  EXPECT_EQ(answers[1].error().message, "bad statement");
  EXPECT_EQ(GetOk(a).state, JobState::kRunning);

  answers = OutcomeBatch(batch).Answers(*store_, bad_write, true);
  ASSERT_EQ(answers.size(), 2u);
  EXPECT_EQ(answers[0], JobState::kSucceeded);
  EXPECT_EQ(answers[1].error().code, ErrorCode::kFailedPrecondition);
  EXPECT_EQ(GetOk(a).state, JobState::kSucceeded);
}

// Release() gives a claim back at once; an attempt it had started does not
// count, and the old claim can do nothing more.
TEST_P(StoreTest, ReleasedJobsComeBackAtOnceUncounted) {
  JobSpec spec = Spec();
  spec.max_attempts = 1;
  std::string id = SubmitOk(spec);
  ASSERT_EQ(ClaimOk(*store_, 1).size(), 1u);
  ASSERT_TRUE(store_->Release(id, 1));
  Job job = GetOk(id);
  EXPECT_EQ(job.state, JobState::kQueued);
  EXPECT_EQ(job.attempts, 0u);
  EXPECT_FALSE(job.lease_until);

  std::vector<ClaimedJob> second = ClaimOk(*store_, 1);
  ASSERT_EQ(second.size(), 1u);
  EXPECT_EQ(second[0].claim, 2u);
  EXPECT_EQ(second[0].attempt, 1u);
  ASSERT_TRUE(store_->Start(id, 2, 30s));
  ASSERT_TRUE(store_->Release(id, 2));
  job = GetOk(id);
  EXPECT_EQ(job.state, JobState::kQueued);
  EXPECT_EQ(job.attempts, 0u);
  EXPECT_FALSE(job.started_at);
  EXPECT_EQ(store_->Heartbeat(id, 2, 30s).error().code, ErrorCode::kFailedPrecondition);
  EXPECT_EQ(store_->Release(id, 2).error().code, ErrorCode::kFailedPrecondition);
  EXPECT_EQ(store_->Release("01NOSUCHJOB0000000000000000", 1).error().code,
            ErrorCode::kNotFound);

  // Its one attempt is still there to use.
  ASSERT_EQ(ClaimOk(*store_, 1).size(), 1u);
  EXPECT_EQ(store_->Complete(id, 3, Outcome::Succeeded(Bytes("ran"))), JobState::kSucceeded);
  EXPECT_EQ(GetOk(id).attempts, 1u);

  // A job whose cancel was requested ends cancelled when given back.
  std::string cancelled = SubmitOk(Spec());
  ASSERT_EQ(ClaimOk(*store_, 1).size(), 1u);
  ASSERT_TRUE(store_->Start(cancelled, 1, 30s));
  ASSERT_EQ(store_->Cancel(cancelled), CancelOutcome::kDetached);
  ASSERT_TRUE(store_->Release(cancelled, 1));
  job = GetOk(cancelled);
  EXPECT_EQ(job.state, JobState::kCancelled);
  EXPECT_EQ(job.error->code, ErrorCode::kCancelled);
  EXPECT_TRUE(job.finished_at);
}

// A runner that dies holding claims it had not started leaves them to the
// claim lease; they come back uncounted, even on the last attempt.
TEST_P(StoreTest, ExpiredClaimThatNeverStartedCostsNoAttempt) {
  JobSpec spec = Spec();
  spec.max_attempts = 1;
  std::string id = SubmitOk(spec);
  ASSERT_EQ(ClaimOk(*store_, 1, 200ms, "crashed-runner").size(), 1u);
  std::vector<ClaimedJob> again = ClaimEventually(*store_, 30s, "runner-b");
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].id, id);
  EXPECT_EQ(again[0].claim, 2u);
  EXPECT_EQ(again[0].attempt, 1u);
  Job job = GetOk(id);
  EXPECT_EQ(job.attempts, 0u);
  EXPECT_FALSE(job.error);
  EXPECT_EQ(store_->Start(id, 1, 30s).error().code, ErrorCode::kFailedPrecondition);
  EXPECT_EQ(store_->Complete(id, 2, Outcome::Succeeded({})), JobState::kSucceeded);

  // Cancelled while only claimed: it ends cancelled, never having run.
  std::string cancelled = SubmitOk(Spec());
  ASSERT_EQ(ClaimOk(*store_, 1, 200ms, "crashed-runner").size(), 1u);
  ASSERT_EQ(store_->Cancel(cancelled), CancelOutcome::kDetached);
  auto give_up = std::chrono::steady_clock::now() + 20s;
  while (GetOk(cancelled).state == JobState::kRunning &&
         std::chrono::steady_clock::now() < give_up) {
    EXPECT_TRUE(ClaimOk(*store_, 1).empty());
    std::this_thread::sleep_for(50ms);
  }
  job = GetOk(cancelled);
  EXPECT_EQ(job.state, JobState::kCancelled);
  EXPECT_EQ(job.attempts, 0u);
  EXPECT_EQ(job.error->code, ErrorCode::kCancelled);
}

TEST_P(StoreTest, ClaimLeasesJobsInSubmitOrder) {
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) ids.push_back(SubmitOk(Spec("job" + std::to_string(i))));

  std::vector<ClaimedJob> first = ClaimOk(*store_, 2);
  ASSERT_EQ(first.size(), 2u);
  EXPECT_EQ(first[0].id, ids[0]);
  EXPECT_EQ(first[1].id, ids[1]);
  EXPECT_EQ(first[0].claim, 1u);
  EXPECT_EQ(first[0].attempt, 1u);
  EXPECT_EQ(first[0].spec.input, Bytes("job0"));
  EXPECT_EQ(first[0].spec.export_name, "run");
  EXPECT_EQ(first[0].spec.deadline, 5s);
  EXPECT_GT(first[0].lease_until, Clock::now() + 20s);

  std::vector<ClaimedJob> rest = ClaimOk(*store_, 10);
  ASSERT_EQ(rest.size(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(rest[i].id, ids[i + 2]);
  EXPECT_TRUE(ClaimOk(*store_, 10).empty());

  // Claimed, not started: no attempt yet.
  Job job = GetOk(ids[0]);
  EXPECT_EQ(job.state, JobState::kRunning);
  EXPECT_EQ(job.attempts, 0u);
  EXPECT_FALSE(job.started_at);
  EXPECT_EQ(job.runner, "runner-a");
  ASSERT_TRUE(job.lease_until);
  EXPECT_EQ(*job.lease_until, first[0].lease_until);
}

TEST_P(StoreTest, ClaimRejectsMalformedRequests) {
  ClaimRequest request;
  EXPECT_EQ(store_->Claim(request).error().code, ErrorCode::kInvalidArgument);  // no runner
  request.runner = "r";
  request.max_jobs = 0;
  EXPECT_EQ(store_->Claim(request).error().code, ErrorCode::kInvalidArgument);
  request.max_jobs = 1;
  request.lease = 0ms;
  EXPECT_EQ(store_->Claim(request).error().code, ErrorCode::kInvalidArgument);
}

TEST_P(StoreTest, RetriedJobWaitsForItsBackoff) {
  JobSpec slow = Spec("retried");
  slow.retry_backoff = 300ms;
  std::string retried = SubmitOk(slow);
  std::vector<ClaimedJob> claimed = ClaimOk(*store_, 1);
  ASSERT_EQ(claimed.size(), 1u);
  Result<JobState> state = store_->Complete(
      retried, 1, Outcome::Failed(Error(ErrorCode::kTrap, "boom"), /*retry=*/true));
  ASSERT_TRUE(state) << state.error().ToString();
  EXPECT_EQ(*state, JobState::kQueued);

  // A later job is claimable at once; the retried one only after backoff.
  std::string later = SubmitOk(Spec("later"));
  std::vector<ClaimedJob> next = ClaimOk(*store_, 10);
  ASSERT_EQ(next.size(), 1u);
  EXPECT_EQ(next[0].id, later);

  Job job = GetOk(retried);
  EXPECT_EQ(job.state, JobState::kQueued);
  EXPECT_EQ(job.not_before - job.updated_at, 300ms);
  ASSERT_TRUE(job.error);
  EXPECT_EQ(job.error->code, ErrorCode::kTrap);
  EXPECT_EQ(job.error->message, "boom");

  std::vector<ClaimedJob> again = ClaimEventually(*store_, 30s, "runner-b");
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].id, retried);
  EXPECT_EQ(again[0].attempt, 2u);
  EXPECT_GE(Clock::now(), job.not_before);
}

TEST_P(StoreTest, BackoffDoublesPerAttemptAndExhaustedAttemptsAreDead) {
  JobSpec spec = Spec();
  spec.max_attempts = 3;
  spec.retry_backoff = 10ms;
  std::string id = SubmitOk(spec);
  for (uint32_t attempt = 1; attempt <= 3; ++attempt) {
    std::vector<ClaimedJob> claimed = ClaimEventually(*store_, 30s, "runner-a");
    ASSERT_EQ(claimed.size(), 1u);
    EXPECT_EQ(claimed[0].attempt, attempt);
    Result<JobState> state = store_->Complete(
        id, claimed[0].claim, Outcome::TimedOut(Error(ErrorCode::kDeadlineExceeded, "slow"), true));
    ASSERT_TRUE(state) << state.error().ToString();
    Job job = GetOk(id);
    if (attempt < 3) {
      EXPECT_EQ(*state, JobState::kQueued);
      EXPECT_EQ(job.not_before - job.updated_at, 10ms * (1 << (attempt - 1)));
      EXPECT_FALSE(job.finished_at);
    } else {
      EXPECT_EQ(*state, JobState::kDead);
      EXPECT_EQ(job.state, JobState::kDead);
      EXPECT_EQ(job.attempts, 3u);
      ASSERT_TRUE(job.finished_at);
      ASSERT_TRUE(job.error);
      EXPECT_EQ(job.error->code, ErrorCode::kDeadlineExceeded);
    }
  }
  EXPECT_TRUE(ClaimOk(*store_, 1).empty());
}

TEST_P(StoreTest, BackoffIsCapped) {
  JobSpec spec = Spec();
  spec.retry_backoff = 2 * kMaxRetryDelay;
  std::string id = SubmitOk(spec);
  ASSERT_EQ(ClaimOk(*store_, 1).size(), 1u);
  EXPECT_EQ(store_->Complete(id, 1, Outcome::Failed(Error(ErrorCode::kTrap, "t"), true)),
            JobState::kQueued);
  Job job = GetOk(id);
  EXPECT_EQ(job.not_before - job.updated_at, kMaxRetryDelay);
}

TEST_P(StoreTest, OutcomesEndJobsInTheirStates) {
  std::string ok = SubmitOk(Spec("a"));
  std::string failed = SubmitOk(Spec("b"));
  std::string timed_out = SubmitOk(Spec("c"));
  ASSERT_EQ(ClaimOk(*store_, 3).size(), 3u);

  EXPECT_EQ(store_->Complete(ok, 1, Outcome::Succeeded(Bytes("out"))), JobState::kSucceeded);
  EXPECT_EQ(
      store_->Complete(failed, 1, Outcome::Failed(Error(ErrorCode::kNotFound, "no export"), false)),
      JobState::kFailed);
  EXPECT_EQ(store_->Complete(timed_out, 1,
                             Outcome::TimedOut(Error(ErrorCode::kDeadlineExceeded, "late"), false)),
            JobState::kTimedOut);

  Job job = GetOk(ok);
  EXPECT_EQ(job.state, JobState::kSucceeded);
  EXPECT_EQ(job.result, Bytes("out"));
  EXPECT_FALSE(job.error);
  EXPECT_FALSE(job.lease_until);
  ASSERT_TRUE(job.finished_at);
  job = GetOk(failed);
  EXPECT_EQ(job.state, JobState::kFailed);
  ASSERT_TRUE(job.error);
  EXPECT_EQ(job.error->code, ErrorCode::kNotFound);
  EXPECT_EQ(job.error->message, "no export");
  EXPECT_EQ(GetOk(timed_out).state, JobState::kTimedOut);

  // A finished job's lease is gone.
  EXPECT_EQ(store_->Complete(ok, 1, Outcome::Succeeded({})).error().code,
            ErrorCode::kFailedPrecondition);
  EXPECT_EQ(store_->Complete("01NOSUCHJOB0000000000000000", 1, Outcome::Succeeded({})).error().code,
            ErrorCode::kNotFound);
}

TEST_P(StoreTest, ConcurrentClaimersNeverGetTheSameJob) {
  constexpr int kJobs = 300;
  for (int i = 0; i < kJobs; ++i) SubmitOk(Spec(std::to_string(i)));
  // Two store objects: separate connections, as two processes would have.
  std::unique_ptr<JobStore> other = Open();
  ASSERT_NE(other, nullptr);

  std::vector<std::vector<std::string>> seen(6);
  std::vector<std::thread> threads;
  for (size_t t = 0; t < seen.size(); ++t) {
    threads.emplace_back([&, t] {
      JobStore& store = t % 2 == 0 ? *store_ : *other;
      while (true) {
        std::vector<ClaimedJob> claimed = ClaimOk(store, 3, 30s, "runner-" + std::to_string(t));
        if (claimed.empty()) return;
        for (auto& job : claimed) {
          seen[t].push_back(job.id);
          EXPECT_TRUE(store.Complete(job.id, job.claim, Outcome::Succeeded({})));
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  std::multiset<std::string> all;
  for (auto& ids : seen) all.insert(ids.begin(), ids.end());
  EXPECT_EQ(all.size(), static_cast<size_t>(kJobs));
  EXPECT_EQ(std::set<std::string>(all.begin(), all.end()).size(), all.size());
  EXPECT_EQ(store_->CountByState()->at(static_cast<size_t>(JobState::kSucceeded)), kJobs);
}

// Children are real processes (this binary, re-executed) with their own
// store; they only claim, so the parent can check no job was claimed twice.
TEST_P(StoreTest, ConcurrentProcessesNeverGetTheSameJob) {
  constexpr int kJobs = 200;
  constexpr int kChildren = 3;
  for (int i = 0; i < kJobs; ++i) SubmitOk(Spec(std::to_string(i)));
  std::filesystem::path out_dir =
      std::filesystem::temp_directory_path() / ("keel_claims_" + std::to_string(getpid()));
  std::filesystem::create_directories(out_dir);
  std::vector<pid_t> children;
  for (int c = 0; c < kChildren; ++c) {
    pid_t pid = SpawnClaimer(name_, (out_dir / std::to_string(c)).string());
    ASSERT_GT(pid, 0);
    children.push_back(pid);
  }
  for (pid_t pid : children) {
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  }
  std::multiset<std::string> all;
  for (int c = 0; c < kChildren; ++c) {
    std::ifstream in(out_dir / std::to_string(c));
    for (std::string id; std::getline(in, id);) all.insert(id);
  }
  std::filesystem::remove_all(out_dir);
  EXPECT_EQ(all.size(), static_cast<size_t>(kJobs));
  EXPECT_EQ(std::set<std::string>(all.begin(), all.end()).size(), all.size());
  EXPECT_EQ(store_->CountByState()->at(static_cast<size_t>(JobState::kRunning)), kJobs);
}

TEST_P(StoreTest, ExpiredLeaseRequeuesTheJob) {
  std::string id = SubmitOk(Spec());
  std::vector<ClaimedJob> first = ClaimOk(*store_, 1, 30s, "crashed-runner");
  ASSERT_EQ(first.size(), 1u);
  ASSERT_TRUE(store_->Start(id, first[0].claim, 200ms));
  // The runner "crashes" while running it: no heartbeat. Another runner
  // gets the job, and the lost attempt counts.
  std::vector<ClaimedJob> second = ClaimEventually(*store_, 30s, "runner-b");
  ASSERT_EQ(second.size(), 1u);
  EXPECT_EQ(second[0].id, id);
  EXPECT_EQ(second[0].claim, 2u);
  EXPECT_EQ(second[0].attempt, 2u);
  Job lost = GetOk(id);
  ASSERT_TRUE(lost.error);
  EXPECT_EQ(lost.error->message, "lease expired: runner lost");

  // The old lease names claim 1: it can no longer act on the job.
  EXPECT_EQ(store_->Heartbeat(id, 1, 30s).error().code, ErrorCode::kFailedPrecondition);
  EXPECT_EQ(store_->Complete(id, 1, Outcome::Succeeded({})).error().code,
            ErrorCode::kFailedPrecondition);
  EXPECT_EQ(store_->Release(id, 1).error().code, ErrorCode::kFailedPrecondition);
  EXPECT_EQ(store_->Complete(id, 2, Outcome::Succeeded(Bytes("r"))), JobState::kSucceeded);
  Job job = GetOk(id);
  EXPECT_EQ(job.attempts, 2u);
  EXPECT_EQ(job.runner, "runner-b");
}

TEST_P(StoreTest, LeaseExpiryOnTheLastAttemptMakesTheJobDead) {
  JobSpec spec = Spec();
  spec.max_attempts = 1;
  std::string id = SubmitOk(spec);
  ASSERT_EQ(ClaimOk(*store_, 1).size(), 1u);
  ASSERT_TRUE(store_->Start(id, 1, 200ms));
  auto give_up = std::chrono::steady_clock::now() + 20s;
  while (GetOk(id).state == JobState::kRunning && std::chrono::steady_clock::now() < give_up) {
    EXPECT_TRUE(ClaimOk(*store_, 1).empty());  // claiming reaps expired leases
    std::this_thread::sleep_for(50ms);
  }
  Job job = GetOk(id);
  EXPECT_EQ(job.state, JobState::kDead);
  ASSERT_TRUE(job.error);
  EXPECT_EQ(job.error->code, ErrorCode::kUnavailable);
}

TEST_P(StoreTest, HeartbeatKeepsTheLease) {
  std::string id = SubmitOk(Spec());
  std::vector<ClaimedJob> claimed = ClaimOk(*store_, 1, 300ms);
  ASSERT_EQ(claimed.size(), 1u);
  TimePoint lease = claimed[0].lease_until;
  auto until = std::chrono::steady_clock::now() + 1500ms;
  while (std::chrono::steady_clock::now() < until) {
    Result<TimePoint> renewed = store_->Heartbeat(id, 1, 300ms);
    ASSERT_TRUE(renewed) << renewed.error().ToString();
    EXPECT_GE(*renewed, lease);
    lease = *renewed;
    EXPECT_TRUE(ClaimOk(*store_, 1, 30s, "thief").empty());
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_EQ(GetOk(id).state, JobState::kRunning);
  EXPECT_EQ(store_->Complete(id, 1, Outcome::Succeeded({})), JobState::kSucceeded);
  EXPECT_EQ(store_->Heartbeat(id, 1, 300ms).error().code, ErrorCode::kFailedPrecondition);
  EXPECT_EQ(store_->Heartbeat("01NOSUCHJOB0000000000000000", 1, 300ms).error().code,
            ErrorCode::kNotFound);
}

TEST_P(StoreTest, CancelledQueuedJobNeverRuns) {
  std::string id = SubmitOk(Spec());
  EXPECT_EQ(store_->Cancel(id), CancelOutcome::kWithdrawn);
  Job job = GetOk(id);
  EXPECT_EQ(job.state, JobState::kCancelled);
  EXPECT_EQ(job.attempts, 0u);
  ASSERT_TRUE(job.finished_at);
  EXPECT_TRUE(ClaimOk(*store_, 10).empty());
  EXPECT_EQ(store_->Cancel(id), CancelOutcome::kTooLate);
  EXPECT_EQ(store_->Cancel("01NOSUCHJOB0000000000000000").error().code, ErrorCode::kNotFound);
}

TEST_P(StoreTest, CancelledRunningJobFinishesAndKeepsItsResult) {
  std::string id = SubmitOk(Spec());
  ASSERT_EQ(ClaimOk(*store_, 1).size(), 1u);
  ASSERT_TRUE(store_->Start(id, 1, 30s));
  EXPECT_EQ(store_->Cancel(id), CancelOutcome::kDetached);
  Job job = GetOk(id);
  EXPECT_EQ(job.state, JobState::kRunning);  // never torn down
  EXPECT_TRUE(job.cancel_requested);
  EXPECT_EQ(store_->Cancel(id), CancelOutcome::kDetached);
  ASSERT_TRUE(store_->Heartbeat(id, 1, 30s));

  EXPECT_EQ(store_->Complete(id, 1, Outcome::Succeeded(Bytes("kept"))), JobState::kCancelled);
  job = GetOk(id);
  EXPECT_EQ(job.state, JobState::kCancelled);
  EXPECT_EQ(job.result, Bytes("kept"));
  EXPECT_EQ(store_->Cancel(id), CancelOutcome::kTooLate);

  // A retryable failure of a cancelled job is not retried.
  std::string failing = SubmitOk(Spec());
  ASSERT_EQ(ClaimOk(*store_, 1).size(), 1u);
  ASSERT_TRUE(store_->Start(failing, 1, 30s));
  EXPECT_EQ(store_->Cancel(failing), CancelOutcome::kDetached);
  EXPECT_EQ(store_->Complete(failing, 1, Outcome::Failed(Error(ErrorCode::kTrap, "t"), true)),
            JobState::kCancelled);
  EXPECT_EQ(GetOk(failing).error->code, ErrorCode::kTrap);
}

TEST_P(StoreTest, CancelledJobWhoseRunnerIsLostEndsCancelled) {
  std::string id = SubmitOk(Spec());
  ASSERT_EQ(ClaimOk(*store_, 1).size(), 1u);
  ASSERT_TRUE(store_->Start(id, 1, 200ms));
  EXPECT_EQ(store_->Cancel(id), CancelOutcome::kDetached);
  auto give_up = std::chrono::steady_clock::now() + 20s;
  while (GetOk(id).state == JobState::kRunning && std::chrono::steady_clock::now() < give_up) {
    EXPECT_TRUE(ClaimOk(*store_, 1).empty());
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_EQ(GetOk(id).state, JobState::kCancelled);
}

TEST_P(StoreTest, PurgeDeletesOnlyOldFinishedJobs) {
  JobSpec keyed = Spec();
  keyed.idempotency_key = "k";
  std::string done = SubmitOk(keyed);
  std::string cancelled = SubmitOk(Spec());
  std::string running = SubmitOk(Spec());
  std::string queued = SubmitOk(Spec());
  ASSERT_EQ(ClaimOk(*store_, 1)[0].id, done);
  ASSERT_EQ(store_->Complete(done, 1, Outcome::Succeeded({})), JobState::kSucceeded);
  ASSERT_EQ(store_->Cancel(cancelled), CancelOutcome::kWithdrawn);
  ASSERT_EQ(ClaimOk(*store_, 1)[0].id, running);

  EXPECT_EQ(store_->Purge(std::chrono::hours(1)), 0);  // too recent
  std::this_thread::sleep_for(20ms);
  EXPECT_EQ(store_->Purge(10ms), 2);
  EXPECT_EQ(store_->Get(done).error().code, ErrorCode::kNotFound);
  EXPECT_EQ(store_->Get(cancelled).error().code, ErrorCode::kNotFound);
  EXPECT_EQ(GetOk(running).state, JobState::kRunning);
  EXPECT_EQ(GetOk(queued).state, JobState::kQueued);

  // The purged job's idempotency key is free again.
  Result<SubmitResult> again = store_->Submit(keyed);
  ASSERT_TRUE(again);
  EXPECT_TRUE(again->created);
  EXPECT_NE(again->id, done);
}

TEST_P(StoreTest, ListAndCountByState) {
  std::vector<std::string> ids;
  for (int i = 0; i < 4; ++i) ids.push_back(SubmitOk(Spec()));
  ASSERT_EQ(ClaimOk(*store_, 1)[0].id, ids[0]);
  ASSERT_EQ(store_->Cancel(ids[1]), CancelOutcome::kWithdrawn);

  Result<StateCounts> counts = store_->CountByState();
  ASSERT_TRUE(counts) << counts.error().ToString();
  EXPECT_EQ((*counts)[static_cast<size_t>(JobState::kQueued)], 2);
  EXPECT_EQ((*counts)[static_cast<size_t>(JobState::kRunning)], 1);
  EXPECT_EQ((*counts)[static_cast<size_t>(JobState::kCancelled)], 1);
  EXPECT_EQ((*counts)[static_cast<size_t>(JobState::kSucceeded)], 0);

  Result<std::vector<Job>> all = store_->List({});
  ASSERT_TRUE(all) << all.error().ToString();
  ASSERT_EQ(all->size(), 4u);
  EXPECT_EQ((*all)[0].id, ids[3]);            // newest first
  EXPECT_TRUE((*all)[0].spec.input.empty());  // List leaves payloads out

  ListFilter filter;
  filter.state = JobState::kQueued;
  filter.newest_first = false;
  Result<std::vector<Job>> queued = store_->List(filter);
  ASSERT_TRUE(queued);
  ASSERT_EQ(queued->size(), 2u);
  EXPECT_EQ((*queued)[0].id, ids[2]);
  EXPECT_EQ((*queued)[1].id, ids[3]);
  filter.limit = 1;
  EXPECT_EQ(store_->List(filter)->size(), 1u);
}

// Since schema version 4 each state is found through its own partial index
// (queued: ready, running: leased, unsuccessful: state) and succeeded jobs
// by seq, counted through the finished index: every state still lists and
// counts exactly.
TEST_P(StoreTest, ListingFindsSucceededJobsAndTheOthersAlike) {
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) ids.push_back(SubmitOk(Spec()));
  std::vector<ClaimedJob> claimed = ClaimOk(*store_, 2);
  ASSERT_EQ(claimed.size(), 2u);
  ASSERT_EQ(store_->Complete(ids[0], claimed[0].claim, Outcome::Succeeded({})),
            JobState::kSucceeded);
  ASSERT_EQ(store_->Complete(ids[1], claimed[1].claim,
                             Outcome::Failed(Error(ErrorCode::kTrap, "no"), false)),
            JobState::kFailed);
  for (auto [state, id] : {std::pair{JobState::kSucceeded, ids[0]},
                           std::pair{JobState::kFailed, ids[1]},
                           std::pair{JobState::kQueued, ids[2]}}) {
    Result<std::vector<Job>> listed = store_->List({.state = state});
    ASSERT_TRUE(listed) << listed.error().ToString();
    ASSERT_EQ(listed->size(), 1u) << ToString(state);
    EXPECT_EQ((*listed)[0].id, id);
  }
  EXPECT_TRUE(store_->List({.state = JobState::kRunning})->empty());

  // Counted from the indexes: succeeded as the finished jobs less the failed.
  Result<StateCounts> counts = store_->CountByState();
  ASSERT_TRUE(counts) << counts.error().ToString();
  StateCounts expected{};
  expected[static_cast<size_t>(JobState::kSucceeded)] = 1;
  expected[static_cast<size_t>(JobState::kFailed)] = 1;
  expected[static_cast<size_t>(JobState::kQueued)] = 1;
  EXPECT_EQ(*counts, expected);
}

// A waiting claimer is woken by the submit itself, not found by polling:
// the stores poll once an hour here, and the claim must end long before its
// wait would. On PostgreSQL the second store is another store object (as
// another process would be), woken by NOTIFY; on SQLite, where only polling
// finds other stores' submits, it polls every 50 ms and shows that path.
TEST_P(StoreTest, WaitingClaimerWakesOnSubmit) {
  constexpr milliseconds kWait = 60s;
  bool postgres = GetParam() == Backend::kPostgres;
  std::unique_ptr<JobStore> submitter = Open({.claim_poll_interval = 1h});
  std::unique_ptr<JobStore> other = Open({.claim_poll_interval = postgres ? 1h : 50ms});
  ASSERT_NE(submitter, nullptr);
  ASSERT_NE(other, nullptr);
  for (JobStore* claimer : {submitter.get(), other.get()}) {
    uint64_t claims_before = claimer->commit_stats().transactions;
    Result<std::vector<ClaimedJob>> claimed;
    std::thread waiter([&] {
      ClaimRequest request;
      request.runner = "waiter";
      request.wait = kWait;
      claimed = claimer->Claim(request);
    });
    // Its first look (a write transaction) found nothing: it now waits.
    auto give_up = std::chrono::steady_clock::now() + 20s;
    while (claimer->commit_stats().transactions == claims_before &&
           std::chrono::steady_clock::now() < give_up) {
      std::this_thread::yield();
    }
    auto submitted = std::chrono::steady_clock::now();
    Result<SubmitResult> submit = submitter->Submit(Spec());
    waiter.join();
    ASSERT_TRUE(submit) << submit.error().ToString();
    auto waited = std::chrono::steady_clock::now() - submitted;
    ASSERT_TRUE(claimed) << claimed.error().ToString();
    ASSERT_EQ(claimed->size(), 1u);
    EXPECT_EQ((*claimed)[0].id, submit->id);
    EXPECT_LT(waited, kWait / 2) << "the claimer was not woken by the submit";
  }
  // With nothing to claim, the wait ends empty.
  ClaimRequest request;
  request.runner = "waiter";
  request.wait = 300ms;
  Result<std::vector<ClaimedJob>> none = store_->Claim(request);
  ASSERT_TRUE(none);
  EXPECT_TRUE(none->empty());
}

// Submits that share one transaction (on PostgreSQL one INSERT) each get
// their own answer: a key submitted twice in the batch creates one job, a
// rival with the same key and other work is a conflict, a key held by an
// earlier job names it.
TEST_P(StoreTest, SubmitsSharingATransactionEachGetTheirAnswer) {
  JobSpec held = Spec("held");
  held.idempotency_key = "held";
  std::string held_id = SubmitOk(held);
  std::unique_ptr<JobStore> store = Open({.commit_lanes = 1});
  ASSERT_NE(store, nullptr);
  JobSpec twice = Spec("twice");
  twice.idempotency_key = "twice";
  JobSpec rival = Spec("rival");
  rival.idempotency_key = "twice";
  JobSpec held_other = held;
  held_other.input = Bytes("other work");
  std::vector<JobSpec> specs = {Spec("a"), twice, held,  Spec("b"),
                                twice,     held_other, rival, Spec("c")};
  std::vector<Result<SubmitResult>> results(specs.size());
  std::vector<std::function<void()>> calls;
  for (size_t i = 0; i < specs.size(); ++i) {
    calls.push_back([&, i] { results[i] = store->Submit(specs[i]); });
  }
  uint64_t transactions = store->commit_stats().transactions;
  RunBatched(*store, std::move(calls));
  // The first write may have gone alone before the others queued.
  EXPECT_LE(store->commit_stats().transactions - transactions, 2u);
  for (auto& result : results) ASSERT_TRUE(result) << result.error().ToString();

  std::set<std::string> plain_ids;
  for (size_t i : {0, 3, 7}) {
    EXPECT_TRUE(results[i]->created);
    EXPECT_FALSE(results[i]->conflict);
    EXPECT_EQ(GetOk(results[i]->id).spec.input, specs[i].input);
    plain_ids.insert(results[i]->id);
  }
  EXPECT_EQ(plain_ids.size(), 3u);

  // Whichever of the three with key "twice" came first created the job.
  std::vector<size_t> keyed = {1, 4, 6};
  auto creator = std::find_if(keyed.begin(), keyed.end(), [&](size_t i) {
    return results[i]->created;
  });
  ASSERT_NE(creator, keyed.end());
  Job job = GetOk(results[*creator]->id);
  EXPECT_EQ(job.spec.input, specs[*creator].input);
  for (size_t i : keyed) {
    EXPECT_EQ(results[i]->id, job.id);
    if (i == *creator) continue;
    EXPECT_FALSE(results[i]->created);
    EXPECT_EQ(results[i]->conflict, specs[i].input != specs[*creator].input) << i;
  }

  EXPECT_FALSE(results[2]->created);
  EXPECT_FALSE(results[2]->conflict);
  EXPECT_EQ(results[2]->id, held_id);
  EXPECT_FALSE(results[5]->created);
  EXPECT_TRUE(results[5]->conflict);
  EXPECT_EQ(results[5]->id, held_id);
  EXPECT_EQ(store->CountByState()->at(static_cast<size_t>(JobState::kQueued)), 5);
}

// A row the database refuses (here a constraint keel does not know of)
// fails only its own submitter: the batch is retried one by one.
TEST_P(StoreTest, OneRefusedRowInABatchFailsOnlyItsSubmitter) {
  ASSERT_NO_FATAL_FAILURE(RefuseExportInDatabase("refused"));
  std::unique_ptr<JobStore> store = Open({.commit_lanes = 1});
  ASSERT_NE(store, nullptr);
  std::vector<JobSpec> specs;
  for (int i = 0; i < 8; ++i) specs.push_back(Spec("job " + std::to_string(i)));
  specs[2].export_name = "refused";
  specs[5].export_name = "refused";
  specs[6].idempotency_key = "kept";
  std::vector<Result<SubmitResult>> results(specs.size());
  std::vector<std::function<void()>> calls;
  for (size_t i = 0; i < specs.size(); ++i) {
    calls.push_back([&, i] { results[i] = store->Submit(specs[i]); });
  }
  RunBatched(*store, std::move(calls));
  for (size_t i = 0; i < specs.size(); ++i) {
    if (specs[i].export_name == "refused") {
      ASSERT_FALSE(results[i]) << i;
      EXPECT_NE(results[i].error().message.find("test_refused"), std::string::npos)
          << results[i].error().ToString();
      continue;
    }
    ASSERT_TRUE(results[i]) << i << ": " << results[i].error().ToString();
    EXPECT_TRUE(results[i]->created);
    EXPECT_EQ(GetOk(results[i]->id).spec.input, specs[i].input);
  }
  EXPECT_EQ(store->CountByState()->at(static_cast<size_t>(JobState::kQueued)), 6);
  Result<SubmitResult> again = store->Submit(specs[6]);
  ASSERT_TRUE(again);
  EXPECT_FALSE(again->created);
  EXPECT_EQ(again->id, results[6]->id);
}

// Outcomes that share one transaction (on PostgreSQL one UPDATE) each get
// their own answer, including a lost lease, an unknown job, a cancelled job
// and two outcomes for one lease (the first recorded wins).
TEST_P(StoreTest, OutcomesSharingATransactionEachGetTheirAnswer) {
  std::vector<std::string> ids;
  for (int i = 0; i < 6; ++i) ids.push_back(SubmitOk(Spec("job " + std::to_string(i))));
  ASSERT_EQ(ClaimOk(*store_, 6).size(), 6u);
  ASSERT_EQ(store_->Cancel(ids[5]), CancelOutcome::kDetached);
  std::unique_ptr<JobStore> store = Open({.commit_lanes = 1});
  ASSERT_NE(store, nullptr);
  std::string unknown = NewJobId();
  struct Call {
    std::string id;
    uint64_t claim;
    Outcome outcome;
    Result<JobState> result;
  };
  std::vector<Call> calls_made = {
      {ids[0], 1, Outcome::Succeeded(Bytes("r0")), {}},
      {ids[1], 1, Outcome::Failed(Error(ErrorCode::kInternal, "boom \xff"), true), {}},
      {ids[2], 1, Outcome::TimedOut(Error(ErrorCode::kDeadlineExceeded, "slow"), false), {}},
      {ids[3], 2, Outcome::Succeeded({}), {}},
      {unknown, 1, Outcome::Succeeded({}), {}},
      {ids[4], 1, Outcome::Succeeded(Bytes("first")), {}},
      {ids[4], 1, Outcome::Failed(Error(ErrorCode::kInternal, "second"), false), {}},
      {ids[5], 1, Outcome::Failed(Error(ErrorCode::kInternal, "late"), false), {}},
  };
  std::vector<std::function<void()>> calls;
  for (Call& call : calls_made) {
    calls.push_back([&] { call.result = store->Complete(call.id, call.claim, call.outcome); });
  }
  RunBatched(*store, std::move(calls));

  EXPECT_EQ(calls_made[0].result, JobState::kSucceeded);
  EXPECT_EQ(GetOk(ids[0]).result, Bytes("r0"));
  EXPECT_EQ(calls_made[1].result, JobState::kQueued);
  Job retried = GetOk(ids[1]);
  EXPECT_EQ(retried.state, JobState::kQueued);
  EXPECT_EQ(retried.attempts, 1u);
  ASSERT_TRUE(retried.error);
  EXPECT_EQ(retried.error->message, "boom \xef\xbf\xbd");
  EXPECT_EQ(calls_made[2].result, JobState::kTimedOut);
  EXPECT_EQ(GetOk(ids[2]).error->code, ErrorCode::kDeadlineExceeded);
  ASSERT_FALSE(calls_made[3].result);
  EXPECT_EQ(calls_made[3].result.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_EQ(GetOk(ids[3]).state, JobState::kRunning);
  ASSERT_FALSE(calls_made[4].result);
  EXPECT_EQ(calls_made[4].result.error().code, ErrorCode::kNotFound);
  // One of the two outcomes for ids[4] was recorded, the other refused.
  Call& first = calls_made[5];
  Call& second = calls_made[6];
  ASSERT_NE(first.result.has_value(), second.result.has_value());
  Call& recorded = first.result ? first : second;
  Call& refused = first.result ? second : first;
  EXPECT_EQ(refused.result.error().code, ErrorCode::kFailedPrecondition);
  Job twice = GetOk(ids[4]);
  EXPECT_EQ(twice.state, *recorded.result);
  EXPECT_EQ(twice.attempts, 1u);
  EXPECT_EQ(calls_made[7].result, JobState::kCancelled);
  EXPECT_EQ(GetOk(ids[5]).state, JobState::kCancelled);
}

// On PostgreSQL, the starts and heartbeats of one transaction go as one
// UPDATE; each caller still gets its own lease or its own error.
TEST_P(StoreTest, LeasesSharingATransactionEachGetTheirAnswer) {
  std::vector<std::string> ids;
  for (int i = 0; i < 4; ++i) ids.push_back(SubmitOk(Spec("job " + std::to_string(i))));
  ASSERT_EQ(ClaimOk(*store_, 4).size(), 4u);
  std::unique_ptr<JobStore> store = Open({.commit_lanes = 1});
  ASSERT_NE(store, nullptr);
  struct Call {
    std::string id;
    uint64_t claim;
    bool start;
    Result<TimePoint> result;
  };
  std::vector<Call> calls_made = {
      {ids[0], 1, true, {}},       {ids[1], 1, true, {}},  {ids[1], 1, true, {}},
      {ids[2], 1, false, {}},      {ids[3], 2, true, {}},  {ids[3], 2, false, {}},
      {NewJobId(), 1, true, {}},
  };
  std::vector<std::function<void()>> calls;
  for (Call& call : calls_made) {
    calls.push_back([&] {
      call.result = call.start ? store->Start(call.id, call.claim, 30s)
                               : store->Heartbeat(call.id, call.claim, 30s);
    });
  }
  RunBatched(*store, std::move(calls));

  EXPECT_TRUE(calls_made[0].result) << calls_made[0].result.error().ToString();
  EXPECT_EQ(GetOk(ids[0]).attempts, 1u);
  // Two starts of one claim: one starts it, the other finds it started.
  ASSERT_NE(calls_made[1].result.has_value(), calls_made[2].result.has_value());
  const Call& refused = calls_made[1].result ? calls_made[2] : calls_made[1];
  EXPECT_EQ(refused.result.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_NE(refused.result.error().message.find("already started"), std::string::npos)
      << refused.result.error().message;
  EXPECT_EQ(GetOk(ids[1]).attempts, 1u);
  // A heartbeat of a claim not yet started keeps it unstarted.
  EXPECT_TRUE(calls_made[3].result) << calls_made[3].result.error().ToString();
  Job beaten = GetOk(ids[2]);
  EXPECT_EQ(beaten.attempts, 0u);
  EXPECT_FALSE(beaten.started_at);
  // The lease it now holds is the 30 s one, not the claim's.
  ASSERT_TRUE(beaten.lease_until);
  EXPECT_EQ(*beaten.lease_until, *calls_made[3].result);
  for (int i : {4, 5}) {
    ASSERT_FALSE(calls_made[i].result) << i;
    EXPECT_EQ(calls_made[i].result.error().code, ErrorCode::kFailedPrecondition) << i;
  }
  EXPECT_EQ(GetOk(ids[3]).attempts, 0u);
  ASSERT_FALSE(calls_made[6].result);
  EXPECT_EQ(calls_made[6].result.error().code, ErrorCode::kNotFound);
}

TEST_P(StoreTest, ReopenedStoreHasEverythingCommitted) {
  JobSpec keyed = Spec("keyed");
  keyed.idempotency_key = "durable";
  std::string queued = SubmitOk(keyed);
  std::string done = SubmitOk(Spec("done"));
  std::string running = SubmitOk(Spec("running"));
  ASSERT_EQ(store_->Cancel(queued), CancelOutcome::kWithdrawn);
  std::vector<ClaimedJob> claimed = ClaimOk(*store_, 2);
  ASSERT_EQ(claimed.size(), 2u);
  ASSERT_EQ(store_->Complete(done, 1, Outcome::Succeeded(Bytes("result"))), JobState::kSucceeded);

  store_.reset();
  store_ = Open();
  ASSERT_NE(store_, nullptr);
  EXPECT_EQ(GetOk(queued).state, JobState::kCancelled);
  Job job = GetOk(done);
  EXPECT_EQ(job.state, JobState::kSucceeded);
  EXPECT_EQ(job.result, Bytes("result"));
  EXPECT_EQ(GetOk(running).state, JobState::kRunning);
  EXPECT_EQ(store_->GetModule(module_)->size(), 17u);
  Result<SubmitResult> again = store_->Submit(keyed);
  ASSERT_TRUE(again);
  EXPECT_FALSE(again->created);
  EXPECT_EQ(again->id, queued);
  EXPECT_EQ(store_->Complete(running, 1, Outcome::Succeeded({})), JobState::kSucceeded);
}

// Group commit: concurrent submits share transactions. Prints the rate; the
// only assertion is that batching happened, not a speed.
TEST_P(StoreTest, ConcurrentSubmitsShareCommits) {
  constexpr int kThreads = 32;
  constexpr int kPerThread = 50;
  CommitStats before = store_->commit_stats();
  auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  std::atomic<int> failures = 0;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kPerThread; ++i) {
        if (!store_->Submit(Spec())) ++failures;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  CommitStats after = store_->commit_stats();
  uint64_t transactions = after.transactions - before.transactions;
  uint64_t operations = after.operations - before.operations;
  EXPECT_EQ(failures, 0);
  EXPECT_EQ(operations, static_cast<uint64_t>(kThreads * kPerThread));
  EXPECT_LT(transactions, operations);
  std::printf("[ info ] %d submits from %d threads: %.0f jobs/s, %.1f jobs per commit\n",
              kThreads * kPerThread, kThreads, kThreads * kPerThread / seconds,
              static_cast<double>(operations) / static_cast<double>(transactions));
}

INSTANTIATE_TEST_SUITE_P(Stores, StoreTest, ::testing::Values(Backend::kSqlite, Backend::kPostgres),
                         [](const ::testing::TestParamInfo<Backend>& info) {
                           return info.param == Backend::kSqlite ? "Sqlite" : "Postgres";
                         });

TEST(OpenStoreTest, DirectoryMeansSqliteFileInIt) {
  std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("keel_open_" + std::to_string(getpid())) / "nested";
  Result<std::unique_ptr<JobStore>> store = OpenStore(dir.string());
  ASSERT_TRUE(store) << store.error().ToString();
  EXPECT_TRUE(std::filesystem::exists(dir / "keel.db"));
  store->reset();
  std::filesystem::remove_all(dir.parent_path());
  EXPECT_EQ(OpenStore("").error().code, ErrorCode::kInvalidArgument);
}

TEST(OpenStoreTest, UnreachablePostgresIsUnavailable) {
  Result<std::unique_ptr<JobStore>> store =
      OpenStore("postgresql://nobody@127.0.0.1:1/none?connect_timeout=2");
  ASSERT_FALSE(store);
  EXPECT_EQ(store.error().code, ErrorCode::kUnavailable);
}

}  // namespace
}  // namespace keel::jobs
