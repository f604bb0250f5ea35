// PostgreSQL plumbing for the stores that keep their tables on one server
// (the job queue today; the cluster's module registry and node list can join
// it): statement parameters, binary results, a connection with its prepared
// statements, and commit lanes that batch concurrent writes.
#ifndef KEEL_JOBS_POSTGRES_DB_H_
#define KEEL_JOBS_POSTGRES_DB_H_

#include <libpq-fe.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "jobs/group_commit.h"
#include "base/mutex.h"
#include "jobs/internal.h"
#include "keel/status.h"

namespace keel::jobs::pg {

// Statement parameters: text, except bytea which is sent binary (no
// escaping). Borrows byte spans; the owner must outlive the call.
class Params {
 public:
  // PostgreSQL text cannot hold NUL, and libpq would read a text parameter
  // only up to its first NUL: text with a NUL makes the statement fail with
  // kInvalidArgument instead of silently storing a truncated value.
  Params& Add(std::string_view text);
  Params& Add(int64_t value) { return Add(std::string_view(std::to_string(value))); }
  Params& AddBool(bool value) { return Add(std::string_view(value ? "t" : "f")); }
  // Empty text becomes NULL (optional text columns).
  Params& AddOrNull(std::string_view text) { return text.empty() ? AddNull() : Add(text); }
  Params& AddBytes(std::span<const uint8_t> bytes);
  Params& AddNull() { return Push(nullptr, 0, 0); }
  // One-dimensional arrays, sent binary, for statements that take a whole
  // batch at once (`unnest($1::text[], ...)`). In AddTextArray an empty
  // string stands for NULL when `empty_is_null`; text with NUL is refused
  // as in Add().
  Params& AddTextArray(std::span<const std::string_view> texts, bool empty_is_null = false);
  Params& AddBytesArray(std::span<const std::span<const uint8_t>> values);
  Params& AddIntArray(std::span<const int64_t> values);
  Params& AddBoolArray(const std::vector<bool>& values);

  int size() const { return static_cast<int>(values_.size()); }
  const char* const* values() const { return values_.data(); }
  const int* lengths() const { return lengths_.data(); }
  const int* formats() const { return formats_.data(); }
  // Why these parameters cannot be sent, if they cannot.
  const std::optional<Error>& error() const { return error_; }

 private:
  Params& Push(const char* value, int length, int format);
  // Appends the binary array `encoded` (see ArrayEncoder in the .cc).
  Params& PushArray(std::string encoded);

  std::deque<std::string> storage_;  // stable addresses
  std::vector<const char*> values_;
  std::vector<int> lengths_;
  std::vector<int> formats_;
  std::optional<Error> error_;
};

// A result in binary format. Move-only value.
class Rows {
 public:
  explicit Rows(PGresult* result) : result_(result, &PQclear) {}

  int size() const { return PQntuples(result_.get()); }
  PGresult* raw() const { return result_.get(); }
  int64_t affected() const;
  bool IsNull(int row, int col) const { return PQgetisnull(result_.get(), row, col) != 0; }
  // int8 or int4, big-endian.
  int64_t Int(int row, int col) const;
  bool Bool(int row, int col) const { return PQgetvalue(result_.get(), row, col)[0] != 0; }
  std::string Text(int row, int col) const {
    return std::string(PQgetvalue(result_.get(), row, col), PQgetlength(result_.get(), row, col));
  }
  std::vector<uint8_t> Bytes(int row, int col) const;

 private:
  std::unique_ptr<PGresult, decltype(&PQclear)> result_;
};

// The error for a failed statement: kUnavailable when retrying may help
// (connection lost, deadlock, serialization failure, shutdown), kAlreadyExists
// for a unique violation, else kInternal.
Error PgError(PGconn* conn, const PGresult* result, std::string_view what);

// One libpq connection with its prepared statements. Used by one thread at a
// time.
class Connection {
 public:
  // kUnavailable if the server cannot be reached.
  [[nodiscard]] static Result<std::unique_ptr<Connection>> Open(const std::string& url);
  ~Connection() { PQfinish(conn_); }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  bool healthy() const { return PQstatus(conn_) == CONNECTION_OK; }

  // Reconnects a broken connection. kUnavailable if that fails.
  [[nodiscard]] Result<void> EnsureConnected();

  // Runs `sql` as a statement prepared once per connection; binary results.
  [[nodiscard]] Result<Rows> Exec(const std::string& sql, const Params& params);

