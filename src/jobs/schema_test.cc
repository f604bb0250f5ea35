// Schema versions on both stores: a database made by the schema keel had
// before versions (v1, testdata/schema_v1_*.sql, verbatim from git) opens,
// migrates once, keeps every job and lease, and ends like a fresh one; a
// database from a newer keel is refused.
#include "jobs/schema.h"

#include <sqlite3.h>

#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "base/file.h"
#include "base/sha256.h"
#include "jobs/store.h"
#include "jobs/store_fixture.h"

namespace keel::jobs {
namespace {

using namespace std::chrono_literals;
using namespace std::string_view_literals;
using testing::Backend;

std::vector<uint8_t> Bytes(std::string_view text) { return {text.begin(), text.end()}; }

std::string ReadText(const std::string& path) {
  Result<std::vector<uint8_t>> bytes = ReadFile(path);
  EXPECT_TRUE(bytes) << path;
  return bytes ? std::string(bytes->begin(), bytes->end()) : std::string();
}

// Runs SQL on a store's database, and reads one integer, without keel.
class RawDatabase {
 public:
  RawDatabase(Backend backend, const testing::StoreLocation& location)
      : backend_(backend), name_(location.name()) {
    if (backend_ == Backend::kSqlite) std::filesystem::create_directories(name_);
  }

  bool Exec(const std::string& sql) {
    if (backend_ == Backend::kPostgres) return testing::PgExec(name_, sql);
    sqlite3* db = nullptr;
    bool ok = sqlite3_open((name_ + "/keel.db").c_str(), &db) == SQLITE_OK &&
              sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK;
    if (!ok) ADD_FAILURE() << sqlite3_errmsg(db);
    sqlite3_close(db);
    return ok;
  }

  int64_t QueryInt(const std::string& sql) {
    if (backend_ == Backend::kPostgres) return testing::PgQueryInt(name_, sql);
    sqlite3* db = nullptr;
    sqlite3_stmt* stmt = nullptr;
    int64_t value = -1;
    if (sqlite3_open((name_ + "/keel.db").c_str(), &db) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr) == SQLITE_OK &&
        sqlite3_step(stmt) == SQLITE_ROW) {
      value = sqlite3_column_int64(stmt, 0);
    }
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    return value;
  }

  // The single text value `sql` returns; empty on error or NULL.
  std::string QueryText(const std::string& sql) {
    std::string value;
    if (backend_ == Backend::kPostgres) {
      PGconn* conn = PQconnectdb(name_.c_str());
      PGresult* result = PQexec(conn, sql.c_str());
      if (PQresultStatus(result) == PGRES_TUPLES_OK && PQntuples(result) == 1) {
        value = PQgetvalue(result, 0, 0);
      } else {
        ADD_FAILURE() << PQresultErrorMessage(result);
      }
      PQclear(result);
      PQfinish(conn);
      return value;
    }
    sqlite3* db = nullptr;
    sqlite3_stmt* stmt = nullptr;
    if (sqlite3_open((name_ + "/keel.db").c_str(), &db) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr) == SQLITE_OK &&
        sqlite3_step(stmt) == SQLITE_ROW && sqlite3_column_text(stmt, 0) != nullptr) {
      value = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
    } else {
      ADD_FAILURE() << sqlite3_errmsg(db);
    }
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    return value;
  }

  // A bytes literal of the dialect.
  std::string BytesLiteral(std::string_view bytes) const {
    static constexpr char kHex[] = "0123456789abcdef";
    std::string hex;
    for (unsigned char c : bytes) {
      hex += kHex[c >> 4];
      hex += kHex[c & 15];
    }
    return backend_ == Backend::kSqlite ? "X'" + hex + "'" : "'\\x" + hex + "'::bytea";
  }

