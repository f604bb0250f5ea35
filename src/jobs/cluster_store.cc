#include "jobs/cluster_store.h"

#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <thread>

#include "base/mutex.h"
#include "jobs/internal.h"
#include "jobs/postgres_db.h"
#include "jobs/sqlite_db.h"

namespace keel::jobs {

namespace {

constexpr char kChannel[] = "keel_cluster";

bool Alive(const NodeRow& node, int64_t now_us) {
  return !node.stopped && now_us - ToMicros(node.last_seen) <= node.report.lease.count() * 1000;
}

// ---- SQLite: one node; its own writes are the only changes. ----

class SqliteCluster final : public ClusterStore {
 public:
  explicit SqliteCluster(std::unique_ptr<sqlite::Connection> db) : db_(std::move(db)) {}

  Result<uint64_t> SetName(std::string_view name, std::string_view digest,
                           std::span<const uint8_t> bytes, std::string_view state,
                           std::string_view settings) override {
    Result<uint64_t> version = InTransaction<uint64_t>([&](sqlite::Connection& db) -> Result<uint64_t> {
      auto put = db.Prepare(
          "INSERT INTO keel_modules (digest, bytes, created_us) VALUES (?1, ?2, ?3) "
          "ON CONFLICT (digest) DO NOTHING");
      if (auto ok = put.Bind(1, digest).BindBlob(2, bytes).Bind(3, NowMicros()).Run(); !ok) {
        return tl::unexpected(ok.error());
      }
      Result<uint64_t> next = BumpVersion(db);
      if (!next) return next;
      auto upsert = db.Prepare(
          "INSERT INTO keel_module_names (name, digest, state, settings, version, updated_us) "
          "VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (name) DO UPDATE SET digest = "
          "excluded.digest, state = excluded.state, settings = excluded.settings, version = "
          "excluded.version, updated_us = excluded.updated_us");
      upsert.Bind(1, name).Bind(2, digest).Bind(3, state).Bind(4, settings);
      if (auto ok = upsert.Bind(5, static_cast<int64_t>(*next)).Bind(6, NowMicros()).Run(); !ok) {
        return tl::unexpected(ok.error());
      }
      auto named = db.Prepare("DELETE FROM keel_module_garbage WHERE digest = ?1");
      if (auto ok = named.Bind(1, digest).Run(); !ok) return tl::unexpected(ok.error());
      return next;
    });
    if (version) changes_.Notify();
    return version;
  }

  Result<std::string> DeleteName(std::string_view name) override {
    Result<std::string> digest = InTransaction<std::string>([&](sqlite::Connection& db) -> Result<std::string> {
      auto find = db.Prepare("SELECT digest FROM keel_module_names WHERE name = ?1");
      Result<bool> row = find.Bind(1, name).Step();
      if (!row) return tl::unexpected(row.error());
      if (!*row) return MakeError(ErrorCode::kNotFound, "no module named '" + std::string(name) + "'");
      std::string found = find.Text(0);
      if (Result<uint64_t> next = BumpVersion(db); !next) return tl::unexpected(next.error());
      auto remove = db.Prepare("DELETE FROM keel_module_names WHERE name = ?1");
      if (auto ok = remove.Bind(1, name).Run(); !ok) return tl::unexpected(ok.error());
      auto garbage = db.Prepare(
          "INSERT INTO keel_module_garbage (digest, since_us) VALUES (?1, ?2) "
          "ON CONFLICT (digest) DO NOTHING");
      if (auto ok = garbage.Bind(1, found).Bind(2, NowMicros()).Run(); !ok) {
        return tl::unexpected(ok.error());
      }
      return found;
    });
    if (digest) changes_.Notify();
    return digest;
  }

  Result<uint64_t> RegistryVersion() override {
    MutexLock lock(mu_);
    return ReadVersion(*db_);
  }

