// Test-only access to executor internals: hold a thread at a named point,
// and look at queue memory. Not part of the public API.
#ifndef KEEL_EXEC_TESTING_H_
#define KEEL_EXEC_TESTING_H_

#include <cstddef>
#include <functional>

#include "keel/runtime.h"

namespace keel::exec {

enum class TestPoint : uint8_t;

// `hook` runs at each TestPoint (exec/core.h) on the thread that reaches
// it; empty to remove.
void SetTestHook(Runtime& runtime, std::function<void(TestPoint)> hook);

// Queue entries of `pool`, withdrawn calls that still sit in a deque
// included.
size_t QueueEntries(const Pool& pool);

// Core workers of `runtime` that are idle: asleep or about to sleep, so a
// submitted call claims one (a worker that just ran out of calls first
// looks for more for a moment, and is not idle then).
int IdleWorkers(const Runtime& runtime);

// The slot whose queue holds calls with affinity `key` in `pool`.
int AffinitySlot(const Pool& pool, uint64_t key);

}  // namespace keel::exec

#endif  // KEEL_EXEC_TESTING_H_
