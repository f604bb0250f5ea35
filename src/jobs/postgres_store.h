// The scale-out job store on PostgreSQL, through libpq.
//
// Writes go through commit lanes (StoreOptions::commit_lanes, 4 by
// default), each a connection and a thread; they share one queue, and a free
// lane takes everything waiting as one transaction (group commit; commits
// are durable with the server's default synchronous_commit=on). In a
// transaction, all submits go as one multi-row INSERT and all outcomes as
// one UPDATE (both FROM unnest of array parameters); if such a statement
// fails, the transaction's writes are retried one by one, so each caller
// gets its own answer; starts and heartbeats go as one UPDATE too. Claims
// lease a batch in one statement with FOR UPDATE SKIP LOCKED, so any number
// of processes on any number of machines can claim from one queue without
// blocking each other or getting the same job. After a commit that made work claimable, NOTIFY keel_jobs is sent on
// a connection of its own; each store LISTENs on its own connection and
// wakes its waiting claimers. Reads use a small pool of connections. Times
// come from the server's clock.
#ifndef KEEL_JOBS_POSTGRES_STORE_H_
#define KEEL_JOBS_POSTGRES_STORE_H_

#include <memory>
#include <string>

#include "jobs/store.h"
#include "keel/status.h"

namespace keel::jobs {

// Connects to `url` (a libpq connection URL or key=value string) and creates
// the schema if absent (tables keel_modules and keel_jobs in the first
// schema of the search_path). Returns the store; kUnavailable if the server
// cannot be reached, kInternal if the schema cannot be created.
[[nodiscard]] Result<std::unique_ptr<JobStore>> OpenPostgresStore(const std::string& url,
                                                                 const StoreOptions& options);

}  // namespace keel::jobs

#endif  // KEEL_JOBS_POSTGRES_STORE_H_