  Result<RegistrySnapshot> Names() override {
    MutexLock lock(mu_);
    RegistrySnapshot snapshot;
    Result<uint64_t> version = ReadVersion(*db_);
    if (!version) return tl::unexpected(version.error());
    snapshot.version = *version;
    auto rows = db_->Prepare(
        "SELECT name, digest, state, settings, version, updated_us FROM keel_module_names "
        "ORDER BY name");
    while (true) {
      Result<bool> row = rows.Step();
      if (!row) return tl::unexpected(row.error());
      if (!*row) break;
      snapshot.names.push_back({rows.Text(0), rows.Text(1), rows.Text(2), rows.Text(3),
                                static_cast<uint64_t>(rows.Int(4)), FromMicros(rows.Int(5))});
    }
    return snapshot;
  }

  Result<int64_t> DeleteUnreferencedModules(const std::set<std::string>& keep) override {
    return InTransaction<int64_t>([&](sqlite::Connection& db) -> Result<int64_t> {
      std::vector<std::string> candidates;
      auto garbage = db.Prepare("SELECT digest FROM keel_module_garbage");
      while (true) {
        Result<bool> row = garbage.Step();
        if (!row) return tl::unexpected(row.error());
        if (!*row) break;
        if (!keep.contains(garbage.Text(0))) candidates.push_back(garbage.Text(0));
      }
      int64_t deleted = 0;
      for (const std::string& digest : candidates) {
        auto remove = db.Prepare(
            "DELETE FROM keel_modules WHERE digest = ?1 AND NOT EXISTS (SELECT 1 FROM "
            "keel_module_names WHERE digest = ?1) AND NOT EXISTS (SELECT 1 FROM keel_jobs WHERE "
            "module_digest = ?1)");
        if (auto ok = remove.Bind(1, digest).Run(); !ok) return tl::unexpected(ok.error());
        deleted += db.changes();
      }
      auto forget = db.Prepare(
          "DELETE FROM keel_module_garbage WHERE digest NOT IN (SELECT digest FROM keel_modules)");
      if (auto ok = forget.Run(); !ok) return tl::unexpected(ok.error());
      return deleted;
    });
  }

  Result<void> Heartbeat(const NodeReport& node, bool first) override {
    MutexLock lock(mu_);
    int64_t now = NowMicros();
    auto upsert = db_->Prepare(
        "INSERT INTO keel_nodes (name, started_us, last_seen_us, lease_ms, workers, version, "
        "address, draining, stopped) VALUES (?1, ?2, ?2, ?3, ?4, ?5, ?6, ?7, 0) ON CONFLICT "
        "(name) DO UPDATE SET last_seen_us = ?2, lease_ms = ?3, workers = ?4, version = ?5, "
        "address = ?6, draining = ?7, stopped = 0, started_us = CASE WHEN ?8 THEN ?2 ELSE "
        "started_us END");
    upsert.Bind(1, node.name).Bind(2, now).Bind(3, static_cast<int64_t>(node.lease.count()));
    upsert.Bind(4, node.workers).Bind(5, node.version).Bind(6, node.address);
    return upsert.Bind(7, int64_t{node.draining}).Bind(8, int64_t{first}).Run();
  }

  Result<void> MarkStopped(std::string_view name) override {
    MutexLock lock(mu_);
    auto update = db_->Prepare("UPDATE keel_nodes SET stopped = 1 WHERE name = ?1");
    return update.Bind(1, name).Run();
  }

  Result<std::vector<NodeRow>> Nodes() override {
    MutexLock lock(mu_);
    auto rows = db_->Prepare(
        "SELECT name, address, version, workers, lease_ms, draining, started_us, last_seen_us, "
        "stopped FROM keel_nodes ORDER BY name");
    std::vector<NodeRow> nodes;
    int64_t now = NowMicros();
    while (true) {
      Result<bool> row = rows.Step();
      if (!row) return tl::unexpected(row.error());
      if (!*row) break;
      NodeRow node;
      node.report = {rows.Text(0), rows.Text(1), rows.Text(2), rows.Int(3),
                     std::chrono::milliseconds(rows.Int(4)), rows.Int(5) != 0};
      node.started_at = FromMicros(rows.Int(6));
      node.last_seen = FromMicros(rows.Int(7));
      node.stopped = rows.Int(8) != 0;
      node.alive = Alive(node, now);
      nodes.push_back(std::move(node));
    }
    return nodes;
  }

