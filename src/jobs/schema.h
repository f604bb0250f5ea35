// The versioned schema of keel's tables, for both databases: an ordered list
// of forward migrations per dialect, and the driver that brings a database
// to the current version when a store opens it.
//
// Version 1 is the schema keel had before versions existed; a database with
// keel's tables but no version table is taken to be at version 1. Every
// applied version is a row of keel_schema_migrations. A fresh database goes
// through the same migrations as an old one, so both end alike. A database
// at a version newer than this keel knows is refused, never changed.
//
// Adding a table (the cluster's module registry, its node list) or a column
// is one more Migration at the end of both lists, and kSchemaVersion + 1.
#ifndef KEEL_JOBS_SCHEMA_H_
#define KEEL_JOBS_SCHEMA_H_

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

#include "keel/status.h"

namespace keel::jobs::schema {

inline constexpr int kSchemaVersion = 4;

enum class Dialect : uint8_t { kSqlite, kPostgres };

struct Migration {
  int version;              // 1, 2, ...: the version the database has after it
  std::string_view summary;  // recorded in keel_schema_migrations
  const char* sql;          // statements without parameters
};

// The migrations for `dialect`, by version.
std::span<const Migration> Migrations(Dialect dialect);

// What the driver needs from a database. All calls run inside one
// transaction that the store opened and that excludes other migrators
// (SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory transaction lock).
class Database {
 public:
  virtual ~Database() = default;
  [[nodiscard]] virtual Result<void> Exec(const char* sql) = 0;
  [[nodiscard]] virtual Result<bool> TableExists(std::string_view name) = 0;
  // The highest version in keel_schema_migrations; nullopt if it is empty.
  [[nodiscard]] virtual Result<std::optional<int>> RecordedVersion() = 0;
  [[nodiscard]] virtual Result<void> Record(int version, std::string_view summary) = 0;
};

// Brings `db` to kSchemaVersion. Returns the version it had before (0 for
// an empty database); kFailedPrecondition if it is newer than this keel;
// database errors.
[[nodiscard]] Result<int> Migrate(Dialect dialect, Database& db);

}  // namespace keel::jobs::schema

#endif  // KEEL_JOBS_SCHEMA_H_
