// The cluster store on SQLite and on PostgreSQL (KEEL_TEST_PG_URL, a schema
// per test; skipped without it): names and their versions, garbage
// collection of module bytes, nodes and their liveness, abort requests, and
// change notifications between two processes' stores.
#include "jobs/cluster_store.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <thread>

#include <gtest/gtest.h>
#include <libpq-fe.h>

#include "base/sha256.h"
#include "testing/pg_command.h"

namespace keel::jobs {
namespace {

using namespace std::chrono_literals;

enum class Backend { kSqlite, kPostgres };

std::vector<uint8_t> Bytes(std::string_view text) { return {text.begin(), text.end()}; }

using testing::PgCommand;

class ClusterStoreTest : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    static int counter = 0;
    std::string unique = std::to_string(getpid()) + "_" + std::to_string(++counter);
    if (GetParam() == Backend::kPostgres) {
      const char* url = std::getenv("KEEL_TEST_PG_URL");
      if (url == nullptr || url[0] == '\0') GTEST_SKIP() << "KEEL_TEST_PG_URL is not set";
      pg_url_ = url;
      schema_ = "keel_cluster_store_" + unique;
      ASSERT_NO_FATAL_FAILURE(PgCommand(pg_url_, "CREATE SCHEMA " + schema_));
      name_ = pg_url_ + (pg_url_.find('?') == std::string::npos ? "?" : "&") +
              "options=-csearch_path%3D" + schema_;
    } else {
      dir_ = std::filesystem::temp_directory_path() / ("keel_cluster_store_test_" + unique);
      std::filesystem::remove_all(dir_);
      name_ = dir_.string();
    }
    auto jobs = OpenStore(name_);  // creates the schema
    ASSERT_TRUE(jobs) << jobs.error().ToString();
    jobs_ = std::move(*jobs);
    cluster_ = Open();
    ASSERT_NE(cluster_, nullptr);
  }

  void TearDown() override {
    cluster_.reset();
    jobs_.reset();
    if (!schema_.empty()) PgCommand(pg_url_, "DROP SCHEMA " + schema_ + " CASCADE");
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  std::unique_ptr<ClusterStore> Open() {
    auto store = OpenClusterStore(name_);
    EXPECT_TRUE(store) << store.error().ToString();
    return store ? std::move(*store) : nullptr;
  }

  std::string pg_url_, schema_, name_;
  std::filesystem::path dir_;
  std::unique_ptr<JobStore> jobs_;
  std::unique_ptr<ClusterStore> cluster_;
};

TEST_P(ClusterStoreTest, NamesCarryAVersionPerChange) {
  auto a = Bytes("module a"), b = Bytes("module b");
  auto v1 = cluster_->SetName("m", Sha256Hex(a), a, "reset", "{}");
  ASSERT_TRUE(v1) << v1.error().ToString();
  auto v2 = cluster_->SetName("m", Sha256Hex(b), b, "keep", "{}");
  ASSERT_TRUE(v2);
  EXPECT_GT(*v2, *v1);
  auto snapshot = cluster_->Names();
  ASSERT_TRUE(snapshot);
  EXPECT_EQ(snapshot->version, *v2);
  ASSERT_EQ(snapshot->names.size(), 1u);
  EXPECT_EQ(snapshot->names[0].digest, Sha256Hex(b));
  EXPECT_EQ(snapshot->names[0].state, "keep");
  EXPECT_EQ(snapshot->names[0].version, *v2);
  // The bytes went in with the name.
  EXPECT_EQ(*jobs_->GetModule(Sha256Hex(b)), b);
  auto deleted = cluster_->DeleteName("m");
  ASSERT_TRUE(deleted);
  EXPECT_EQ(*deleted, Sha256Hex(b));
  EXPECT_GT(*cluster_->RegistryVersion(), *v2);
  EXPECT_TRUE(cluster_->Names()->names.empty());
  EXPECT_EQ(cluster_->DeleteName("m").error().code, ErrorCode::kNotFound);
}

TEST_P(ClusterStoreTest, BytesNothingRefersToAreDeleted) {
  auto a = Bytes("module a"), b = Bytes("module b"), c = Bytes("module c");
  ASSERT_TRUE(cluster_->SetName("a", Sha256Hex(a), a, "reset", "{}"));
  ASSERT_TRUE(cluster_->SetName("b", Sha256Hex(b), b, "reset", "{}"));
  ASSERT_TRUE(cluster_->SetName("c", Sha256Hex(c), c, "reset", "{}"));
  JobSpec spec;
  spec.module_digest = Sha256Hex(b);
  spec.export_name = "run";
  ASSERT_TRUE(jobs_->Submit(spec));
  for (const char* name : {"a", "b", "c"}) ASSERT_TRUE(cluster_->DeleteName(name));
  auto deleted = cluster_->DeleteUnreferencedModules({Sha256Hex(c)});
  ASSERT_TRUE(deleted) << deleted.error().ToString();
  EXPECT_EQ(*deleted, 1);  // a: b has a job, c is kept
  EXPECT_EQ(jobs_->GetModule(Sha256Hex(a)).error().code, ErrorCode::kNotFound);
  EXPECT_TRUE(jobs_->GetModule(Sha256Hex(b)));
  EXPECT_TRUE(jobs_->GetModule(Sha256Hex(c)));
  // Named again, bytes are not garbage any more.
  ASSERT_TRUE(cluster_->SetName("c2", Sha256Hex(c), c, "reset", "{}"));
  EXPECT_EQ(*cluster_->DeleteUnreferencedModules({}), 0);
  EXPECT_TRUE(jobs_->GetModule(Sha256Hex(c)));
}

// The job store once cached the digests it had seen; bytes collected since
// must be refused by digest, with or without a key, and stored again by a
// new upload.
TEST_P(ClusterStoreTest, SubmitNamingCollectedBytesIsRefused) {
  auto a = Bytes("module a");
  std::string digest = Sha256Hex(a);
  ASSERT_EQ(*jobs_->PutModule(a), digest);
  ASSERT_TRUE(cluster_->SetName("a", digest, a, "reset", "{}"));
  JobSpec spec;
  spec.module_digest = digest;
  spec.export_name = "run";
  ASSERT_TRUE(cluster_->DeleteName("a"));
  ASSERT_EQ(*cluster_->DeleteUnreferencedModules({}), 1);
  auto refused = jobs_->Submit(spec);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, ErrorCode::kNotFound);
  EXPECT_NE(refused.error().message.find(digest), std::string::npos) << refused.error().message;
  spec.idempotency_key = "k";
  refused = jobs_->Submit(spec);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, ErrorCode::kNotFound);
  ASSERT_EQ(*jobs_->PutModule(a), digest);
  EXPECT_TRUE(jobs_->GetModule(digest));
  auto accepted = jobs_->Submit(spec);
  ASSERT_TRUE(accepted) << accepted.error().ToString();
  EXPECT_TRUE(accepted->created);
}