  Result<void> RequestAbort(std::string_view id) override {
    MutexLock lock(mu_);
    auto insert = db_->Prepare(
        "INSERT INTO keel_abort_requests (job_id, requested_us) VALUES (?1, ?2) "
        "ON CONFLICT (job_id) DO NOTHING");
    Result<void> done = insert.Bind(1, id).Bind(2, NowMicros()).Run();
    if (done) changes_.Notify();
    return done;
  }

  Result<std::vector<std::string>> AbortRequests(std::string_view runner) override {
    MutexLock lock(mu_);
    auto forget = db_->Prepare(
        "DELETE FROM keel_abort_requests WHERE job_id NOT IN (SELECT id FROM keel_jobs WHERE "
        "state = 'running')");
    if (auto ok = forget.Run(); !ok) return tl::unexpected(ok.error());
    auto rows = db_->Prepare(
        "SELECT r.job_id FROM keel_abort_requests r JOIN keel_jobs j ON j.id = r.job_id "
        "WHERE j.state = 'running' AND j.runner = ?1");
    rows.Bind(1, runner);
    std::vector<std::string> ids;
    while (true) {
      Result<bool> row = rows.Step();
      if (!row) return tl::unexpected(row.error());
      if (!*row) break;
      ids.push_back(rows.Text(0));
    }
    return ids;
  }

 private:
  template <typename T>
  Result<T> InTransaction(const std::function<Result<T>(sqlite::Connection&)>& body) {
    MutexLock lock(mu_);
    if (auto begun = db_->Exec("BEGIN IMMEDIATE"); !begun) return tl::unexpected(begun.error());
    Result<T> result = body(*db_);
    Result<void> ended = db_->Exec(result ? "COMMIT" : "ROLLBACK");
    if (result && !ended) return tl::unexpected(ended.error());
    return result;
  }

  static Result<uint64_t> ReadVersion(sqlite::Connection& db) {
    auto select = db.Prepare("SELECT version FROM keel_registry_version WHERE id = 1");
    Result<bool> row = select.Step();
    if (!row) return tl::unexpected(row.error());
    if (!*row) return MakeError(ErrorCode::kInternal, "keel_registry_version has no row");
    return static_cast<uint64_t>(select.Int(0));
  }

  static Result<uint64_t> BumpVersion(sqlite::Connection& db) {
    auto bump = db.Prepare("UPDATE keel_registry_version SET version = version + 1 WHERE id = 1");
    if (auto ok = bump.Run(); !ok) return tl::unexpected(ok.error());
    return ReadVersion(db);
  }

  Mutex mu_;
  std::unique_ptr<sqlite::Connection> db_ GUARDED_BY(mu_);
};

// ---- PostgreSQL: shared by every node; NOTIFY keel_cluster on changes. ----

using pg::Connection;
using pg::Params;
using pg::Rows;

class PostgresCluster final : public ClusterStore {
 public:
  PostgresCluster(std::string url, std::unique_ptr<Connection> conn, int stop_read, int stop_write)
      : url_(std::move(url)), conn_(std::move(conn)), stop_read_(stop_read), stop_write_(stop_write) {
    // NOTIFY keel_cluster from any process (and every reconnect) wakes the registry watchers.
    listener_ = std::thread(
        [this] { pg::ListenLoop(url_, kChannel, stop_read_, [this] { changes_.Notify(); }); });
  }

  ~PostgresCluster() override {
    (void)!::write(stop_write_, "x", 1);
    listener_.join();
    ::close(stop_read_);
    ::close(stop_write_);
  }

