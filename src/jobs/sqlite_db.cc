#include "jobs/sqlite_db.h"

namespace keel::jobs::sqlite {

namespace {

constexpr int kBusyTimeoutMs = 10000;

}  // namespace

Error SqliteError(sqlite3* db, int rc, std::string_view what) {
  int primary = rc & 0xff;
  bool transient = primary == SQLITE_BUSY || primary == SQLITE_LOCKED ||
                   primary == SQLITE_CANTOPEN || primary == SQLITE_IOERR || primary == SQLITE_FULL;
  std::string message = std::string("sqlite: ") + std::string(what) + ": ";
  message += db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  return Error(transient ? ErrorCode::kUnavailable : ErrorCode::kInternal, std::move(message));
}

Statement::~Statement() {
  if (stmt_ != nullptr) {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }
}

Statement& Statement::Bind(int index, int64_t value) {
  return Check(stmt_ ? sqlite3_bind_int64(stmt_, index, value) : SQLITE_OK);
}

Statement& Statement::Bind(int index, std::string_view text) {
  return Check(stmt_ ? sqlite3_bind_text(stmt_, index, text.data(), static_cast<int>(text.size()),
                                         SQLITE_TRANSIENT)
                     : SQLITE_OK);
}

Statement& Statement::BindOrNull(int index, std::string_view text) {
  if (!text.empty()) return Bind(index, text);
  return BindNull(index);
}

Statement& Statement::BindBlob(int index, std::span<const uint8_t> bytes) {
  if (stmt_ == nullptr) return *this;
  // A null pointer would bind NULL, not an empty blob.
  if (bytes.empty()) return Check(sqlite3_bind_zeroblob(stmt_, index, 0));
  return Check(sqlite3_bind_blob64(stmt_, index, bytes.data(), bytes.size(), SQLITE_TRANSIENT));
}

Statement& Statement::BindNull(int index) {
  return Check(stmt_ ? sqlite3_bind_null(stmt_, index) : SQLITE_OK);
}

Result<bool> Statement::Step() {
  if (rc_ != SQLITE_OK) return tl::unexpected(SqliteError(db_, rc_, "prepare/bind"));
  int rc = sqlite3_step(stmt_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  return tl::unexpected(SqliteError(db_, rc, "step"));
}

Result<void> Statement::Run() {
  while (true) {
    Result<bool> row = Step();
    if (!row) return tl::unexpected(row.error());
    if (!*row) return {};
  }
}

std::string Statement::Text(int col) const {
  const unsigned char* text = sqlite3_column_text(stmt_, col);
  if (text == nullptr) return {};
  return std::string(reinterpret_cast<const char*>(text), sqlite3_column_bytes(stmt_, col));
}

std::vector<uint8_t> Statement::Blob(int col) const {
  const auto* data = static_cast<const uint8_t*>(sqlite3_column_blob(stmt_, col));
  if (data == nullptr) return {};
  return std::vector<uint8_t>(data, data + sqlite3_column_bytes(stmt_, col));
}

Result<std::unique_ptr<Connection>> Connection::Open(const std::string& path) {
  sqlite3* db = nullptr;
  int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
  int rc = sqlite3_open_v2(path.c_str(), &db, flags, nullptr);
  auto conn = std::unique_ptr<Connection>(new Connection(db));
  if (rc != SQLITE_OK) {
    Error error = SqliteError(db, rc, "open " + path);
    error.code = ErrorCode::kUnavailable;
    return tl::unexpected(std::move(error));
  }
  sqlite3_busy_timeout(db, kBusyTimeoutMs);
  sqlite3_extended_result_codes(db, 1);
  return conn;
}

Connection::~Connection() {
  for (auto& [sql, stmt] : cache_) sqlite3_finalize(stmt);
  sqlite3_close(db_);
}

Result<void> Connection::Exec(const char* sql) {
  int rc = sqlite3_exec(db_, sql, nullptr, nullptr, nullptr);
  if (rc != SQLITE_OK) return tl::unexpected(SqliteError(db_, rc, "exec"));
  return {};
}

Statement Connection::Prepare(const std::string& sql) {
  auto it = cache_.find(sql);
  if (it != cache_.end()) return Statement(db_, it->second, SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  int rc = sqlite3_prepare_v3(db_, sql.c_str(), static_cast<int>(sql.size()),
                              SQLITE_PREPARE_PERSISTENT, &stmt, nullptr);
  if (rc != SQLITE_OK) return Statement(db_, nullptr, rc);
  cache_.emplace(sql, stmt);
  return Statement(db_, stmt, SQLITE_OK);
}

}  // namespace keel::jobs::sqlite
