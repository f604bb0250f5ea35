#include "jobs/internal.h"

#include <algorithm>
#include <random>

#include "base/utf8.h"

namespace keel::jobs {

std::string NewJobId() {
  static constexpr char kCrockford[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
  thread_local std::mt19937_64 rng([] {
    std::random_device device;
    std::seed_seq seed{device(), device(), device(), device()};
    return std::mt19937_64(seed);
  }());
  uint64_t millis = static_cast<uint64_t>(NowMicros() / 1000) & ((uint64_t{1} << 48) - 1);
  uint64_t random_hi = rng() & 0xffff;  // 16 bits
  uint64_t random_lo = rng();           // 64 bits
  std::string id(26, '0');
  for (int i = 9; i >= 0; --i) {  // 10 chars x 5 bits = 50 >= 48 bits
    id[i] = kCrockford[millis & 31];
    millis >>= 5;
  }
  for (int i = 25; i >= 10; --i) {  // 16 chars x 5 bits = 80 bits
    id[i] = kCrockford[random_lo & 31];
    random_lo = (random_lo >> 5) | ((random_hi & 31) << 59);
    random_hi >>= 5;
  }
  return id;
}

std::string ToValidText(std::string_view bytes) {
  static constexpr std::string_view kReplacement = "\xef\xbf\xbd";  // U+FFFD
  std::string out;
  out.reserve(bytes.size());
  size_t i = 0;
  while (i < bytes.size()) {
    const Utf8Sequence sequence = DecodeUtf8(bytes, i);
    if (sequence.length == 0 || bytes[i] == '\0') {
      out += kReplacement;
      i += sequence.length == 0 ? std::min(sequence.ill_formed, bytes.size() - i) : 1;
    } else {
      out.append(bytes.substr(i, sequence.length));
      i += sequence.length;
    }
  }
  return out;
}

Result<void> ValidateKeyText(std::string_view what, std::string_view text) {
  if (text.find('\0') != std::string_view::npos) {
    return MakeError(ErrorCode::kInvalidArgument, std::string(what) + " contains NUL");
  }
  if (ToValidText(text) != text) {
    return MakeError(ErrorCode::kInvalidArgument, std::string(what) + " is not valid UTF-8");
  }
  return {};
}

bool IsJobId(std::string_view id) {
  return id.size() == 26 && id.find_first_not_of("0123456789ABCDEFGHJKMNPQRSTVWXYZ") ==
                                std::string_view::npos;
}

tl::unexpected<Error> NoSuchJob(std::string_view id) {
  return MakeError(ErrorCode::kNotFound, "no job " + ToValidText(id));
}

Result<bool> OutcomeBatch::Record(const RecordOutcome& record) {
  answers_.assign(completions_.size(), Result<JobState>());
  bool wake = false;
  for (size_t i = 0; i < completions_.size(); ++i) {
    if (!IsJobId(completions_[i].id)) {
      answers_[i] = NoSuchJob(completions_[i].id);
      continue;
    }
    Result<bool> recorded = record(completions_[i], &answers_[i]);
    if (!recorded) return recorded;
    wake = wake || *recorded;
  }
  return wake;
}

std::vector<Result<JobState>> OutcomeBatch::Answers(JobStore& store, const Result<void>& run,
                                                    bool rolled_back) {
  if (run) return std::move(answers_);
  if (!rolled_back) {
    return std::vector<Result<JobState>>(completions_.size(), tl::unexpected(run.error()));
  }
  std::vector<Result<JobState>> answers;
  answers.reserve(completions_.size());
  for (const Completion& c : completions_) {
    answers.push_back(store.Complete(c.id, c.claim, *c.outcome));
  }
  return answers;
}

tl::unexpected<Error> NoSuchModule(std::string_view digest) {
  return MakeError(ErrorCode::kNotFound, "no module " + std::string(digest));
}

Error LeaseError(std::string_view id, uint64_t claim, bool exists, bool started) {
  if (!exists) return NoSuchJob(id).value();
  std::string lease = "claim " + std::to_string(claim) + " of job " + std::string(id);
  return Error(ErrorCode::kFailedPrecondition,
               started ? lease + " has already started" : lease + " is no longer held");
}

Result<void> ValidateSpec(const JobSpec& spec) {
  if (Result<void> digest = ValidateDigest(spec.module_digest); !digest) return digest;
  if (spec.export_name.empty()) return MakeError(ErrorCode::kInvalidArgument, "empty export name");
  using Named = std::pair<std::string_view, std::string_view>;
  for (auto [what, text] : {Named{"export name", spec.export_name},
                            Named{"idempotency key", spec.idempotency_key}}) {
    if (text.size() > kMaxKeyBytes) {
      return MakeError(ErrorCode::kInvalidArgument, std::string(what) + " is longer than " +
                                                        std::to_string(kMaxKeyBytes) + " bytes");
    }
    if (Result<void> valid = ValidateKeyText(what, text); !valid) return valid;
  }
  if (spec.deadline.count() <= 0) return MakeError(ErrorCode::kInvalidArgument, "deadline <= 0");
  if (spec.max_attempts < 1) return MakeError(ErrorCode::kInvalidArgument, "max_attempts < 1");
  if (spec.retry_backoff.count() < 0) {
    return MakeError(ErrorCode::kInvalidArgument, "retry_backoff < 0");
  }
  return {};
}

bool SameWork(const JobSpec& a, const JobSpec& b) {
  return a.module_digest == b.module_digest && a.export_name == b.export_name &&
         a.input == b.input && a.deadline == b.deadline && a.max_attempts == b.max_attempts &&
         a.retry_backoff == b.retry_backoff;
}

Result<void> ValidateClaim(const ClaimRequest& request) {
  if (request.runner.empty()) return MakeError(ErrorCode::kInvalidArgument, "empty runner name");
  if (Result<void> valid = ValidateKeyText("runner name", request.runner); !valid) return valid;
  if (request.max_jobs < 1 || request.max_jobs > kMaxClaimBatch) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "max_jobs must be 1.." + std::to_string(kMaxClaimBatch));
  }
  if (request.lease.count() <= 0) return MakeError(ErrorCode::kInvalidArgument, "lease <= 0");
  if (request.wait.count() < 0) return MakeError(ErrorCode::kInvalidArgument, "wait < 0");
  return {};
}