  Result<uint64_t> SetName(std::string_view name, std::string_view digest,
                           std::span<const uint8_t> bytes, std::string_view state,
                           std::string_view settings) override {
    return InTransaction<uint64_t>([&](Connection& db) -> Result<uint64_t> {
      Result<Rows> put = db.Exec(
          "INSERT INTO keel_modules (digest, bytes, created_us) VALUES ($1, $2, keel_now_us()) "
          "ON CONFLICT (digest) DO NOTHING",
          Params().Add(digest).AddBytes(bytes));
      if (!put) return tl::unexpected(put.error());
      Result<Rows> upsert = db.Exec(
          "INSERT INTO keel_module_names (name, digest, state, settings, version, updated_us) "
          "SELECT $1, $2, $3, $4, version, keel_now_us() FROM keel_registry_version WHERE id = 1 "
          "ON CONFLICT (name) DO UPDATE SET digest = excluded.digest, state = excluded.state, "
          "settings = excluded.settings, version = excluded.version, updated_us = "
          "excluded.updated_us RETURNING version",
          Params().Add(name).Add(digest).Add(state).Add(settings));
      if (!upsert) return tl::unexpected(upsert.error());
      Result<Rows> named =
          db.Exec("DELETE FROM keel_module_garbage WHERE digest = $1", Params().Add(digest));
      if (!named) return tl::unexpected(named.error());
      return static_cast<uint64_t>(upsert->Int(0, 0));
    });
  }

  Result<std::string> DeleteName(std::string_view name) override {
    return InTransaction<std::string>([&](Connection& db) -> Result<std::string> {
      Result<Rows> removed = db.Exec("DELETE FROM keel_module_names WHERE name = $1 RETURNING digest",
                                     Params().Add(name));
      if (!removed) return tl::unexpected(removed.error());
      if (removed->size() == 0) {
        return MakeError(ErrorCode::kNotFound, "no module named '" + std::string(name) + "'");
      }
      std::string digest = removed->Text(0, 0);
      Result<Rows> garbage = db.Exec(
          "INSERT INTO keel_module_garbage (digest, since_us) VALUES ($1, keel_now_us()) "
          "ON CONFLICT (digest) DO NOTHING",
          Params().Add(digest));
      if (!garbage) return tl::unexpected(garbage.error());
      return digest;
    });
  }

  Result<uint64_t> RegistryVersion() override {
    MutexLock lock(mu_);
    Result<Rows> rows = Exec("SELECT version FROM keel_registry_version WHERE id = 1", Params());
    if (!rows) return tl::unexpected(rows.error());
    return static_cast<uint64_t>(rows->Int(0, 0));
  }

  Result<RegistrySnapshot> Names() override {
    MutexLock lock(mu_);
    // One statement: the names and the version they make up, consistently.
    Result<Rows> rows = Exec(
        "SELECT v.version, n.name, n.digest, n.state, n.settings, n.version, n.updated_us FROM "
        "keel_registry_version v LEFT JOIN keel_module_names n ON true WHERE v.id = 1 "
        "ORDER BY n.name",
        Params());
    if (!rows) return tl::unexpected(rows.error());
    RegistrySnapshot snapshot;
    for (int r = 0; r < rows->size(); ++r) {
      snapshot.version = static_cast<uint64_t>(rows->Int(r, 0));
      if (rows->IsNull(r, 1)) continue;
      snapshot.names.push_back({rows->Text(r, 1), rows->Text(r, 2), rows->Text(r, 3),
                                rows->Text(r, 4), static_cast<uint64_t>(rows->Int(r, 5)),
                                FromMicros(rows->Int(r, 6))});
    }
    return snapshot;
  }

  Result<int64_t> DeleteUnreferencedModules(const std::set<std::string>& keep) override {
    // Under the registry lock (InTransaction), so that no name can come to
    // refer to a digest between the check and the delete.
    return InTransaction<int64_t>(
        [&](Connection& db) -> Result<int64_t> {
          Result<std::vector<std::string>> locked = LockGarbage(db, keep);
          if (!locked) return tl::unexpected(locked.error());
          std::vector<std::string_view> digests(locked->begin(), locked->end());
          // A new statement, so a new snapshot: it sees every job whose
          // insert held one of these rows before they were locked.
          Result<Rows> removed = db.Exec(
              "DELETE FROM keel_modules m WHERE m.digest = ANY($1::text[]) AND NOT EXISTS "
              "(SELECT 1 FROM keel_module_names n WHERE n.digest = m.digest) AND NOT EXISTS "
              "(SELECT 1 FROM keel_jobs j WHERE j.module_digest = m.digest)",
              Params().AddTextArray(digests));
          if (!removed) return tl::unexpected(removed.error());
          Result<Rows> forget = db.Exec(
              "DELETE FROM keel_module_garbage g WHERE NOT EXISTS (SELECT 1 FROM keel_modules m "
              "WHERE m.digest = g.digest)",
              Params());
          if (!forget) return tl::unexpected(forget.error());
          return removed->affected();
        },
        /*notify=*/false);
  }

