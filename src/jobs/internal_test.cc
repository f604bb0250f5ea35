#include "jobs/internal.h"

#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <thread>

#include "jobs/group_commit.h"

namespace keel::jobs {
namespace {

using namespace std::chrono_literals;
using namespace std::string_literals;

TEST(JobStateTest, NamesRoundTrip) {
  for (size_t i = 0; i < kJobStateCount; ++i) {
    auto state = static_cast<JobState>(i);
    EXPECT_EQ(ParseJobState(ToString(state)), state);
  }
  EXPECT_FALSE(ParseJobState("nope"));
  EXPECT_FALSE(IsFinished(JobState::kQueued));
  EXPECT_FALSE(IsFinished(JobState::kRunning));
  EXPECT_TRUE(IsFinished(JobState::kDead));
  EXPECT_EQ(ErrorCodeFromName("deadline_exceeded"), ErrorCode::kDeadlineExceeded);
  EXPECT_EQ(ErrorCodeFromName("???"), ErrorCode::kInternal);
}

// Each NUL and each maximal ill-formed subsequence becomes one U+FFFD
// (Unicode 15, 3.9: the example of table 3-8, overlongs, surrogates, a
// sequence cut short); well-formed text stays as it is.
TEST(TextTest, ToValidTextReplacesWhatIsNotText) {
  const std::string r = "\uFFFD";
  EXPECT_EQ(ToValidText("plain"), "plain");
  EXPECT_EQ(ToValidText("caf\u00e9 \u2713 \U0001F600 \U0010FFFF"),
            "caf\u00e9 \u2713 \U0001F600 \U0010FFFF");
  EXPECT_EQ(ToValidText("\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF\x64"),
            "a" + r + r + r + "b" + r + "c" + r + r + "d");
  EXPECT_EQ(ToValidText("a\0b"s), "a" + r + "b");
  EXPECT_EQ(ToValidText("\xC0\xAF"), r + r);              // overlong '/'
  EXPECT_EQ(ToValidText("\xE0\x80\xAF"), r + r + r);      // overlong, 3 bytes
  EXPECT_EQ(ToValidText("\xED\xA0\x80"), r + r + r);      // a UTF-16 surrogate
  EXPECT_EQ(ToValidText("\xF4\x90\x80\x80"), r + r + r + r);  // above U+10FFFF
  EXPECT_EQ(ToValidText("\xF5x"), r + "x");
  EXPECT_EQ(ToValidText("ok \xF0\x9F\x98"), "ok " + r);  // cut at the end
  EXPECT_EQ(ToValidText("\xF0\x9F\x98" "A"), r + "A");
  EXPECT_EQ(ToValidText(""), "");
  EXPECT_TRUE(ValidateKeyText("key", "cl\u00e9"));
  EXPECT_EQ(ValidateKeyText("key", "a\0b"s).error().message, "key contains NUL");
  EXPECT_EQ(ValidateKeyText("key", "\xff").error().message, "key is not valid UTF-8");
}

TEST(JobIdTest, IdsAreUniqueSortableCrockfordText) {
  std::set<std::string> ids;
  std::string previous;
  for (int i = 0; i < 10000; ++i) {
    std::string id = NewJobId();
    ASSERT_EQ(id.size(), 26u);
    EXPECT_EQ(id.find_first_not_of("0123456789ABCDEFGHJKMNPQRSTVWXYZ"), std::string::npos);
    // The first 10 characters are the millisecond clock: never go back.
    EXPECT_GE(id.substr(0, 10), previous.substr(0, std::min<size_t>(10, previous.size())));
    previous = id;
    ids.insert(id);
  }
  EXPECT_EQ(ids.size(), 10000u);
}

// A fake transaction log: begin/commit/rollback counted, writes applied
// only on commit.
struct FakeDb {
  std::vector<int> committed;
  std::vector<int> pending;
  int commits = 0;
  int rollbacks = 0;
  std::atomic<int> wakes = 0;

  GroupCommitter::Hooks Hooks() {
    return {
        .begin = [this]() -> Result<void> {
          pending.clear();
          return {};
        },
        .commit = [this](bool) -> Result<void> {
          committed.insert(committed.end(), pending.begin(), pending.end());
          ++commits;
          return {};
        },
        .rollback =
            [this] {
              pending.clear();
              ++rollbacks;
            },
        .committed = [this](bool wake) { wakes += wake; },
    };
  }
};

TEST(GroupCommitterTest, ConcurrentOperationsShareTransactions) {
  FakeDb db;
  {
    GroupCommitter committer(db.Hooks(), 64);
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < 100; ++i) {
          Result<void> done = committer.Run(
              [&, v = t * 1000 + i]() -> Result<bool> {
                db.pending.push_back(v);
                return v % 2 == 0;
              },
              /*writes=*/2);
          EXPECT_TRUE(done);
        }
      });
    }
    for (auto& thread : threads) thread.join();
    CommitStats stats = committer.stats();
    EXPECT_EQ(stats.operations, 1600u);
    EXPECT_EQ(stats.transactions, static_cast<uint64_t>(db.commits));
  }
  EXPECT_EQ(db.committed.size(), 800u);
  EXPECT_GT(db.wakes, 0);
}

TEST(GroupCommitterTest, FailingOperationFailsAloneAndCommitsNothing) {
  FakeDb db;
  GroupCommitter committer(db.Hooks(), 64);
  std::vector<std::thread> threads;
  std::atomic<int> ok = 0;
  std::atomic<int> failed = 0;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 50; ++i) {
        bool bad = (t * 50 + i) % 10 == 0;
        bool rolled_back = false;
        Result<void> done = committer.Run(
            [&, bad, v = t * 1000 + i]() -> Result<bool> {
              db.pending.push_back(v);
              if (bad) return MakeError(ErrorCode::kInternal, "bad op");
              return false;
            },
            1, &rolled_back);
        if (done) {
          ++ok;
        } else {
          EXPECT_EQ(done.error().message, "bad op");
          EXPECT_TRUE(rolled_back);
          ++failed;
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failed, 40);
  EXPECT_EQ(ok, 360);
  EXPECT_EQ(db.committed.size(), 360u);  // each good op exactly once
  EXPECT_EQ(std::set<int>(db.committed.begin(), db.committed.end()).size(), 360u);
}

TEST(GroupCommitterTest, FailedCommitFailsTheWholeBatch) {
  int commits = 0;
  GroupCommitter committer({.begin = [] { return Result<void>(); },
                            .commit = [&](bool) -> Result<void> {
                              ++commits;
                              return MakeError(ErrorCode::kUnavailable, "disk gone");
                            },
                            .rollback = [] {},
                            .committed = [](bool) {}},
                           8);
  bool rolled_back = true;
  Result<void> done = committer.Run([]() -> Result<bool> { return false; }, 1, &rolled_back);
  ASSERT_FALSE(done);
  EXPECT_EQ(done.error().code, ErrorCode::kUnavailable);
  EXPECT_FALSE(rolled_back);
  EXPECT_EQ(commits, 1);  // not retried: the outcome of a failed commit is unknown
  EXPECT_EQ(committer.stats().transactions, 0u);
}

}  // namespace
}  // namespace keel::jobs
