#include "jobs/postgres_db.h"

#include <arpa/inet.h>
#include <poll.h>

#include <cerrno>

#include <algorithm>
#include <utility>

namespace keel::jobs::pg {

namespace {

using std::string_view_literals::operator""sv;

// Type oids of array elements (pg_type.dat); array_recv checks them.
constexpr uint32_t kBoolOid = 16;
constexpr uint32_t kByteaOid = 17;
constexpr uint32_t kInt8Oid = 20;
constexpr uint32_t kTextOid = 25;

// PostgreSQL's binary array format (array_send): dimensions, null flag and
// element type, then each element as a length (-1: NULL) and its bytes, all
// integers big-endian.
class ArrayEncoder {
 public:
  ArrayEncoder(uint32_t element_oid, size_t count, bool has_null) {
    Put32(1);  // dimensions
    Put32(has_null ? 1 : 0);
    Put32(element_oid);
    Put32(static_cast<uint32_t>(count));
    Put32(1);  // lower bound
  }
  void Element(std::string_view bytes) {
    Put32(static_cast<uint32_t>(bytes.size()));
    out_.append(bytes);
  }
  void Null() { Put32(0xffffffffu); }
  void Int8(int64_t value) {
    Put32(8);
    auto bits = static_cast<uint64_t>(value);
    Put32(static_cast<uint32_t>(bits >> 32));
    Put32(static_cast<uint32_t>(bits));
  }
  std::string Take() { return std::move(out_); }