  Result<void> Heartbeat(const NodeReport& node, bool first) override {
    MutexLock lock(mu_);
    Result<Rows> done = Exec(
        "INSERT INTO keel_nodes (name, started_us, last_seen_us, lease_ms, workers, version, "
        "address, draining, stopped) VALUES ($1, keel_now_us(), keel_now_us(), $2, $3, $4, $5, "
        "$6, false) ON CONFLICT (name) DO UPDATE SET last_seen_us = keel_now_us(), lease_ms = "
        "excluded.lease_ms, workers = excluded.workers, version = excluded.version, address = "
        "excluded.address, draining = excluded.draining, stopped = false, started_us = CASE "
        "WHEN $7::boolean THEN keel_now_us() ELSE keel_nodes.started_us END",
        Params()
            .Add(node.name)
            .Add(static_cast<int64_t>(node.lease.count()))
            .Add(node.workers)
            .Add(node.version)
            .Add(node.address)
            .AddBool(node.draining)
            .AddBool(first));
    if (!done) return tl::unexpected(done.error());
    return {};
  }

  Result<void> MarkStopped(std::string_view name) override {
    MutexLock lock(mu_);
    Result<Rows> done = Exec("UPDATE keel_nodes SET stopped = true WHERE name = $1", Params().Add(name));
    if (!done) return tl::unexpected(done.error());
    return {};
  }

  Result<std::vector<NodeRow>> Nodes() override {
    MutexLock lock(mu_);
    Result<Rows> rows = Exec(
        "SELECT name, address, version, workers, lease_ms, draining, started_us, last_seen_us, "
        "stopped, keel_now_us() FROM keel_nodes ORDER BY name",
        Params());
    if (!rows) return tl::unexpected(rows.error());
    std::vector<NodeRow> nodes;
    for (int r = 0; r < rows->size(); ++r) {
      NodeRow node;
      node.report = {rows->Text(r, 0), rows->Text(r, 1), rows->Text(r, 2), rows->Int(r, 3),
                     std::chrono::milliseconds(rows->Int(r, 4)), rows->Bool(r, 5)};
      node.started_at = FromMicros(rows->Int(r, 6));
      node.last_seen = FromMicros(rows->Int(r, 7));
      node.stopped = rows->Bool(r, 8);
      node.alive = Alive(node, rows->Int(r, 9));
      nodes.push_back(std::move(node));
    }
    return nodes;
  }

  Result<void> RequestAbort(std::string_view id) override {
    MutexLock lock(mu_);
    Result<Rows> done = Exec(
        "WITH r AS (INSERT INTO keel_abort_requests (job_id, requested_us) VALUES ($1, "
        "keel_now_us()) ON CONFLICT (job_id) DO NOTHING) SELECT pg_notify($2, 'abort')",
        Params().Add(id).Add(std::string_view(kChannel)));
    if (!done) return tl::unexpected(done.error());
    return {};
  }

  Result<std::vector<std::string>> AbortRequests(std::string_view runner) override {
    MutexLock lock(mu_);
    Result<Rows> forget = Exec(
        "DELETE FROM keel_abort_requests r WHERE NOT EXISTS (SELECT 1 FROM keel_jobs j WHERE "
        "j.id = r.job_id AND j.state = 'running')",
        Params());
    if (!forget) return tl::unexpected(forget.error());
    Result<Rows> rows = Exec(
        "SELECT r.job_id FROM keel_abort_requests r JOIN keel_jobs j ON j.id = r.job_id "
        "WHERE j.state = 'running' AND j.runner = $1",
        Params().Add(runner));
    if (!rows) return tl::unexpected(rows.error());
    std::vector<std::string> ids;
    for (int r = 0; r < rows->size(); ++r) ids.push_back(rows->Text(r, 0));
    return ids;
  }