  // Makes the database a v1 keel made: its DDL, then jobs in every shape.
  void CreateV1(const std::string& digest, std::span<const uint8_t> module) {
    std::string file = backend_ == Backend::kSqlite ? "schema_v1_sqlite.sql"
                                                    : "schema_v1_postgres.sql";
    ASSERT_TRUE(Exec(ReadText(std::string(KEEL_SOURCE_DIR) + "/src/jobs/testdata/" + file)));
    std::string module_text(module.begin(), module.end());
    ASSERT_TRUE(Exec("INSERT INTO keel_modules (digest, bytes, created_us) VALUES ('" + digest +
                     "', " + BytesLiteral(module_text) + ", 1000)"));
    const std::string columns =
        "INSERT INTO keel_jobs (id, module_digest, export_name, deadline_ms, idempotency_key, "
        "max_attempts, backoff_ms, state, attempts, created_us, updated_us, not_before_us, "
        "lease_until_us, finished_us, runner, error_code, error_message, input, result) VALUES ";
    // A lease far in the future: the v1 runner holding it is still alive.
    const int64_t far = 4102444800000000;  // 2100-01-01
    std::string d = "'" + digest + "'";
    ASSERT_TRUE(Exec(columns + "('" + kQueued + "', " + d +
                     ", 'run', 5000, 'v1-key', 3, 0, 'queued', 0, 1, 1, 1, NULL, NULL, NULL, "
                     "NULL, NULL, " + BytesLiteral("queued-in") + ", NULL)"));
    ASSERT_TRUE(Exec(columns + "('" + kRunning + "', " + d +
                     ", 'run', 5000, NULL, 3, 0, 'running', 1, 2, 2, 2, " + std::to_string(far) +
                     ", NULL, 'v1-runner', NULL, NULL, " + BytesLiteral("running-in") + ", NULL)"));
    ASSERT_TRUE(Exec(columns + "('" + kSucceeded + "', " + d +
                     ", 'run', 5000, NULL, 3, 0, 'succeeded', 1, 3, 3, 3, NULL, 3, 'v1-runner', "
                     "NULL, NULL, " + BytesLiteral("done-in") + ", " +
                     BytesLiteral(std::string("out\0put", 7)) + ")"));
    ASSERT_TRUE(Exec(columns + "('" + kFailed + "', " + d +
                     ", 'run', 5000, NULL, 1, 0, 'failed', 1, 4, 4, 4, NULL, 4, 'v1-runner', "
                     "'trap', 'it trapped', " + BytesLiteral("") + ", NULL)"));
  }

  static constexpr char kQueued[] = "01H00000000000000000000001";
  static constexpr char kRunning[] = "01H00000000000000000000002";
  static constexpr char kSucceeded[] = "01H00000000000000000000003";
  static constexpr char kFailed[] = "01H00000000000000000000004";

 private:
  Backend backend_;
  std::string name_;
};

class SchemaTest : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    location_ = std::make_unique<testing::StoreLocation>(GetParam());
    if (location_->name().empty()) GTEST_SKIP() << location_->skip_reason();
    db_ = std::make_unique<RawDatabase>(GetParam(), *location_);
    module_ = Bytes("\0asm v1 module"sv);
    digest_ = Sha256Hex(module_);
  }

  std::unique_ptr<JobStore> Open() {
    Result<std::unique_ptr<JobStore>> store = OpenStore(location_->name());
    EXPECT_TRUE(store) << store.error().ToString();
    return store ? std::move(*store) : nullptr;
  }

  int64_t Version() { return db_->QueryInt("SELECT max(version) FROM keel_schema_migrations"); }
  int64_t Migrations() { return db_->QueryInt("SELECT count(*) FROM keel_schema_migrations"); }

  std::unique_ptr<testing::StoreLocation> location_;
  std::unique_ptr<RawDatabase> db_;
  std::vector<uint8_t> module_;
  std::string digest_;
};

TEST_P(SchemaTest, OpensADatabaseMadeByTheV1SchemaAndKeepsEverything) {
  ASSERT_NO_FATAL_FAILURE(db_->CreateV1(digest_, module_));
  std::unique_ptr<JobStore> store = Open();
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(Version(), schema::kSchemaVersion);
  EXPECT_EQ(Migrations(), schema::kSchemaVersion);  // 1 (found), then each migration

  Job queued = *store->Get(RawDatabase::kQueued);
  EXPECT_EQ(queued.state, JobState::kQueued);
  EXPECT_EQ(queued.spec.idempotency_key, "v1-key");
  EXPECT_EQ(queued.spec.input, Bytes("queued-in"));
  EXPECT_FALSE(queued.started_at);
  Job done = *store->Get(RawDatabase::kSucceeded);
  EXPECT_EQ(done.state, JobState::kSucceeded);
  EXPECT_EQ(done.result, Bytes(std::string_view("out\0put", 7)));
  Job failed = *store->Get(RawDatabase::kFailed);
  ASSERT_TRUE(failed.error);
  EXPECT_EQ(failed.error->code, ErrorCode::kTrap);
  EXPECT_EQ(failed.error->message, "it trapped");
  EXPECT_EQ(store->GetModule(digest_), module_);

  // A job a v1 runner was running had started, and its lease is still
  // named by its attempt number.
  Job running = *store->Get(RawDatabase::kRunning);
  EXPECT_EQ(running.state, JobState::kRunning);
  EXPECT_TRUE(running.started_at);
  EXPECT_TRUE(store->Heartbeat(RawDatabase::kRunning, 1, 30s));
  EXPECT_EQ(store->Start(RawDatabase::kRunning, 1, 30s).error().code,
            ErrorCode::kFailedPrecondition);
  EXPECT_EQ(store->Complete(RawDatabase::kRunning, 1, Outcome::Succeeded(Bytes("r"))),
            JobState::kSucceeded);
  EXPECT_EQ(store->Get(RawDatabase::kRunning)->attempts, 1u);

  // The v1 key still admits one job; the queued job is claimed as usual.
  JobSpec spec{.module_digest = digest_, .export_name = "run", .input = Bytes("queued-in"),
               .deadline = 5000ms, .idempotency_key = "v1-key", .max_attempts = 3,
               .retry_backoff = 0ms};
  Result<SubmitResult> again = store->Submit(spec);
  ASSERT_TRUE(again) << again.error().ToString();
  EXPECT_FALSE(again->created);
  EXPECT_FALSE(again->conflict);
  EXPECT_EQ(again->id, RawDatabase::kQueued);
  Result<std::vector<ClaimedJob>> claimed = store->Claim({.runner = "v2-runner"});
  ASSERT_TRUE(claimed) << claimed.error().ToString();
  ASSERT_EQ(claimed->size(), 1u);
  EXPECT_EQ((*claimed)[0].id, RawDatabase::kQueued);
  EXPECT_EQ((*claimed)[0].claim, 1u);

  // Opening again changes nothing.
  store.reset();
  store = Open();
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(Migrations(), schema::kSchemaVersion);
  EXPECT_EQ(store->Get(RawDatabase::kQueued)->state, JobState::kRunning);
}