 private:
  void Put32(uint32_t value) {
    uint32_t big = htonl(value);
    out_.append(reinterpret_cast<const char*>(&big), sizeof big);
  }
  std::string out_;
};

}  // namespace

Params& Params::Add(std::string_view text) {
  if (text.find('\0') != std::string_view::npos && !error_) {
    error_ = Error(ErrorCode::kInvalidArgument,
                   "postgres: text parameter " + std::to_string(values_.size() + 1) +
                       " contains NUL, which PostgreSQL text cannot hold");
  }
  const std::string& stored = storage_.emplace_back(text);
  return Push(stored.c_str(), static_cast<int>(stored.size()), 0);
}

Params& Params::AddBytes(std::span<const uint8_t> bytes) {
  // A null pointer would mean NULL, not empty bytes.
  static const char kEmpty[] = "";
  const char* data = bytes.empty() ? kEmpty : reinterpret_cast<const char*>(bytes.data());
  return Push(data, static_cast<int>(bytes.size()), 1);
}

Params& Params::AddTextArray(std::span<const std::string_view> texts, bool empty_is_null) {
  bool has_null = empty_is_null && std::any_of(texts.begin(), texts.end(),
                                               [](std::string_view t) { return t.empty(); });
  ArrayEncoder array(kTextOid, texts.size(), has_null);
  for (std::string_view text : texts) {
    if (text.find('\0') != std::string_view::npos && !error_) {
      error_ = Error(ErrorCode::kInvalidArgument,
                     "postgres: text array parameter " + std::to_string(values_.size() + 1) +
                         " contains NUL, which PostgreSQL text cannot hold");
    }
    if (empty_is_null && text.empty()) {
      array.Null();
    } else {
      array.Element(text);
    }
  }
  return PushArray(array.Take());
}

Params& Params::AddBytesArray(std::span<const std::span<const uint8_t>> values) {
  ArrayEncoder array(kByteaOid, values.size(), false);
  for (std::span<const uint8_t> bytes : values) {
    array.Element(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
  }
  return PushArray(array.Take());
}

Params& Params::AddIntArray(std::span<const int64_t> values) {
  ArrayEncoder array(kInt8Oid, values.size(), false);
  for (int64_t value : values) array.Int8(value);
  return PushArray(array.Take());
}

Params& Params::AddBoolArray(const std::vector<bool>& values) {
  ArrayEncoder array(kBoolOid, values.size(), false);
  for (bool value : values) array.Element(value ? "\x01"sv : "\x00"sv);
  return PushArray(array.Take());
}

Params& Params::PushArray(std::string encoded) {
  const std::string& stored = storage_.emplace_back(std::move(encoded));
  return Push(stored.data(), static_cast<int>(stored.size()), 1);
}

Params& Params::Push(const char* value, int length, int format) {
  values_.push_back(value);
  lengths_.push_back(length);
  formats_.push_back(format);
  return *this;
}

int64_t Rows::affected() const {
  const char* text = PQcmdTuples(result_.get());
  return text[0] == '\0' ? 0 : std::stoll(text);
}

int64_t Rows::Int(int row, int col) const {
  const auto* p = reinterpret_cast<const uint8_t*>(PQgetvalue(result_.get(), row, col));
  int length = PQgetlength(result_.get(), row, col);
  uint64_t value = 0;
  for (int i = 0; i < length; ++i) value = (value << 8) | p[i];
  if (length == 4) return static_cast<int32_t>(value);
  return static_cast<int64_t>(value);
}

std::vector<uint8_t> Rows::Bytes(int row, int col) const {
  const auto* p = reinterpret_cast<const uint8_t*>(PQgetvalue(result_.get(), row, col));
  return std::vector<uint8_t>(p, p + PQgetlength(result_.get(), row, col));
}

Error PgError(PGconn* conn, const PGresult* result, std::string_view what) {
  std::string message = "postgres: " + std::string(what) + ": ";
  const char* text = result != nullptr ? PQresultErrorMessage(result) : "";
  if (text[0] == '\0') text = PQerrorMessage(conn);
  message += text;
  while (!message.empty() && message.back() == '\n') message.pop_back();
  if (PQstatus(conn) != CONNECTION_OK) return Error(ErrorCode::kUnavailable, std::move(message));
  const char* state = result != nullptr ? PQresultErrorField(result, PG_DIAG_SQLSTATE) : nullptr;
  std::string_view sqlstate = state != nullptr ? state : "";
  if (sqlstate == "23505") return Error(ErrorCode::kAlreadyExists, std::move(message));
  if (sqlstate == "40001" || sqlstate == "40P01" || sqlstate.starts_with("08") ||
      sqlstate.starts_with("57P")) {
    return Error(ErrorCode::kUnavailable, std::move(message));
  }
  return Error(ErrorCode::kInternal, std::move(message));
}

Result<std::unique_ptr<Connection>> Connection::Open(const std::string& url) {
  auto conn = std::unique_ptr<Connection>(new Connection(PQconnectdb(url.c_str())));
  if (conn->conn_ == nullptr || PQstatus(conn->conn_) != CONNECTION_OK) {
    std::string message = "postgres: cannot connect: ";
    message += conn->conn_ != nullptr ? PQerrorMessage(conn->conn_) : "out of memory";
    while (!message.empty() && message.back() == '\n') message.pop_back();
    return MakeError(ErrorCode::kUnavailable, std::move(message));
  }
  // Silence NOTICEs such as "relation already exists, skipping".
  PQsetNoticeProcessor(
      conn->conn_, [](void*, const char*) {}, nullptr);
  return conn;
}

Result<void> Connection::EnsureConnected() {
  if (healthy()) return {};
  prepared_.clear();
  PQreset(conn_);
  if (!healthy()) return tl::unexpected(PgError(conn_, nullptr, "reconnect"));
  return {};
}

Result<Rows> Connection::Exec(const std::string& sql, const Params& params) {
  if (params.error()) return tl::unexpected(*params.error());
  auto it = prepared_.find(sql);
  if (it == prepared_.end()) {
    std::string name = "keel_" + std::to_string(prepared_.size());
    Rows prepared(PQprepare(conn_, name.c_str(), sql.c_str(), 0, nullptr));
    if (PQresultStatus(prepared.raw()) != PGRES_COMMAND_OK) {
      return tl::unexpected(PgError(conn_, prepared.raw(), "prepare"));
    }
    it = prepared_.emplace(sql, std::move(name)).first;
  }
  Rows rows(PQexecPrepared(conn_, it->second.c_str(), params.size(), params.values(),
                           params.lengths(), params.formats(), /*resultFormat=*/1));
  ExecStatusType status = PQresultStatus(rows.raw());
  if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) {
    return tl::unexpected(PgError(conn_, rows.raw(), "exec"));
  }
  return rows;
}

Result<std::string> Connection::ExecScript(const char* sql) {
  Rows rows(PQexec(conn_, sql));
  ExecStatusType status = PQresultStatus(rows.raw());
  if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) {
    return tl::unexpected(PgError(conn_, rows.raw(), "exec"));
  }
  return std::string(PQcmdStatus(rows.raw()));
}

