#include "jobs/store.h"

#include <filesystem>
#include <system_error>
#include <utility>

#include "jobs/postgres_store.h"
#include "jobs/sqlite_store.h"

namespace keel::jobs {

std::string_view ToString(JobState state) {
  switch (state) {
    case JobState::kQueued:
      return "queued";
    case JobState::kRunning:
      return "running";
    case JobState::kSucceeded:
      return "succeeded";
    case JobState::kFailed:
      return "failed";
    case JobState::kTimedOut:
      return "timed_out";
    case JobState::kCancelled:
      return "cancelled";
    case JobState::kDead:
      return "dead";
  }
  return "unknown";
}

std::optional<JobState> ParseJobState(std::string_view text) {
  for (size_t i = 0; i < kJobStateCount; ++i) {
    auto state = static_cast<JobState>(i);
    if (ToString(state) == text) return state;
  }
  return std::nullopt;
}

bool IsFinished(JobState state) {
  return state != JobState::kQueued && state != JobState::kRunning;
}

Outcome Outcome::Succeeded(std::vector<uint8_t> result) {
  Outcome outcome;
  outcome.kind = Kind::kSucceeded;
  outcome.result = std::move(result);
  return outcome;
}

Outcome Outcome::Failed(Error error, bool retry) {
  Outcome outcome;
  outcome.kind = Kind::kFailed;
  outcome.error = std::move(error);
  outcome.retry = retry;
  return outcome;
}

Outcome Outcome::TimedOut(Error error, bool retry) {
  Outcome outcome;
  outcome.kind = Kind::kTimedOut;
  outcome.error = std::move(error);
  outcome.retry = retry;
  return outcome;
}

Result<std::unique_ptr<JobStore>> OpenStore(std::string_view url_or_dir,
                                           const StoreOptions& options) {
  if (url_or_dir.empty()) return MakeError(ErrorCode::kInvalidArgument, "empty store name");
  if (url_or_dir.starts_with("postgresql://") || url_or_dir.starts_with("postgres://")) {
    return OpenPostgresStore(std::string(url_or_dir), options);
  }
  std::filesystem::path dir(url_or_dir);
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) {
    return MakeError(ErrorCode::kUnavailable,
                     "cannot create data directory " + dir.string() + ": " + ec.message());
  }
  return OpenSqliteStore((dir / "keel.db").string(), options);
}

}  // namespace keel::jobs
