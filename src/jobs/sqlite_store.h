// The embedded job store: one SQLite file in WAL mode.
//
// Durability: synchronous=FULL, so every commit fsyncs the WAL before it
// returns; a Submit that returned survives a process crash and a power loss.
// (NORMAL would only survive a process crash.) Group commit pays that fsync
// once per batch of concurrent writes, not once per job.
//
// All writes go through one connection on one committer thread, each batch in
// one BEGIN IMMEDIATE transaction, so other processes opening the same file
// are serialized by SQLite's write lock (busy_timeout waits for it). Reads use
// separate connections and see the last commit. Claimers in this process
// are woken by a condition variable; those in other processes poll.
#ifndef KEEL_JOBS_SQLITE_STORE_H_
#define KEEL_JOBS_SQLITE_STORE_H_

#include <memory>
#include <string>

#include "jobs/store.h"
#include "keel/status.h"

namespace keel::jobs {

// Opens (creating if missing) the database file at `path` and its schema.
// Returns the store; kUnavailable if the file cannot be opened or set up.
[[nodiscard]] Result<std::unique_ptr<JobStore>> OpenSqliteStore(const std::string& path,
                                                               const StoreOptions& options);

}  // namespace keel::jobs

#endif  // KEEL_JOBS_SQLITE_STORE_H_