Notifier::Notifier(std::string url, std::string_view channel)
    : url_(std::move(url)),
      notify_("NOTIFY " + std::string(channel)),
      thread_([this] { Loop(); }) {}

Notifier::~Notifier() {
  {
    MutexLock lock(mu_);
    stopping_ = true;
  }
  cv_.Signal();
  thread_.join();
}

void Notifier::Request() {
  {
    MutexLock lock(mu_);
    if (requested_) return;
    requested_ = true;
  }
  cv_.Signal();
}

void Notifier::Loop() {
  std::unique_ptr<Connection> conn;
  while (true) {
    {
      MutexLock lock(mu_);
      while (!requested_ && !stopping_) cv_.Wait(mu_);
      if (stopping_) return;
      requested_ = false;
    }
    if (conn == nullptr) {
      Result<std::unique_ptr<Connection>> opened = Connection::Open(url_);
      if (!opened) continue;
      conn = std::move(*opened);
    }
    if (Result<void> up = conn->EnsureConnected(); !up) continue;
    (void)conn->ExecScript(notify_.c_str());
  }
}

CommitLanes::CommitLanes(std::vector<std::unique_ptr<Connection>> conns, WakeSignal& wake,
                         Notifier& notifier, std::vector<Deferred*> deferred)
    : conns_(std::move(conns)),
      deferred_(std::move(deferred)),
      committer_(
          [&] {
            std::vector<GroupCommitter::Hooks> lanes;
            for (size_t lane = 0; lane < conns_.size(); ++lane) {
              lanes.push_back(LaneHooks(lane, wake, notifier));
            }
            return lanes;
          }(),
          kMaxCommitBatch) {}

GroupCommitter::Hooks CommitLanes::LaneHooks(size_t lane, WakeSignal& wake, Notifier& notifier) {
  Connection* conn = conns_[lane].get();
  Deferred* deferred = lane < deferred_.size() ? deferred_[lane] : nullptr;
  return GroupCommitter::Hooks{
      .begin = [conn, deferred]() -> Result<void> {
        if (deferred != nullptr) deferred->Clear();
        if (Result<void> up = conn->EnsureConnected(); !up) return up;
        Result<std::string> begun = conn->ExecScript("BEGIN");
        if (!begun) return tl::unexpected(begun.error());
        return {};
      },
      .flush = [conn, deferred]() -> Result<bool> {
        if (deferred == nullptr) return false;
        Result<bool> flushed = deferred->Flush(*conn);
        deferred->Clear();
        return flushed;
      },
      .commit = [conn](bool) -> Result<void> {
        Result<std::string> tag = conn->ExecScript("COMMIT");
        if (!tag) return tl::unexpected(tag.error());
        if (*tag != "COMMIT") {
          return MakeError(ErrorCode::kInternal, "postgres: commit ended in " + *tag);
        }
        return {};
      },
      .rollback =
          [conn, deferred] {
            if (deferred != nullptr) deferred->Clear();
            (void)conn->ExecScript("ROLLBACK");
          },
      .committed =
          [&wake, &notifier](bool woke) {
            if (!woke) return;
            wake.Notify();
            notifier.Request();
          },
  };
}

void ListenLoop(const std::string& url, std::string_view channel, int stop_fd,
                const std::function<void()>& on_notify) {
  const std::string listen = "LISTEN " + std::string(channel);
  std::unique_ptr<Connection> conn;
  while (true) {
    if (conn == nullptr || !conn->healthy()) {
      conn.reset();
      Result<std::unique_ptr<Connection>> opened = Connection::Open(url);
      if (opened && (*opened)->ExecScript(listen.c_str())) {
        conn = std::move(*opened);
        on_notify();
      }
    }
    pollfd fds[2] = {{stop_fd, POLLIN, 0}, {conn ? PQsocket(conn->raw()) : -1, POLLIN, 0}};
    int ready = poll(fds, 2, conn ? -1 : kListenReconnectMs);
    if (ready < 0 && errno != EINTR) return;
    if (fds[0].revents != 0) return;
    if (conn != nullptr && fds[1].revents != 0) {
      PQconsumeInput(conn->raw());
      bool notified = false;
      while (PGnotify* notify = PQnotifies(conn->raw())) {
        PQfreemem(notify);
        notified = true;
      }
      if (notified) on_notify();
    }
  }
}

}  // namespace keel::jobs::pg