// Migrated and fresh databases have the same tables, column for column,
// and the same indexes.
TEST_P(SchemaTest, AMigratedDatabaseEndsLikeAFreshOne) {
  testing::StoreLocation fresh_location(GetParam());
  RawDatabase fresh(GetParam(), fresh_location);
  ASSERT_TRUE(OpenStore(fresh_location.name()));
  ASSERT_NO_FATAL_FAILURE(db_->CreateV1(digest_, module_));
  ASSERT_NE(Open(), nullptr);
  bool sqlite = GetParam() == Backend::kSqlite;
  for (std::string table : {"keel_jobs", "keel_modules", "keel_schema_migrations"}) {
    std::string columns =
        sqlite ? "SELECT group_concat(name || ' ' || type || ' ' || \"notnull\" || ' ' || "
                 "coalesce(dflt_value, '-') || ' ' || pk, ', ') FROM (SELECT * FROM "
                 "pragma_table_info('" + table + "') ORDER BY cid)"
               : "SELECT string_agg(column_name || ' ' || data_type || ' ' || is_nullable || ' ' "
                 "|| coalesce(column_default, '-'), ', ' ORDER BY ordinal_position) FROM "
                 "information_schema.columns WHERE table_schema = current_schema() AND "
                 "table_name = '" + table + "'";
    std::string migrated = db_->QueryText(columns);
    EXPECT_NE(migrated, "") << table;
    EXPECT_EQ(migrated, fresh.QueryText(columns)) << table;
  }
  std::string indexes =
      sqlite ? "SELECT group_concat(name || ': ' || sql, '; ') FROM (SELECT name, sql FROM "
               "sqlite_master WHERE type = 'index' AND tbl_name = 'keel_jobs' AND sql IS NOT NULL "
               "ORDER BY name)"
             : "SELECT string_agg(replace(indexdef, current_schema() || '.', ''), '; ' ORDER BY "
               "indexname) FROM pg_indexes WHERE schemaname = current_schema() AND "
               "tablename = 'keel_jobs'";
  EXPECT_NE(db_->QueryText(indexes), "");
  EXPECT_EQ(db_->QueryText(indexes), fresh.QueryText(indexes));
}

TEST_P(SchemaTest, ADatabaseFromANewerKeelIsRefusedUntouched) {
  ASSERT_NE(Open(), nullptr);
  ASSERT_TRUE(db_->Exec("INSERT INTO keel_schema_migrations (version, summary, applied_us) "
                        "VALUES (99, 'future', 1)"));
  Result<std::unique_ptr<JobStore>> store = OpenStore(location_->name());
  ASSERT_FALSE(store);
  EXPECT_EQ(store.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_NE(store.error().message.find("schema version 99"), std::string::npos)
      << store.error().message;
  EXPECT_EQ(Migrations(), schema::kSchemaVersion + 1);
}

// Processes (here: stores) opening one v1 database at once migrate it once.
TEST_P(SchemaTest, ConcurrentOpenersMigrateOnce) {
  ASSERT_NO_FATAL_FAILURE(db_->CreateV1(digest_, module_));
  std::vector<Result<std::unique_ptr<JobStore>>> stores(4);
  std::vector<std::thread> threads;
  for (auto& store : stores) {
    threads.emplace_back([&] { store = OpenStore(location_->name()); });
  }
  for (auto& thread : threads) thread.join();
  for (auto& store : stores) ASSERT_TRUE(store) << store.error().ToString();
  EXPECT_EQ(Migrations(), schema::kSchemaVersion);
  for (auto& store : stores) {
    EXPECT_EQ((*store)->Get(RawDatabase::kQueued)->state, JobState::kQueued);
  }
}

INSTANTIATE_TEST_SUITE_P(Stores, SchemaTest,
                         ::testing::Values(Backend::kSqlite, Backend::kPostgres),
                         testing::BackendName);

}  // namespace
}  // namespace keel::jobs