Result<void> ValidateDigest(std::string_view digest) {
  bool hex = digest.size() == 64 && std::all_of(digest.begin(), digest.end(), [](char c) {
               return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
             });
  if (!hex) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "module digest must be 64 lowercase hex characters");
  }
  return {};
}

int64_t ToMicros(TimePoint t) {
  return std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count();
}

TimePoint FromMicros(int64_t micros) {
  return TimePoint(std::chrono::duration_cast<Clock::duration>(std::chrono::microseconds(micros)));
}

int64_t NowMicros() { return ToMicros(Clock::now()); }

std::string StateFilterSql(JobState state) {
  return " WHERE state = '" + std::string(ToString(state)) + "'";
}

void StateCounter::Add(std::string_view state, int64_t count) {
  if (state == "finished") {
    finished_ = count;
  } else if (std::optional<JobState> parsed = ParseJobState(state)) {
    counts_[static_cast<size_t>(*parsed)] = count;
  }
}

StateCounts StateCounter::Counts() const {
  StateCounts counts = counts_;
  int64_t succeeded = finished_;
  for (size_t i = 0; i < kJobStateCount; ++i) {
    auto state = static_cast<JobState>(i);
    if (state != JobState::kSucceeded && IsFinished(state)) succeeded -= counts[i];
  }
  counts[static_cast<size_t>(JobState::kSucceeded)] = std::max<int64_t>(succeeded, 0);
  return counts;
}

ErrorCode ErrorCodeFromName(std::string_view name) {
  for (int i = 0; i <= static_cast<int>(ErrorCode::kInternal); ++i) {
    auto code = static_cast<ErrorCode>(i);
    if (ToString(code) == name) return code;
  }
  return ErrorCode::kInternal;
}

uint64_t WakeSignal::generation() const {
  MutexLock lock(mu_);
  return generation_;
}

void WakeSignal::Notify() {
  {
    MutexLock lock(mu_);
    ++generation_;
  }
  cv_.SignalAll();
}

void WakeSignal::Wait(uint64_t seen, std::chrono::steady_clock::time_point deadline) {
  MutexLock lock(mu_);
  while (generation_ == seen && std::chrono::steady_clock::now() < deadline) {
    cv_.WaitUntil(mu_, deadline);
  }
}

Result<std::vector<ClaimedJob>> ClaimWithWait(
    WakeSignal& wake, const ClaimRequest& request, std::chrono::milliseconds poll_interval,
    const std::function<Result<std::vector<ClaimedJob>>()>& claim_ready) {
  auto deadline = std::chrono::steady_clock::now() + request.wait;
  while (true) {
    uint64_t seen = wake.generation();
    Result<std::vector<ClaimedJob>> claimed = claim_ready();
    if (!claimed || !claimed->empty()) return claimed;
    auto now = std::chrono::steady_clock::now();
    if (now >= deadline) return claimed;
    wake.Wait(seen, std::min(deadline, now + poll_interval));
  }
}

}  // namespace keel::jobs
