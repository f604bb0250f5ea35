// A fresh job store per test: a temporary SQLite data directory, or a new
// schema on the PostgreSQL server named by KEEL_TEST_PG_URL.
#ifndef KEEL_TESTS_JOBS_STORE_FIXTURE_H_
#define KEEL_TESTS_JOBS_STORE_FIXTURE_H_

#include <libpq-fe.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <string>

#include <gtest/gtest.h>

#include "base/file.h"
#include "jobs/store.h"

namespace keel::testing {

enum class Backend { kSqlite, kPostgres };

inline std::string BackendName(const ::testing::TestParamInfo<Backend>& info) {
  return info.param == Backend::kSqlite ? "Sqlite" : "Postgres";
}

inline bool PgExec(const std::string& url, const std::string& sql) {
  PGconn* conn = PQconnectdb(url.c_str());
  bool ok = PQstatus(conn) == CONNECTION_OK;
  if (ok) {
    PQsetNoticeProcessor(conn, [](void*, const char*) {}, nullptr);
    PGresult* result = PQexec(conn, sql.c_str());
    ok = PQresultStatus(result) == PGRES_COMMAND_OK;
    PQclear(result);
  }
  PQfinish(conn);
  return ok;
}

// The single integer `sql` returns on the server of `url`; -1 on error.
inline int64_t PgQueryInt(const std::string& url, const std::string& sql) {
  PGconn* conn = PQconnectdb(url.c_str());
  int64_t value = -1;
  if (PQstatus(conn) == CONNECTION_OK) {
    PGresult* result = PQexec(conn, sql.c_str());
    if (PQresultStatus(result) == PGRES_TUPLES_OK && PQntuples(result) == 1) {
      value = std::stoll(PQgetvalue(result, 0, 0));
    }
    PQclear(result);
  }
  PQfinish(conn);
  return value;
}

// Names a store for OpenStore() and removes it when destroyed.
class StoreLocation {
 public:
  // Empty name() (and a skip message) when PostgreSQL is asked for but no
  // server is configured.
  explicit StoreLocation(Backend backend) {
    static std::atomic<int> counter{0};
    std::string unique = std::to_string(getpid()) + "_" + std::to_string(++counter);
    if (backend == Backend::kPostgres) {
      const char* url = std::getenv("KEEL_TEST_PG_URL");
      if (url == nullptr || *url == '\0') {
        skip_ = "KEEL_TEST_PG_URL is not set (scripts/test starts a server)";
        return;
      }
      pg_url_ = url;
      schema_ = "keel_runner_" + unique;
      if (!PgExec(pg_url_, "CREATE SCHEMA " + schema_)) {
        skip_ = "cannot create a schema on " + pg_url_;
        return;
      }
      name_ = pg_url_ + (pg_url_.find('?') == std::string::npos ? "?" : "&") +
              "options=-csearch_path%3D" + schema_;
    } else {
      dir_ = std::filesystem::temp_directory_path() / ("keel_runner_" + unique);
      std::filesystem::remove_all(dir_);
      name_ = dir_.string();
    }
  }
  ~StoreLocation() {
    if (!schema_.empty()) PgExec(pg_url_, "DROP SCHEMA " + schema_ + " CASCADE");
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }
  const std::string& name() const { return name_; }
  const std::string& skip_reason() const { return skip_; }
  // The server's URL, without the schema; empty for SQLite.
  const std::string& pg_url() const { return pg_url_; }
  // name(), with the sessions it opens (PostgreSQL) named `application`.
  std::string NameFor(const std::string& application) const {
    return pg_url_.empty() ? name_ : name_ + "&application_name=" + application;
  }

 private:
  std::string name_, skip_, pg_url_, schema_;
  std::filesystem::path dir_;
};

// A fresh store per test with the slow_echo guest stored in it.
class StoreTest : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    location_ = std::make_unique<StoreLocation>(GetParam());
    if (location_->name().empty()) GTEST_SKIP() << location_->skip_reason();
    auto store = jobs::OpenStore(location_->name());
    ASSERT_TRUE(store) << store.error().ToString();
    store_ = std::move(*store);
    auto bytes = ReadFile(std::string(KEEL_GUEST_DIR) + "/jobs_slow_echo.wasm");
    ASSERT_TRUE(bytes);
    auto digest = store_->PutModule(*bytes);
    ASSERT_TRUE(digest) << digest.error().ToString();
    digest_ = *digest;
  }

  std::unique_ptr<StoreLocation> location_;
  std::unique_ptr<jobs::JobStore> store_;
  std::string digest_;  // of jobs_slow_echo.wasm
};

}  // namespace keel::testing

#endif  // KEEL_TESTS_JOBS_STORE_FIXTURE_H_
