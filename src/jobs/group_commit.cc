#include "jobs/group_commit.h"

#include <utility>

namespace keel::jobs {

GroupCommitter::GroupCommitter(std::vector<Hooks> lanes, size_t max_batch)
    : hooks_(std::move(lanes)), max_batch_(max_batch) {
  for (size_t lane = 0; lane < hooks_.size(); ++lane) {
    threads_.emplace_back([this, lane] { Loop(lane); });
  }
}

GroupCommitter::~GroupCommitter() {
  {
    MutexLock lock(mu_);
    stopping_ = true;
  }
  work_cv_.SignalAll();
  for (std::thread& thread : threads_) thread.join();
}

Result<void> GroupCommitter::Run(Op op, size_t writes, bool* rolled_back) {
  return RunOnLane([&op](size_t) { return op(); }, writes, rolled_back);
}

Result<void> GroupCommitter::RunOnLane(LaneOp op, size_t writes, bool* rolled_back) {
  Pending pending{std::move(op), writes, {}, false, false, {}};
  MutexLock lock(mu_);
  queue_.push_back(&pending);
  ++waiting_;
  work_cv_.Signal();
  while (!pending.done) pending.done_cv.Wait(mu_);
  --waiting_;
  if (rolled_back) *rolled_back = pending.rolled_back;
  return std::move(pending.result);
}

CommitStats GroupCommitter::stats() const {
  MutexLock lock(mu_);
  CommitStats stats = stats_;
  stats.waiting = waiting_;
  return stats;
}

void GroupCommitter::Loop(size_t lane) {
  std::vector<Pending*> batch;
  while (true) {
    {
      MutexLock lock(mu_);
      while (!stopping_ && queue_.empty()) work_cv_.Wait(mu_);
      if (queue_.empty()) return;  // stopping, and everything handed over ran
      while (!queue_.empty() && batch.size() < max_batch_) {
        batch.push_back(queue_.front());
        queue_.pop_front();
      }
      // More than one lane's batch waiting: let another free lane take it.
      if (!queue_.empty()) work_cv_.Signal();
    }
    RunBatch(lane, batch);
    {
      // Notify under the lock: once `done` is seen, the waiter may return
      // and destroy its Pending, condition variable included.
      MutexLock lock(mu_);
      for (Pending* p : batch) {
        p->done = true;
        p->done_cv.Signal();
      }
    }
    batch.clear();
  }
}

void GroupCommitter::RunBatch(size_t lane, const std::vector<Pending*>& batch) {
  bool op_failed = false;
  Result<void> result = RunTransaction(lane, batch, &op_failed);
  if (result || !op_failed || batch.size() == 1) {
    // Success, or a failed commit whose outcome is unknown: retrying could
    // apply operations twice, so everyone sees the error.
    for (Pending* p : batch) {
      p->result = result;
      p->rolled_back = op_failed;
    }
    return;
  }
  for (Pending* p : batch) {
    p->result = RunTransaction(lane, {p}, &op_failed);
    p->rolled_back = op_failed;
  }
}

Result<void> GroupCommitter::RunTransaction(size_t lane, const std::vector<Pending*>& ops,
                                            bool* op_failed) {
  const Hooks& hooks = hooks_[lane];
  *op_failed = false;
  if (Result<void> begun = hooks.begin(); !begun) return begun;
  bool wake = false;
  size_t writes = 0;
  for (Pending* p : ops) {
    writes += p->writes;
    Result<bool> done = p->op(lane);
    if (!done) {
      hooks.rollback();
      *op_failed = true;
      return tl::unexpected(std::move(done.error()));
    }
    wake = wake || *done;
  }
  if (hooks.flush) {
    Result<bool> flushed = hooks.flush();
    if (!flushed) {
      hooks.rollback();
      *op_failed = true;
      return tl::unexpected(std::move(flushed.error()));
    }
    wake = wake || *flushed;
  }
  if (Result<void> committed = hooks.commit(wake); !committed) {
    hooks.rollback();
    return committed;
  }
  {
    MutexLock lock(mu_);
    stats_.transactions += 1;
    stats_.operations += writes;
  }
  hooks.committed(wake);
  return {};
}

}  // namespace keel::jobs