// A PostgreSQL connection of the test's own, for holding a transaction open.
class PgSession {
 public:
  explicit PgSession(const std::string& url) : conn_(PQconnectdb(url.c_str())) {
    PQsetNoticeProcessor(conn_, [](void*, const char*) {}, nullptr);
  }
  ~PgSession() { PQfinish(conn_); }
  bool ok() const { return PQstatus(conn_) == CONNECTION_OK; }
  void Run(const std::string& sql) {
    PGresult* result = PQexec(conn_, sql.c_str());
    ExecStatusType status = PQresultStatus(result);
    EXPECT_TRUE(status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK)
        << sql << ": " << PQresultErrorMessage(result);
    PQclear(result);
  }
  // The first column of the first row of `sql`, a number.
  int64_t Number(const std::string& sql) {
    PGresult* result = PQexec(conn_, sql.c_str());
    int64_t number = PQntuples(result) == 1 ? std::atoll(PQgetvalue(result, 0, 0)) : -1;
    PQclear(result);
    return number;
  }

 private:
  PGconn* conn_;
};

// A job inserted by another node, not yet committed, holds its module's
// bytes (as the store's insert does: FOR KEY SHARE on the module row): the
// collection leaves them, without waiting, and after the commit too.
TEST_P(ClusterStoreTest, CollectionLeavesBytesAnUncommittedJobHolds) {
  if (GetParam() != Backend::kPostgres) GTEST_SKIP() << "one writer at a time on SQLite";
  auto a = Bytes("module a");
  std::string digest = Sha256Hex(a);
  ASSERT_TRUE(cluster_->SetName("a", digest, a, "reset", "{}"));
  ASSERT_TRUE(cluster_->DeleteName("a"));
  PgSession other(name_);
  ASSERT_TRUE(other.ok());
  other.Run("BEGIN");
  other.Run(
      "INSERT INTO keel_jobs (id, module_digest, export_name, input, deadline_ms, max_attempts, "
      "backoff_ms, state, created_us, updated_us, not_before_us) SELECT 'other', m.digest, 'run', "
      "'', 1000, 1, 0, 'queued', 0, 0, 0 FROM keel_modules m WHERE m.digest = '" +
      digest + "' FOR KEY SHARE OF m");
  EXPECT_EQ(*cluster_->DeleteUnreferencedModules({}), 0);
  other.Run("COMMIT");
  EXPECT_EQ(*cluster_->DeleteUnreferencedModules({}), 0);
  EXPECT_TRUE(jobs_->GetModule(digest));
}

