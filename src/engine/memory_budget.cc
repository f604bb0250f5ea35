#include "engine/memory_budget.h"

#include <algorithm>

namespace keel::engine {

bool MemoryBudget::TryCharge(uint64_t bytes) {
  uint64_t used = used_.load(std::memory_order_relaxed);
  do {
    if (bytes > limit_ || used > limit_ - bytes) return false;
  } while (!used_.compare_exchange_weak(used, used + bytes, std::memory_order_relaxed));
  return true;
}

uint64_t MemoryBudget::ChargeUpTo(uint64_t bytes) {
  uint64_t used = used_.load(std::memory_order_relaxed);
  uint64_t take = 0;
  do {
    take = used >= limit_ ? 0 : std::min(bytes, limit_ - used);
    if (take == 0) return 0;
  } while (!used_.compare_exchange_weak(used, used + take, std::memory_order_relaxed));
  return take;
}

std::string MemoryBudget::Describe() const {
  return "the runtime's linear-memory budget of " + std::to_string(limit_) + " bytes (" +
         std::to_string(used()) + " in use)";
}

bool MemoryCharge::Set(uint64_t bytes) {
  if (bytes > charged_) {
    if (!budget_->TryCharge(bytes - charged_)) return false;
  } else {
    budget_->Release(charged_ - bytes);
  }
  charged_ = bytes;
  return true;
}

void MemoryCharge::Settle(uint64_t committed) {
  // Most calls end where they began: no write to the shared counter.
  if (committed == charged_) return;
  if (committed > charged_) {
    budget_->Charge(committed - charged_);
  } else {
    budget_->Release(charged_ - committed);
  }
  charged_ = committed;
}

uint64_t MemoryCharge::Grant(uint64_t committed, uint64_t more) {
  // The previous call's leftover grant goes back first, so that this call
  // gets all the budget has free.
  if (charged_ > committed) {
    budget_->Release(charged_ - committed);
    charged_ = committed;
  }
  uint64_t granted = budget_->ChargeUpTo(more);
  charged_ += granted;
  return granted;
}

Error BudgetExceeded(const MemoryBudget& budget, std::string_view what, uint64_t bytes) {
  return Error(ErrorCode::kResourceExhausted,
               std::string(what) + " needs " + std::to_string(bytes) +
                   " bytes of linear memory, more than is free in " + budget.Describe());
}

Result<void> ChargeInstantiation(std::optional<MemoryCharge>& charge,
                                 std::shared_ptr<MemoryBudget> budget, uint64_t bytes) {
  charge.emplace(std::move(budget));
  if (charge->Set(bytes)) return {};
  Error error = BudgetExceeded(charge->budget(), "instantiation", bytes);
  charge.reset();
  return tl::unexpected(std::move(error));
}

}  // namespace keel::engine
