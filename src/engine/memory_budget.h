// A budget on the committed linear memory (current pages x 64 KiB) of a set
// of instances: those of one keel runtime. Engine-independent; each backend
// charges it when an instance is made and grants it to calls that may grow
// their memory (see MemoryCharge). Thread-safe and lock-free.
#ifndef KEEL_ENGINE_MEMORY_BUDGET_H_
#define KEEL_ENGINE_MEMORY_BUDGET_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "keel/status.h"

namespace keel::engine {

class MemoryBudget {
 public:
  explicit MemoryBudget(uint64_t limit_bytes) : limit_(limit_bytes) {}
  MemoryBudget(const MemoryBudget&) = delete;
  MemoryBudget& operator=(const MemoryBudget&) = delete;

  uint64_t limit() const { return limit_; }
  uint64_t used() const { return used_.load(std::memory_order_relaxed); }
  uint64_t available() const {
    uint64_t used_now = used();
    return used_now >= limit_ ? 0 : limit_ - used_now;
  }

  // Adds `bytes` to the use if it stays within the limit; false (nothing
  // charged) otherwise.
  [[nodiscard]] bool TryCharge(uint64_t bytes);
  // Charges as much of `bytes` as is free; returns what it charged.
  uint64_t ChargeUpTo(uint64_t bytes);
  // Adds `bytes` whatever the limit (memory that exists already).
  void Charge(uint64_t bytes) { used_.fetch_add(bytes, std::memory_order_relaxed); }
  void Release(uint64_t bytes) { used_.fetch_sub(bytes, std::memory_order_relaxed); }

  // "the runtime's linear-memory budget of L bytes (U in use)".
  std::string Describe() const;

 private:
  const uint64_t limit_;
  std::atomic<uint64_t> used_{0};
};

// One instance's share of a budget: its committed memory, plus, while one
// of its calls runs, the bytes granted to that call for memory.grow.
// Releases everything when destroyed. Used on the instance's thread only.
class MemoryCharge {
 public:
  explicit MemoryCharge(std::shared_ptr<MemoryBudget> budget) : budget_(std::move(budget)) {}
  MemoryCharge(const MemoryCharge&) = delete;
  MemoryCharge& operator=(const MemoryCharge&) = delete;
  ~MemoryCharge() { budget_->Release(charged_); }

  uint64_t charged() const { return charged_; }
  const MemoryBudget& budget() const { return *budget_; }

  // Makes the charge exactly `bytes`. Growing it fails (false, unchanged)
  // when the budget has not that much free; shrinking always succeeds.
  [[nodiscard]] bool Set(uint64_t bytes);
  // Charges exactly `committed`: after a call, the memory's size then (the
  // grant covered its growth; memory that exists is counted even past the
  // limit), or before one, the part of a grant the call can use.
  void Settle(uint64_t committed);
  // Before a call: adds up to `more` bytes beyond `committed` (the memory's
  // size now), as much as the budget has free. Returns what was granted;
  // the charge is then committed + granted.
  uint64_t Grant(uint64_t committed, uint64_t more);

 private:
  std::shared_ptr<MemoryBudget> budget_;
  uint64_t charged_ = 0;
};

// kResourceExhausted: `what` ("instantiation") needs `bytes` of linear
// memory more than `budget` has free; names the budget and the amounts.
Error BudgetExceeded(const MemoryBudget& budget, std::string_view what, uint64_t bytes);

// A new instance's charge of `bytes` (its memory after instantiation) in
// `charge`; when the budget has not that much free, `charge` stays empty
// and the error is BudgetExceeded's.
[[nodiscard]] Result<void> ChargeInstantiation(std::optional<MemoryCharge>& charge,
                                               std::shared_ptr<MemoryBudget> budget, uint64_t bytes);

}  // namespace keel::engine

#endif  // KEEL_ENGINE_MEMORY_BUDGET_H_
