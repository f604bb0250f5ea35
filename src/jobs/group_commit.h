// Group commit: a thread runs the write operations of many callers in one
// transaction, so throughput is not bound by one fsync per operation. A
// caller's Run() returns only after the transaction holding its operation
// committed (or failed).
#ifndef KEEL_JOBS_GROUP_COMMIT_H_
#define KEEL_JOBS_GROUP_COMMIT_H_

#include <cstddef>
#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "base/mutex.h"
#include "jobs/store.h"
#include "keel/status.h"

namespace keel::jobs {

// Thread-safe. Owns one thread per lane (a set of hooks, e.g. one database
// connection each); the destructor runs the operations already queued, then
// joins. The lanes share one queue: a free lane takes everything waiting as
// its batch, so an operation waits behind at most the transactions already
// running, never behind another's queue. A lane's hooks and the operations
// it runs are called on its thread only, so they may use a connection no
// other thread touches.
class GroupCommitter {
 public:
  struct Hooks {
    std::function<Result<void>()> begin;
    // Optional. After the operations, before the commit: sends the writes
    // they queued to go together (e.g. one multi-row INSERT for many
    // submits). Returns true when that made work claimable; an error counts
    // as an operation's (nothing was committed, so the batch is retried one
    // by one, each operation flushing alone).
    std::function<Result<bool>()> flush;
    // Commits; `wake` is true when an operation made work claimable.
    std::function<Result<void>(bool wake)> commit;
    // Abandons the open transaction. Must not fail.
    std::function<void()> rollback;
    // After a successful commit.
    std::function<void(bool wake)> committed;
  };
  // An operation runs inside an open transaction of the lane it is given
  // (0 .. lanes - 1). It returns true when it made work claimable at once,
  // or an error that aborts the transaction. Errors the caller should just
  // see (unknown job, lost lease) belong in the operation's own output, not
  // here: they must not abort the batch. An operation may run twice (its
  // batch failed and is retried one by one), so it must assign its outputs,
  // not accumulate them.
  using LaneOp = std::function<Result<bool>(size_t lane)>;
  using Op = std::function<Result<bool>()>;

  GroupCommitter(Hooks hooks, size_t max_batch) : GroupCommitter(std::vector{hooks}, max_batch) {}
  GroupCommitter(std::vector<Hooks> lanes, size_t max_batch);
  ~GroupCommitter();
  GroupCommitter(const GroupCommitter&) = delete;
  GroupCommitter& operator=(const GroupCommitter&) = delete;

  // Runs `op` in the next transaction and waits for the commit. Returns the
  // operation's error, or the transaction's if the commit failed. `writes`:
  // how many writes the operation makes, for stats() (several for a batch).
  // On an error, *rolled_back (if given) says whether the operation or the
  // flush failed, so that nothing was committed (else begin or commit did,
  // and a failed commit may or may not have been applied).
  [[nodiscard]] Result<void> Run(Op op, size_t writes = 1, bool* rolled_back = nullptr);
  [[nodiscard]] Result<void> RunOnLane(LaneOp op, size_t writes = 1,
                                       bool* rolled_back = nullptr) EXCLUDES(mu_);

  CommitStats stats() const EXCLUDES(mu_);

 private:
  struct Pending {
    LaneOp op;
    size_t writes;
    Result<void> result;
    bool rolled_back = false;  // `result` is an operation's or the flush's error
    bool done = false;
    CondVar done_cv;  // one per caller: no thundering herd
  };

  void Loop(size_t lane) EXCLUDES(mu_);
  // Runs `batch` in one transaction; if an operation fails, runs each one in
  // its own transaction so that only the failing one sees the error.
  void RunBatch(size_t lane, const std::vector<Pending*>& batch);
  // Runs ops in one transaction; on failure, *failed says whether an
  // operation (not begin/commit) failed, i.e. nothing was committed.
  Result<void> RunTransaction(size_t lane, const std::vector<Pending*>& ops, bool* op_failed);

  const std::vector<Hooks> hooks_;
  const size_t max_batch_;
  mutable Mutex mu_;
  CondVar work_cv_;
  std::deque<Pending*> queue_ GUARDED_BY(mu_);
  bool stopping_ GUARDED_BY(mu_) = false;
  CommitStats stats_ GUARDED_BY(mu_);
  uint64_t waiting_ GUARDED_BY(mu_) = 0;  // handed to Run, not yet answered
  std::vector<std::thread> threads_;      // last: start once the members above exist
};

}  // namespace keel::jobs

#endif  // KEEL_JOBS_GROUP_COMMIT_H_
