// SQLite plumbing for the stores that keep their tables in keel.db: one
// connection with its cached prepared statements, and statements that report
// failed binds at their first step. Shared by the job store and, later, any
// other table kept in the same file.
#ifndef KEEL_JOBS_SQLITE_DB_H_
#define KEEL_JOBS_SQLITE_DB_H_

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "keel/status.h"

namespace keel::jobs::sqlite {

// kUnavailable for errors a retry may cure (busy, locked, I/O, disk full),
// kInternal otherwise; the message names `what` and SQLite's reason.
Error SqliteError(sqlite3* db, int rc, std::string_view what);

// A prepared statement borrowed from a Connection's cache; reset when this
// goes away. A failed prepare or bind is reported by the next Step().
// Move-only; used by one thread.
class Statement {
 public:
  Statement(sqlite3* db, sqlite3_stmt* stmt, int rc) : db_(db), stmt_(stmt), rc_(rc) {}
  Statement(Statement&& other) noexcept
      : db_(other.db_), stmt_(std::exchange(other.stmt_, nullptr)), rc_(other.rc_) {}
  Statement& operator=(Statement&&) = delete;
  ~Statement();

  Statement& Bind(int index, int64_t value);
  Statement& Bind(int index, std::string_view text);
  // Binds NULL for empty text (optional text columns).
  Statement& BindOrNull(int index, std::string_view text);
  Statement& BindBlob(int index, std::span<const uint8_t> bytes);
  Statement& BindNull(int index);

  // Returns true when a row is ready, false when the statement is done.
  [[nodiscard]] Result<bool> Step();
  // Steps to the end, ignoring rows.
  [[nodiscard]] Result<void> Run();

  bool IsNull(int col) const { return sqlite3_column_type(stmt_, col) == SQLITE_NULL; }
  int64_t Int(int col) const { return sqlite3_column_int64(stmt_, col); }
  std::string Text(int col) const;
  std::vector<uint8_t> Blob(int col) const;

 private:
  Statement& Check(int rc) {
    if (rc_ == SQLITE_OK) rc_ = rc;
    return *this;
  }

  sqlite3* db_;
  sqlite3_stmt* stmt_;
  int rc_;
};

// One connection with its prepared statements. Used by one thread at a time.
class Connection {
 public:
  // Opens (creating if missing) the file at `path`. kUnavailable on failure.
  [[nodiscard]] static Result<std::unique_ptr<Connection>> Open(const std::string& path);
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Runs one or more statements without parameters.
  [[nodiscard]] Result<void> Exec(const char* sql);

  // The cached statement for `sql`, ready to bind.
  Statement Prepare(const std::string& sql);

  int64_t changes() const { return sqlite3_changes64(db_); }
  // For ConnectionPool: SQLite connections do not break.
  bool healthy() const { return true; }

 private:
  explicit Connection(sqlite3* db) : db_(db) {}

  sqlite3* db_;
  std::unordered_map<std::string, sqlite3_stmt*> cache_;
};

}  // namespace keel::jobs::sqlite

#endif  // KEEL_JOBS_SQLITE_DB_H_