// The other way round: a collection on another node has deleted the bytes
// but not committed. A submit by digest waits for it and is then refused;
// it never lands a job on deleted bytes.
TEST_P(ClusterStoreTest, SubmitDuringACollectionOfItsBytesIsRefused) {
  if (GetParam() != Backend::kPostgres) GTEST_SKIP() << "one writer at a time on SQLite";
  auto a = Bytes("module a");
  std::string digest = Sha256Hex(a);
  ASSERT_EQ(*jobs_->PutModule(a), digest);
  PgSession other(name_);
  ASSERT_TRUE(other.ok());
  other.Run("BEGIN");
  other.Run("SELECT 1 FROM keel_modules WHERE digest = '" + digest + "' FOR UPDATE");
  other.Run("DELETE FROM keel_modules WHERE digest = '" + digest + "'");
  JobSpec spec;
  spec.module_digest = digest;
  spec.export_name = "run";
  Result<SubmitResult> submitted = MakeError(ErrorCode::kInternal, "not run");
  std::thread submitter([&] { submitted = jobs_->Submit(spec); });
  // The gate: the submit's insert waiting for the collection's row lock.
  PgSession watcher(pg_url_);
  auto give_up = std::chrono::steady_clock::now() + 30s;
  while (watcher.Number("SELECT count(*) FROM pg_locks WHERE NOT granted") == 0 &&
         std::chrono::steady_clock::now() < give_up) {
    std::this_thread::yield();
  }
  EXPECT_EQ(watcher.Number("SELECT count(*) FROM pg_locks WHERE NOT granted"), 1);
  other.Run("COMMIT");
  submitter.join();
  ASSERT_FALSE(submitted);
  EXPECT_EQ(submitted.error().code, ErrorCode::kNotFound) << submitted.error().ToString();
}

TEST_P(ClusterStoreTest, NodesAreAliveWithinTheirLease) {
  NodeReport report{.name = "n1", .address = "127.0.0.1:1", .version = "v", .workers = 2, .lease = 60s};
  ASSERT_TRUE(cluster_->Heartbeat(report, /*first=*/true));
  NodeReport other = report;
  other.name = "n2";
  ASSERT_TRUE(cluster_->Heartbeat(other, /*first=*/true));
  auto nodes = cluster_->Nodes();
  ASSERT_TRUE(nodes) << nodes.error().ToString();
  ASSERT_EQ(nodes->size(), 2u);
  EXPECT_EQ((*nodes)[1].report.name, "n2");
  EXPECT_EQ((*nodes)[0].report.name, "n1");
  EXPECT_TRUE((*nodes)[0].alive);
  EXPECT_EQ((*nodes)[0].report.workers, 2);
  ASSERT_TRUE(cluster_->MarkStopped("n1"));
  nodes = cluster_->Nodes();
  EXPECT_FALSE((*nodes)[0].alive);
  EXPECT_TRUE((*nodes)[0].stopped);
  // Back under the same name: alive, the start time kept unless `first`.
  TimePoint started = (*nodes)[0].started_at;
  ASSERT_TRUE(cluster_->Heartbeat(report, /*first=*/false));
  nodes = cluster_->Nodes();
  EXPECT_TRUE((*nodes)[0].alive);
  EXPECT_EQ((*nodes)[0].started_at, started);
}

TEST_P(ClusterStoreTest, AbortRequestsReachTheLeaseHolder) {
  auto a = Bytes("module a");
  ASSERT_TRUE(cluster_->SetName("a", Sha256Hex(a), a, "reset", "{}"));
  JobSpec spec;
  spec.module_digest = Sha256Hex(a);
  spec.export_name = "run";
  auto job = jobs_->Submit(spec);
  ASSERT_TRUE(job);
  auto claimed = jobs_->Claim({.runner = "owner", .max_jobs = 1});
  ASSERT_TRUE(claimed);
  ASSERT_EQ(claimed->size(), 1u);
  ASSERT_TRUE(cluster_->RequestAbort(job->id));
  EXPECT_EQ(*cluster_->AbortRequests("owner"), std::vector<std::string>{job->id});
  EXPECT_TRUE(cluster_->AbortRequests("someone-else")->empty());
  // Once the job no longer runs, the request is forgotten.
  ASSERT_TRUE(jobs_->Complete(job->id, (*claimed)[0].claim, Outcome::Succeeded({})));
  EXPECT_TRUE(cluster_->AbortRequests("owner")->empty());
}

// A write through one store object wakes Wait() on another (on PostgreSQL:
// NOTIFY, as between two processes).
TEST_P(ClusterStoreTest, ChangesWakeOtherStores) {
  if (GetParam() == Backend::kSqlite) GTEST_SKIP() << "one node: only its own writes";
  std::unique_ptr<ClusterStore> other = Open();
  ASSERT_NE(other, nullptr);
  // The listener counts its first connection as a change: from then on it
  // hears every NOTIFY.
  auto until = std::chrono::steady_clock::now() + 10s;
  while (other->changes() == 0 && std::chrono::steady_clock::now() < until) other->Wait(0, 10s);
  const uint64_t seen = other->changes();
  ASSERT_GT(seen, 0u);
  auto a = Bytes("module a");
  ASSERT_TRUE(cluster_->SetName("a", Sha256Hex(a), a, "reset", "{}"));
  until = std::chrono::steady_clock::now() + 10s;
  while (other->changes() == seen && std::chrono::steady_clock::now() < until) other->Wait(seen, 10s);
  EXPECT_NE(other->changes(), seen);
}

INSTANTIATE_TEST_SUITE_P(Stores, ClusterStoreTest, ::testing::Values(Backend::kSqlite, Backend::kPostgres),
                         [](const auto& info) { return info.param == Backend::kSqlite ? "Sqlite" : "Postgres"; });

}  // namespace
}  // namespace keel::jobs