 private:
  Result<Rows> Exec(const std::string& sql, const Params& params) REQUIRES(mu_) {
    if (auto ok = conn_->EnsureConnected(); !ok) return tl::unexpected(ok.error());
    return conn_->Exec(sql, params);
  }

  // Runs `body` holding the registry lock (the keel_registry_version row),
  // bumping the version; with `notify`, tells every node at commit.
  template <typename T>
  Result<T> InTransaction(const std::function<Result<T>(Connection&)>& body, bool notify = true) {
    MutexLock lock(mu_);
    if (auto ok = conn_->EnsureConnected(); !ok) return tl::unexpected(ok.error());
    const char* begin =
        notify ? "BEGIN; UPDATE keel_registry_version SET version = version + 1 WHERE id = 1"
               : "BEGIN; SELECT version FROM keel_registry_version WHERE id = 1 FOR UPDATE";
    if (auto begun = conn_->ExecScript(begin); !begun) {
      (void)conn_->ExecScript("ROLLBACK");
      return tl::unexpected(begun.error());
    }
    Result<T> result = body(*conn_);
    if (!result) {
      (void)conn_->ExecScript("ROLLBACK");
      return result;
    }
    const std::string commit = notify ? std::string("NOTIFY ") + kChannel + ", 'registry'; COMMIT" : "COMMIT";
    Result<std::string> tag = conn_->ExecScript(commit.c_str());
    if (!tag) return tl::unexpected(tag.error());
    if (*tag != "COMMIT") return MakeError(ErrorCode::kUnavailable, "postgres: registry write ended in " + *tag);
    if (notify) changes_.Notify();
    return result;
  }

  // Locks the bytes of the garbage digests not in `keep` against new jobs
  // (an insert takes FOR KEY SHARE on the module row). A row an insert holds
  // now is skipped, not waited for (it stays garbage for the next sweep if
  // that insert rolls back): waiting could deadlock with a batch insert
  // holding several.
  static Result<std::vector<std::string>> LockGarbage(Connection& db,
                                                      const std::set<std::string>& keep) {
    std::vector<std::string_view> kept(keep.begin(), keep.end());
    Result<Rows> rows = db.Exec(
        "SELECT m.digest FROM keel_modules m JOIN keel_module_garbage g ON g.digest = m.digest "
        "WHERE m.digest <> ALL($1::text[]) FOR UPDATE OF m SKIP LOCKED",
        Params().AddTextArray(kept));
    if (!rows) return tl::unexpected(rows.error());
    std::vector<std::string> locked;
    for (int r = 0; r < rows->size(); ++r) locked.push_back(rows->Text(r, 0));
    return locked;
  }

  const std::string url_;
  Mutex mu_;
  std::unique_ptr<Connection> conn_ GUARDED_BY(mu_);
  const int stop_read_;
  const int stop_write_;
  std::thread listener_;  // joined by the destructor
};

}  // namespace

Result<std::unique_ptr<ClusterStore>> OpenClusterStore(std::string_view url_or_dir) {
  if (url_or_dir.empty()) return MakeError(ErrorCode::kInvalidArgument, "empty store name");
  if (url_or_dir.starts_with("postgresql://") || url_or_dir.starts_with("postgres://")) {
    std::string url(url_or_dir);
    Result<std::unique_ptr<Connection>> conn = Connection::Open(url);
    if (!conn) return tl::unexpected(conn.error());
    int stop[2];
    if (pipe2(stop, O_CLOEXEC) != 0) {
      return MakeError(ErrorCode::kInternal, "postgres: cannot create the cluster listener's pipe");
    }
    return std::make_unique<PostgresCluster>(std::move(url), std::move(*conn), stop[0], stop[1]);
  }
  auto path = (std::filesystem::path(url_or_dir) / "keel.db").string();
  Result<std::unique_ptr<sqlite::Connection>> db = sqlite::Connection::Open(path);
  if (!db) return tl::unexpected(db.error());
  return std::make_unique<SqliteCluster>(std::move(*db));
}

}  // namespace keel::jobs
