#include "jobs/group_commit.h"

#include <utility>

namespace keel::jobs {

GroupCommitter::GroupCommitter(Hooks hooks, size_t max_batch)
    : hooks_(std::move(hooks)), max_batch_(max_batch), thread_([this] { Loop(); }) {}

GroupCommitter::~GroupCommitter() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  work_cv_.notify_one();
  thread_.join();
}

Result<void> GroupCommitter::Run(Op op) {
  Pending pending{std::move(op), {}, false, {}};
  std::unique_lock lock(mu_);
  queue_.push_back(&pending);
  work_cv_.notify_one();
  pending.done_cv.wait(lock, [&] { return pending.done; });
  return std::move(pending.result);
}

CommitStats GroupCommitter::stats() const {
  std::lock_guard lock(mu_);
  return stats_;
}

void GroupCommitter::Loop() {
  std::vector<Pending*> batch;
  while (true) {
    {
      std::unique_lock lock(mu_);
      work_cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and everything handed over ran
      while (!queue_.empty() && batch.size() < max_batch_) {
        batch.push_back(queue_.front());
        queue_.pop_front();
      }
    }
    RunBatch(batch);
    {
      // Notify under the lock: once `done` is seen, the waiter may return
      // and destroy its Pending, condition variable included.
      std::lock_guard lock(mu_);
      for (Pending* p : batch) {
        p->done = true;
        p->done_cv.notify_one();
      }
    }
    batch.clear();
  }
}

void GroupCommitter::RunBatch(const std::vector<Pending*>& batch) {
  bool op_failed = false;
  Result<void> result = RunTransaction(batch, &op_failed);
  if (result || !op_failed || batch.size() == 1) {
    // Success, or a failed commit whose outcome is unknown: retrying could
    // apply operations twice, so everyone sees the error.
    for (Pending* p : batch) p->result = result;
    return;
  }
  for (Pending* p : batch) p->result = RunTransaction({p}, &op_failed);
}

Result<void> GroupCommitter::RunTransaction(const std::vector<Pending*>& ops, bool* op_failed) {
  *op_failed = false;
  if (Result<void> begun = hooks_.begin(); !begun) return begun;
  bool wake = false;
  for (Pending* p : ops) {
    Result<bool> done = p->op();
    if (!done) {
      hooks_.rollback();
      *op_failed = true;
      return tl::unexpected(std::move(done.error()));
    }
    wake = wake || *done;
  }
  if (hooks_.flush) {
    Result<bool> flushed = hooks_.flush();
    if (!flushed) {
      hooks_.rollback();
      *op_failed = true;
      return tl::unexpected(std::move(flushed.error()));
    }
    wake = wake || *flushed;
  }
  if (Result<void> committed = hooks_.commit(wake); !committed) {
    hooks_.rollback();
    return committed;
  }
  {
    std::lock_guard lock(mu_);
    stats_.transactions += 1;
    stats_.operations += ops.size();
  }
  hooks_.committed(wake);
  return {};
}

}  // namespace keel::jobs