  // Runs one or more parameterless statements; returns the last one's
  // command tag (e.g. "COMMIT", or "ROLLBACK" for a failed transaction).
  [[nodiscard]] Result<std::string> ExecScript(const char* sql);

  PGconn* raw() const { return conn_; }

 private:
  explicit Connection(PGconn* conn) : conn_(conn) {}

  PGconn* conn_;
  std::unordered_map<std::string, std::string> prepared_;  // SQL -> statement name
};

// Sends NOTIFY `channel` on a connection of its own after commits that made
// work claimable, so that claimers in other processes wake. It is sent after
// the commit, not in it: a transaction that notifies holds PostgreSQL's
// global notify lock until it has committed, WAL flush included, which
// would make every lane's commits wait for one another's. A NOTIFY alone
// writes no WAL, so it is quick; requests that come while one is being sent
// are merged into the next. Best effort: a NOTIFY lost to a broken
// connection is made up for by the claimers' polling. Thread-safe.
class Notifier {
 public:
  Notifier(std::string url, std::string_view channel);
  ~Notifier();
  Notifier(const Notifier&) = delete;
  Notifier& operator=(const Notifier&) = delete;

  // Asks for a NOTIFY soon; returns at once.
  void Request() EXCLUDES(mu_);

 private:
  void Loop() EXCLUDES(mu_);

  const std::string url_;
  const std::string notify_;  // "NOTIFY <channel>"
  Mutex mu_;
  CondVar cv_;
  bool requested_ GUARDED_BY(mu_) = false;
  bool stopping_ GUARDED_BY(mu_) = false;
  std::thread thread_;  // last: starts once the members above exist
};

// LISTENs on `channel` and calls on_notify() (on the calling thread, under
// no lock) for every batch of notifications from any process, and after
// each (re)connect, since notifications may have been missed meanwhile.
// Reconnects after kListenReconnectMs while the server is unreachable.
// Returns when `stop_fd` becomes readable.
inline constexpr int kListenReconnectMs = 1000;
void ListenLoop(const std::string& url, std::string_view channel, int stop_fd,
                const std::function<void()>& on_notify);

// Writes that the operations of one transaction queue on a lane, to be sent
// together as one statement just before it commits (many submits as one
// INSERT, many outcomes as one UPDATE). Used by the lane's thread only.
class Deferred {
 public:
  virtual ~Deferred() = default;
  // Sends what was queued; true if that made work claimable. An error
  // aborts the transaction.
  [[nodiscard]] virtual Result<bool> Flush(Connection& conn) = 0;
  // Forgets what was queued (sent, or its transaction abandoned).
  virtual void Clear() = 0;
};

// Write connections and the group committer whose lanes they are, one lane
// per connection. Several lanes let transactions overlap (one waits for its
// commit while the next begins); the server orders them (row locks, SKIP
// LOCKED) as it does between processes. Once a transaction whose
// operations made work claimable has committed, the lane wakes `wake` and
// asks `notifier` for a NOTIFY. Thread-safe; the destructor finishes queued
// writes.
class CommitLanes {
 public:
  // `op` gets the connection of the lane that runs it, and its number.
  using Op = std::function<Result<bool>(Connection&, size_t lane)>;

  // `deferred[i]` (null: none) is lane i's: flushed before each of its
  // commits and cleared when a transaction begins or is abandoned. Those
  // must outlive the lanes.
  CommitLanes(std::vector<std::unique_ptr<Connection>> conns, WakeSignal& wake,
              Notifier& notifier, std::vector<Deferred*> deferred);

  // See GroupCommitter::Run.
  [[nodiscard]] Result<void> Run(const Op& op, size_t writes = 1, bool* rolled_back = nullptr) {
    return committer_.RunOnLane([&](size_t lane) { return op(*conns_[lane], lane); }, writes,
                                rolled_back);
  }

  CommitStats stats() const { return committer_.stats(); }

 private:
  GroupCommitter::Hooks LaneHooks(size_t lane, WakeSignal& wake, Notifier& notifier);

  // Each used by its lane's thread only.
  const std::vector<std::unique_ptr<Connection>> conns_;
  const std::vector<Deferred*> deferred_;
  GroupCommitter committer_;  // last: destroyed first, finishing its writes
};

}  // namespace keel::jobs::pg

#endif  // KEEL_JOBS_POSTGRES_DB_H_
