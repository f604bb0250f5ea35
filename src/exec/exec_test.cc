// The call contract of DESIGN.md, row by row, plus the invariants. Timing is
// controlled by gates (a host import the guest blocks on), never by sleeps;
// the only waits are bounded polls for a state to be reached.
#include <coroutine>
#include <random>

#include "exec/exec_fixture.h"

namespace keel::exectest {
namespace {

using ::testing::HasSubstr;

// --- Happy path ------------------------------------------------------------------

TEST_F(ExecTest, NumericAndByteCallsReturnResults) {
  auto pool = MakePool();
  Call call = Submit(*pool, "add", {Value::I32(40), Value::I32(2)});
  const CallResult& r = call.Wait();
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->values, std::vector<Value>{Value::I32(42)});
  EXPECT_EQ(call.state(), CallState::kDone);

  Call echo = SubmitBytes(*pool, "echo", "hello, keel");
  const CallResult& e = echo.Wait();
  ASSERT_TRUE(e) << e.error().ToString();
  EXPECT_EQ(std::string(e->bytes.begin(), e->bytes.end()), "hello, keel");
  ExpectSumRules();
}

TEST_F(ExecTest, SubmitRejectsBadRequestsAtOnce) {
  auto pool = MakePool();
  auto r = pool->Submit("nope", {});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kNotFound);
  r = pool->Submit("add", {Value::I32(1)});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  r = pool->Submit("add", {Value::I32(1), Value::I64(2)});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  r = pool->SubmitBytes("bump", {});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kInvalidArgument);
  EXPECT_THAT(r.error().message, HasSubstr("byte call"));
  EXPECT_EQ(runtime_->Metrics().submitted, 0u);
}

TEST_F(ExecTest, MissingHostFunctionFailsPoolCreation) {
  auto pool = runtime_->CreatePool(module_, {});
  ASSERT_FALSE(pool);
  EXPECT_EQ(pool.error().code, ErrorCode::kLinkError);
  EXPECT_THAT(pool.error().message, HasSubstr("'keel_test'.'gate'"));
}

// --- Cancel / drop while queued ------------------------------------------------------

TEST_F(ExecTest, CancelWhileQueuedWithdrawsAndNeverRuns) {
  auto pool = MakePool();
  Call blocker = Submit(*pool, "gated", {Value::I32(7)});
  ASSERT_TRUE(host_.WaitEntered(7));
  Call queued = Submit(*pool, "work", {Value::I32(1001), Value::I32(0)});
  EXPECT_EQ(queued.state(), CallState::kQueued);
  EXPECT_EQ(queued.Cancel(), CancelOutcome::kWithdrawn);
  ASSERT_TRUE(queued.ready());
  EXPECT_EQ(queued.Wait().error().code, ErrorCode::kCancelled);
  EXPECT_EQ(queued.state(), CallState::kWithdrawn);
  EXPECT_EQ(queued.Cancel(), CancelOutcome::kTooLate);

  host_.Open(7);
  ASSERT_TRUE(blocker.Wait());
  // A later call runs after the withdrawn one would have: it never ran.
  ASSERT_TRUE(Submit(*pool, "work", {Value::I32(1002), Value::I32(0)}).Wait());
  EXPECT_EQ(host_.Ran(1001), 0);
  EXPECT_EQ(host_.Ran(1002), 1);
  EXPECT_EQ(runtime_->Metrics().resolved.cancelled_queued, 1u);
  ExpectSumRules();
}

TEST_F(ExecTest, DroppingAQueuedHandleWithdrawsIt) {
  auto pool = MakePool();
  Call blocker = Submit(*pool, "gated", {Value::I32(8)});
  ASSERT_TRUE(host_.WaitEntered(8));
  { Call dropped = Submit(*pool, "work", {Value::I32(2001), Value::I32(0)}); }
  EXPECT_EQ(pool->Stats().queued, 0u);
  host_.Open(8);
  ASSERT_TRUE(blocker.Wait());
  ASSERT_TRUE(Submit(*pool, "work", {Value::I32(2002), Value::I32(0)}).Wait());
  EXPECT_EQ(host_.Ran(2001), 0);
  EXPECT_EQ(runtime_->Metrics().resolved.cancelled_queued, 1u);
}

TEST_F(ExecTest, StopTokenCancelsLikeCancel) {
  auto pool = MakePool();
  Call blocker = Submit(*pool, "gated", {Value::I32(9)});
  ASSERT_TRUE(host_.WaitEntered(9));
  std::stop_source source;
  Call queued = Submit(*pool, "work", {Value::I32(3001), Value::I32(0)},
                       {.stop_token = source.get_token()});
  source.request_stop();
  ASSERT_TRUE(queued.ready());
  EXPECT_EQ(queued.Wait().error().code, ErrorCode::kCancelled);
  EXPECT_EQ(queued.state(), CallState::kWithdrawn);
  host_.Open(9);
  ASSERT_TRUE(blocker.Wait());
  EXPECT_EQ(host_.Ran(3001), 0);
}

// --- Cancel / drop while running or in post-return -----------------------------------

TEST_F(ExecTest, CancelWhileRunningDetachesAndTheCallFinishes) {
  auto pool = MakePool();
  Call call = Submit(*pool, "gated", {Value::I32(10)});
  ASSERT_TRUE(host_.WaitEntered(10));
  EXPECT_EQ(call.state(), CallState::kRunning);
  EXPECT_EQ(call.Cancel(), CancelOutcome::kDetached);
  // Resolved at once, while the guest is still blocked.
  ASSERT_TRUE(call.ready());
  EXPECT_EQ(call.Wait().error().code, ErrorCode::kCancelled);
  EXPECT_EQ(call.Cancel(), CancelOutcome::kTooLate);
  host_.Open(10);
  ASSERT_TRUE(Eventually([&] { return SinkSize() == 1; }));
  {
    std::lock_guard<std::mutex> lock(sink_mu_);
    EXPECT_EQ(sink_[0].first, call.id());
    ASSERT_TRUE(sink_[0].second);
    EXPECT_EQ(sink_[0].second->values, std::vector<Value>{Value::I32(10)});
  }
  // The instance stayed healthy: same instance (bump keeps counting), no poison.
  EXPECT_EQ(Submit(*pool, "bump", {}).Wait()->values[0].i32(), 1);
  EXPECT_EQ(Submit(*pool, "bump", {}).Wait()->values[0].i32(), 2);
  MetricsSnapshot m = runtime_->Metrics();
  EXPECT_EQ(m.instances.poisoned, 0u);
  EXPECT_EQ(m.resolved.detached, 1u);
  EXPECT_EQ(m.detached_results, 1u);
  ExpectSumRules();
}

TEST_F(ExecTest, DroppingARunningHandleDetaches) {
  auto pool = MakePool();
  CallId id;
  {
    Call call = Submit(*pool, "gated", {Value::I32(11)});
    id = call.id();
    ASSERT_TRUE(host_.WaitEntered(11));
  }
  host_.Open(11);
  ASSERT_TRUE(Eventually([&] { return SinkSize() == 1; }));
  std::lock_guard<std::mutex> lock(sink_mu_);
  EXPECT_EQ(sink_[0].first, id);
  EXPECT_TRUE(sink_[0].second);
}

TEST_F(ExecTest, CancelDuringPostReturnDetachesAndBothPhasesFinish) {
  auto pool = MakePool();
  host_.Open(1);
  Call call = SubmitBytes(*pool, "gated_echo", "phase two");
  ASSERT_TRUE(host_.WaitEntered(2));
  EXPECT_EQ(call.state(), CallState::kPostReturn);
  EXPECT_EQ(call.Cancel(), CancelOutcome::kDetached);
  EXPECT_EQ(call.Wait().error().code, ErrorCode::kCancelled);
  host_.Open(2);
  ASSERT_TRUE(Eventually([&] { return SinkSize() == 1; }));
  {
    std::lock_guard<std::mutex> lock(sink_mu_);
    ASSERT_TRUE(sink_[0].second);
    EXPECT_EQ(std::string(sink_[0].second->bytes.begin(), sink_[0].second->bytes.end()), "phase two");
  }
  // Phase two ran: the guest's heap was reset, the instance is healthy.
  Call next = SubmitBytes(*pool, "echo", "next");
  ASSERT_TRUE(next.Wait());
  EXPECT_EQ(runtime_->Metrics().instances.poisoned, 0u);
}

TEST_F(ExecTest, CancelAfterDoneIsTooLate) {
  auto pool = MakePool();
  Call call = Submit(*pool, "add", {Value::I32(1), Value::I32(2)});
  ASSERT_TRUE(call.Wait());
  EXPECT_EQ(call.Cancel(), CancelOutcome::kTooLate);
  EXPECT_TRUE(call.Wait());  // the result is unchanged
}

// --- Deadlines -----------------------------------------------------------------------

TEST_F(ExecTest, DeadlineWhileQueuedResolvesWithoutRunning) {
  auto pool = MakePool();
  Call blocker = Submit(*pool, "gated", {Value::I32(12)});
  ASSERT_TRUE(host_.WaitEntered(12));
  Call queued = Submit(*pool, "work", {Value::I32(4001), Value::I32(0)}, {.timeout = 20ms});
  const CallResult& r = queued.Wait();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kDeadlineExceeded);
  EXPECT_EQ(queued.state(), CallState::kWithdrawn);
  host_.Open(12);
  ASSERT_TRUE(blocker.Wait());
  ASSERT_TRUE(Submit(*pool, "work", {Value::I32(4002), Value::I32(0)}).Wait());
  EXPECT_EQ(host_.Ran(4001), 0);
  EXPECT_EQ(runtime_->Metrics().resolved.deadline_queued, 1u);
  ExpectSumRules();
}

TEST_F(ExecTest, DeadlineWhileRunningInterruptsPoisonsAndReplaces) {
  auto pool = MakePool();
  EXPECT_EQ(Submit(*pool, "bump", {}).Wait()->values[0].i32(), 1);
  Call call = Submit(*pool, "spin", {}, {.timeout = 50ms});
  const CallResult& r = call.Wait();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kDeadlineExceeded);
  ASSERT_TRUE(Eventually([&] { return runtime_->Metrics().instances.replaced == 1; }));
  MetricsSnapshot m = runtime_->Metrics();
  EXPECT_EQ(m.instances.poisoned, 1u);
  EXPECT_EQ(m.runs.run_interrupted, 1u);
  EXPECT_EQ(m.resolved.deadline_running, 1u);
  EXPECT_EQ(pool->Stats().healthy_instances, 1u);
  // The replacement is a fresh instance.
  EXPECT_EQ(Submit(*pool, "bump", {}).Wait()->values[0].i32(), 1);
  ExpectSumRules();
}

TEST_F(ExecTest, DeadlineInterruptsAGuestBlockedInTheHost) {
  auto pool = MakePool();
  Call call = Submit(*pool, "gated", {Value::I32(13)}, {.timeout = 50ms});
  EXPECT_EQ(call.Wait().error().code, ErrorCode::kDeadlineExceeded);
  ASSERT_TRUE(Eventually([&] { return runtime_->Metrics().instances.replaced == 1; }));
  EXPECT_TRUE(Submit(*pool, "add", {Value::I32(1), Value::I32(1)}).Wait());
}

TEST_F(ExecTest, DeadlineDuringPostReturnInterruptsAndReplaces) {
  auto pool = MakePool();
  Call call = SubmitBytes(*pool, "spin_in_post", "x", {.timeout = 50ms});
  EXPECT_EQ(call.Wait().error().code, ErrorCode::kDeadlineExceeded);
  ASSERT_TRUE(Eventually([&] { return runtime_->Metrics().instances.replaced == 1; }));
  EXPECT_EQ(runtime_->Metrics().instances.poisoned, 1u);
  EXPECT_TRUE(SubmitBytes(*pool, "echo", "ok").Wait());
}

TEST_F(ExecTest, DeadlineAlreadyPassedIsRejectedAtSubmit) {
  auto pool = MakePool();
  auto r = pool->Submit("add", {Value::I32(1), Value::I32(2)}, {.deadline = Clock::now() - 1ms});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kDeadlineExceeded);
  EXPECT_EQ(runtime_->Metrics().rejected_deadline, 1u);
}

TEST_F(ExecTest, DeadlineCoversQueueTimePlusRunTime) {
  constexpr auto kTimeout = 4s;
  auto pool = MakePool();
  Call blocker = Submit(*pool, "gated", {Value::I32(14)});
  ASSERT_TRUE(host_.WaitEntered(14));
  // Both wait in the queue; the marker's expiry tells that half of the
  // call's time went by before it could start.
  Call call = Submit(*pool, "gated_spin", {Value::I32(15)}, {.timeout = kTimeout});
  Call marker = Submit(*pool, "work", {Value::I32(7001), Value::I32(0)}, {.timeout = kTimeout / 2});
  host_.Open(15);
  EXPECT_EQ(marker.Wait().error().code, ErrorCode::kDeadlineExceeded);
  auto started = Clock::now();
  host_.Open(14);
  const CallResult& r = call.Wait();
  EXPECT_EQ(r.error().code, ErrorCode::kDeadlineExceeded);
  EXPECT_EQ(runtime_->Metrics().resolved.deadline_running, 1u);
  // Counted from submit, the call runs at most the other half; counted from
  // its start it would run the whole kTimeout.
  EXPECT_LT(Clock::now() - started, kTimeout * 7 / 8);
}

// --- Traps ---------------------------------------------------------------------------

TEST_F(ExecTest, TrapPoisonsAndReplaces) {
  auto pool = MakePool();
  EXPECT_EQ(Submit(*pool, "bump", {}).Wait()->values[0].i32(), 1);
  Call r_call = Submit(*pool, "trap", {});
  const CallResult& r = r_call.Wait();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kTrap);
  EXPECT_EQ(r.error().trap, TrapKind::kUnreachable);
  EXPECT_THAT(r.error().backtrace, HasSubstr("<trap>"));
  ASSERT_TRUE(Eventually([&] { return runtime_->Metrics().instances.replaced == 1; }));
  EXPECT_EQ(Submit(*pool, "bump", {}).Wait()->values[0].i32(), 1);
  MetricsSnapshot m = runtime_->Metrics();
  EXPECT_EQ(m.resolved.traps[static_cast<size_t>(TrapKind::kUnreachable)], 1u);
  EXPECT_EQ(m.instances.poisoned, 1u);
  ExpectSumRules();
}

TEST_F(ExecTest, TrapInPostReturnFailsTheCallAndPoisons) {
  auto pool = MakePool();
  Call r_call = SubmitBytes(*pool, "trap_in_post", "x");
  const CallResult& r = r_call.Wait();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kTrap);
  ASSERT_TRUE(Eventually([&] { return runtime_->Metrics().instances.replaced == 1; }));
}

TEST_F(ExecTest, ByteAbiViolationsAreClearErrorsAndPoison) {
  auto pool = MakePool();
  Call bad_call = SubmitBytes(*pool, "bad_pair", "x");
  const CallResult& bad = bad_call.Wait();
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, ErrorCode::kInvalidArgument);
  EXPECT_THAT(bad.error().message, HasSubstr("outside linear memory"));
  Call huge_call = SubmitBytes(*pool, "huge_output", "x");
  const CallResult& huge = huge_call.Wait();
  ASSERT_FALSE(huge);
  EXPECT_EQ(huge.error().code, ErrorCode::kResourceExhausted);
  ASSERT_TRUE(Eventually([&] { return runtime_->Metrics().instances.replaced == 2; }));
  auto too_big = pool->SubmitBytes("echo", std::vector<uint8_t>((16 << 20) + 1));
  ASSERT_FALSE(too_big);
  EXPECT_EQ(too_big.error().code, ErrorCode::kResourceExhausted);
}

// --- Admission control ---------------------------------------------------------------

TEST_F(ExecTest, FullQueueRejectsAtOnceWithOverloaded) {
  auto pool = MakePool({.max_queue = 2});
  Call blocker = Submit(*pool, "gated", {Value::I32(16)});
  ASSERT_TRUE(host_.WaitEntered(16));
  Call q1 = Submit(*pool, "add", {Value::I32(1), Value::I32(1)});
  Call q2 = Submit(*pool, "add", {Value::I32(1), Value::I32(1)});
  auto r = pool->Submit("add", {Value::I32(1), Value::I32(1)});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kOverloaded);
  EXPECT_EQ(runtime_->Metrics().rejected_overloaded, 1u);
  // Withdrawing one frees its place.
  EXPECT_EQ(q2.Cancel(), CancelOutcome::kWithdrawn);
  Call q3 = Submit(*pool, "add", {Value::I32(2), Value::I32(2)});
  host_.Open(16);
  EXPECT_TRUE(q1.Wait());
  EXPECT_EQ(q3.Wait()->values[0].i32(), 4);
}

// --- Shutdown ------------------------------------------------------------------------

TEST_F(ExecTest, ShutdownDrainsRunningAndRefusesQueued) {
  auto pool = MakePool();
  Call running = Submit(*pool, "gated", {Value::I32(17)});
  ASSERT_TRUE(host_.WaitEntered(17));
  Call queued = Submit(*pool, "work", {Value::I32(5001), Value::I32(0)});
  std::thread opener([&] {
    EXPECT_TRUE(Eventually([&] { return queued.ready(); }));
    host_.Open(17);
  });
  runtime_->Shutdown(20s);
  opener.join();
  EXPECT_EQ(queued.Wait().error().code, ErrorCode::kShuttingDown);
  ASSERT_TRUE(running.Wait()) << running.Wait().error().ToString();
  EXPECT_EQ(host_.Ran(5001), 0);
  auto after = pool->Submit("add", {Value::I32(1), Value::I32(1)});
  ASSERT_FALSE(after);
  EXPECT_EQ(after.error().code, ErrorCode::kShuttingDown);
  ExpectSumRules();
}

TEST_F(ExecTest, ShutdownInterruptsWhatOutlivesTheDrainPeriod) {
  auto pool = MakePool();
  Call spinning = Submit(*pool, "spin", {});
  ASSERT_TRUE(Eventually([&] { return spinning.state() == CallState::kRunning; }));
  runtime_->Shutdown(50ms);
  ASSERT_TRUE(spinning.ready());
  EXPECT_EQ(spinning.Wait().error().code, ErrorCode::kShuttingDown);
  ExpectSumRules();
}

// --- Completion styles ---------------------------------------------------------------

TEST_F(ExecTest, CompletionCallbackRunsExactlyOnceOffTheCallerThread) {
  auto pool = MakePool();
  std::atomic<int> runs{0};
  std::atomic<bool> on_caller{false};
  auto caller = std::this_thread::get_id();
  Call call = Submit(*pool, "add", {Value::I32(2), Value::I32(3)});
  call.OnComplete([&](const CallResult& r) {
    EXPECT_EQ(r->values[0].i32(), 5);
    on_caller = std::this_thread::get_id() == caller;
    runs++;
  });
  ASSERT_TRUE(call.Wait());
  // Registered after resolution: still runs, once.
  call.OnComplete([&](const CallResult&) { runs++; });
  ASSERT_TRUE(Eventually([&] { return runs.load() == 2; }));
  // The one callback thread runs callbacks in order: once a later call's
  // callback ran, no second run of the first two can still be coming.
  std::atomic<bool> barrier{false};
  Call later = Submit(*pool, "add", {Value::I32(0), Value::I32(0)});
  later.OnComplete([&](const CallResult&) { barrier = true; });
  ASSERT_TRUE(Eventually([&] { return barrier.load(); }));
  EXPECT_EQ(runs.load(), 2);
  EXPECT_FALSE(on_caller.load());
}

TEST_F(ExecTest, InlineCompletionRunsOnTheResolvingThread) {
  auto pool = MakePool();
  std::mutex mu;
  std::condition_variable cv;
  std::thread::id inline_thread, callback_thread;
  int inline_runs = 0;
  // Resolved by the worker that ran it, not by a callback thread.
  Call call = Submit(*pool, "gated", {Value::I32(7)});
  ASSERT_TRUE(host_.WaitEntered(7));
  call.OnCompleteInline([&](const CallResult& r) {
    EXPECT_EQ(r->values[0].i32(), 7);
    std::lock_guard<std::mutex> lock(mu);
    inline_thread = std::this_thread::get_id();
    inline_runs++;
    cv.notify_all();
  });
  call.OnComplete([&](const CallResult&) {
    std::lock_guard<std::mutex> lock(mu);
    callback_thread = std::this_thread::get_id();
    cv.notify_all();
  });
  host_.Open(7);
  {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, 20s, [&] { return inline_runs == 1 && callback_thread != std::thread::id(); }));
    EXPECT_EQ(inline_thread, host_.GateThread(7));
    EXPECT_NE(inline_thread, callback_thread);
    EXPECT_NE(inline_thread, std::this_thread::get_id());
  }
  // Registered after resolution: runs at once, here, once.
  int late_runs = 0;
  call.OnCompleteInline([&](const CallResult&) { late_runs++; });
  EXPECT_EQ(late_runs, 1);

  // A queued call cancelled here resolves here, before Cancel() returns.
  Call blocker = Submit(*pool, "gated", {Value::I32(8)});
  ASSERT_TRUE(host_.WaitEntered(8));
  Call queued = Submit(*pool, "add", {Value::I32(1), Value::I32(2)});
  std::thread::id cancel_thread;
  ErrorCode code = ErrorCode::kInternal;
  queued.OnCompleteInline([&](const CallResult& r) {
    cancel_thread = std::this_thread::get_id();
    code = r.error().code;
  });
  EXPECT_EQ(queued.Cancel(), CancelOutcome::kWithdrawn);
  EXPECT_EQ(cancel_thread, std::this_thread::get_id());
  EXPECT_EQ(code, ErrorCode::kCancelled);
  host_.Open(8);
  ASSERT_TRUE(blocker.Wait());
  EXPECT_EQ(inline_runs, 1);
  ExpectSumRules();
}

struct Task {
  struct promise_type {
    Task get_return_object() { return {}; }
    std::suspend_never initial_suspend() { return {}; }
    std::suspend_never final_suspend() noexcept { return {}; }
    void return_void() {}
    void unhandled_exception() { std::terminate(); }
  };
};

Task AwaitSum(Pool& pool, std::atomic<int>* out) {
  auto call = pool.Submit("add", {Value::I32(20), Value::I32(22)});
  CallResult r = co_await *call;
  *out = r ? r->values[0].i32() : -1;
}

TEST_F(ExecTest, CoAwaitResumesWithTheResult) {
  auto pool = MakePool();
  std::atomic<int> out{0};
  AwaitSum(*pool, &out);
  ASSERT_TRUE(Eventually([&] { return out.load() != 0; }));
  EXPECT_EQ(out.load(), 42);
}

TEST_F(ExecTest, WaitForTimesOutWithoutAffectingTheCall) {
  auto pool = MakePool();
  Call call = Submit(*pool, "gated", {Value::I32(18)});
  EXPECT_EQ(call.WaitFor(10ms), nullptr);
  host_.Open(18);
  const CallResult* r = call.WaitFor(20s);
  ASSERT_NE(r, nullptr);
  EXPECT_TRUE(*r);
}

// --- Pools: affinity, no head-of-line blocking, recycling, quarantine -----------------

TEST_F(ExecTest, NoHeadOfLineBlockingWhileAnotherInstanceIsFree) {
  auto pool = MakePool({.instances = 2});
  Call blocked = Submit(*pool, "gated", {Value::I32(19)});
  ASSERT_TRUE(host_.WaitEntered(19));
  // The other instance serves calls while the first is blocked.
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(Submit(*pool, "add", {Value::I32(i), Value::I32(1)}).Wait()->values[0].i32(), i + 1);
  }
  host_.Open(19);
  EXPECT_TRUE(blocked.Wait());
}

TEST_F(ExecTest, AffinityKeyRunsInOrderOnOneInstance) {
  auto pool = MakePool({.instances = 4});
  std::vector<Call> calls;
  for (int i = 0; i < 50; ++i) calls.push_back(Submit(*pool, "bump", {}, {.affinity_key = 77}));
  for (int i = 0; i < 50; ++i) {
    const CallResult& r = calls[i].Wait();
    ASSERT_TRUE(r);
    EXPECT_EQ(r->values[0].i32(), i + 1) << "same instance, submission order";
  }
}

TEST_F(ExecTest, RecyclePolicies) {
  auto fresh = MakePool({.recycle = {.state = StatePolicy::kFresh}});
  for (int i = 0; i < 3; ++i) EXPECT_EQ(Submit(*fresh, "bump", {}).Wait()->values[0].i32(), 1);
  auto limited = MakePool({.recycle = {.max_calls = 2}});
  std::vector<int> seen;
  for (int i = 0; i < 5; ++i) seen.push_back(Submit(*limited, "bump", {}).Wait()->values[0].i32());
  EXPECT_EQ(seen, (std::vector<int>{1, 2, 1, 2, 1}));
  auto idle = MakePool({.recycle = {.max_idle = 20ms}});
  EXPECT_EQ(Submit(*idle, "bump", {}).Wait()->values[0].i32(), 1);
  uint64_t recycled = runtime_->Metrics().instances.recycled;
  ASSERT_TRUE(Eventually([&] { return runtime_->Metrics().instances.recycled > recycled; }));
  ASSERT_TRUE(Eventually([&] { return idle->Stats().healthy_instances == 1; }));
  EXPECT_EQ(Submit(*idle, "bump", {}).Wait()->values[0].i32(), 1);
  EXPECT_EQ(runtime_->Metrics().instances.poisoned, 0u);
}

TEST_F(ExecTest, CrashLoopQuarantinesWithBackoffAndRecovers) {
  host_.SetStartOk(false);
  PoolOptions options;
  options.instances = 1;
  options.linker = host_.linker();
  options.quarantine = {.failures = 3, .initial_backoff = 200ms, .max_backoff = 400ms};
  auto pool = runtime_->CreatePool(module_, options);
  ASSERT_TRUE(pool);
  ASSERT_TRUE(Eventually([&] { return (*pool)->Stats().quarantined; }));
  auto r = (*pool)->Submit("add", {Value::I32(1), Value::I32(1)});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ErrorCode::kUnavailable);
  EXPECT_THAT(r.error().message, HasSubstr("quarantined"));
  EXPECT_THAT(r.error().message, HasSubstr("unreachable"));
  EXPECT_GE(runtime_->Metrics().instances.quarantines, 1u);
  // After the backoff a call is accepted and lets the pool try again.
  ASSERT_TRUE(Eventually([&] { return !(*pool)->Stats().quarantined; }));
  auto retry = (*pool)->Submit("add", {Value::I32(1), Value::I32(1)});
  ASSERT_TRUE(retry) << retry.error().ToString();
  EXPECT_EQ(retry->Wait().error().code, ErrorCode::kUnavailable);  // failed again
  EXPECT_EQ(runtime_->Metrics().instances.quarantines, 2u);
  host_.SetStartOk(true);
  ASSERT_TRUE(Eventually([&] { return !(*pool)->Stats().quarantined; }));
  auto ok = (*pool)->Submit("add", {Value::I32(1), Value::I32(1)});
  ASSERT_TRUE(ok);
  EXPECT_TRUE(ok->Wait());
  EXPECT_EQ((*pool)->Stats().healthy_instances, 1u);
}

TEST_F(ExecTest, InstantiationHasADeadline) {
  // The start function spins only in pools (start_ok() blocks on gate 50
  // there), so Compile's check, which binds stubs, lets the module through.
  host_.SetStartGate(50);
  auto pool = runtime_->CreatePool(module_, {.instances = 1,
                                             .quarantine = {.failures = 1},
                                             .instantiate_timeout = 50ms,
                                             .linker = host_.linker()});
  ASSERT_TRUE(pool);
  ASSERT_TRUE(Eventually([&] { return (*pool)->Stats().quarantined; }));
  EXPECT_THAT((*pool)->Stats().quarantine_reason, HasSubstr("deadline"));
  host_.SetStartGate(0);
}

TEST_F(ExecTest, ClosingAPoolAfterShutdownIsHarmless) {
  auto pool = MakePool();
  runtime_->Shutdown(5s);
  pool->Close();  // must not queue work for stopped workers (LSan would see the leak)
  EXPECT_FALSE(pool->Submit("add", {Value::I32(1), Value::I32(1)}));
}

TEST_F(ExecTest, CloseCancelsQueuedCallsAndRefusesNewOnes) {
  auto pool = MakePool();
  Call blocker = Submit(*pool, "gated", {Value::I32(20)});
  ASSERT_TRUE(host_.WaitEntered(20));
  Call queued = Submit(*pool, "add", {Value::I32(1), Value::I32(1)});
  pool->Close();
  EXPECT_EQ(queued.Wait().error().code, ErrorCode::kCancelled);
  EXPECT_FALSE(pool->Submit("add", {Value::I32(1), Value::I32(1)}));
  host_.Open(20);
  EXPECT_TRUE(blocker.Wait());
}

// --- Memory budget -------------------------------------------------------------------

constexpr uint64_t kPage = 65536;

TEST_F(ExecTest, MemoryBudgetDefaultsToHalfThePhysicalMemory) {
  MetricsSnapshot m = runtime_->Metrics();
  EXPECT_EQ(m.memory_budget.limit_bytes, DefaultMemoryBudget());
  EXPECT_GT(m.memory_budget.limit_bytes, 0u);
  EXPECT_EQ(m.memory_budget.used_bytes, 0u);
}

// budget_gate.wasm holds two pages; the budget five: two instances fit, a
// third is refused while calls on the two go on, and a grow past the budget
// answers -1 until another instance is dropped.
TEST_F(ExecTest, MemoryBudgetRefusesInstancesAndGrowthPastItWithoutDisturbingCalls) {
  runtime_->Shutdown(10s);
  StartRuntime(2, {.memory_budget_bytes = 5 * kPage});
  auto bytes = ReadFile(std::string(KEEL_FIXTURE_DIR) + "/budget_gate.wasm");
  ASSERT_TRUE(bytes);
  auto module = runtime_->Compile(*bytes, {.name = "budget_gate"});
  ASSERT_TRUE(module) << module.error().ToString();
  PoolOptions options{.instances = 1, .linker = host_.linker()};
  options.recycle.state = StatePolicy::kKeep;
  auto first = runtime_->CreatePool(*module, options);
  auto second = runtime_->CreatePool(*module, options);
  ASSERT_TRUE(first && second);
  ASSERT_TRUE(Eventually([&] {
    return (*first)->Stats().healthy_instances == 1 && (*second)->Stats().healthy_instances == 1;
  }));
  EXPECT_EQ(runtime_->Metrics().memory_budget.used_bytes, 4 * kPage);
  EXPECT_EQ(runtime_->Metrics().memory_budget.limit_bytes, 5 * kPage);

  // A call in flight on the first pool while a third instance is refused.
  Call held = Submit(**first, "gated_grow", {Value::I32(41), Value::I32(0)});
  ASSERT_TRUE(host_.WaitEntered(41));
  // A slot on each worker: the free one instantiates while the other is
  // held by the call.
  options.instances = 2;
  options.quarantine = {.failures = 1, .initial_backoff = 60s, .max_backoff = 60s};
  auto third = runtime_->CreatePool(*module, options);
  ASSERT_TRUE(third) << third.error().ToString();
  ASSERT_TRUE(Eventually([&] { return (*third)->Stats().quarantined; }));
  EXPECT_THAT((*third)->Stats().quarantine_reason, HasSubstr("resource_exhausted"));
  EXPECT_THAT((*third)->Stats().quarantine_reason,
              HasSubstr("budget of " + std::to_string(5 * kPage) + " bytes"));
  auto refused = (*third)->Submit("size", {});
  EXPECT_FALSE(refused && (*refused).Wait());
  host_.Open(41);
  const CallResult& r = held.Wait();
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->values, std::vector<Value>{Value::I32(2)});
  (*third)->Close();

  // 2 + 2 pages held: a grow by 2 would make 6.
  Call grow = Submit(**first, "grow", {Value::I32(2)});
  ASSERT_TRUE(grow.Wait());
  EXPECT_EQ(grow.Wait()->values, std::vector<Value>{Value::I32(-1)});
  Call size = Submit(**second, "size", {});
  ASSERT_TRUE(size.Wait());
  EXPECT_EQ(size.Wait()->values, std::vector<Value>{Value::I32(2)});
  EXPECT_EQ(runtime_->Metrics().memory_budget.used_bytes, 4 * kPage);

  (*second)->Close();
  ASSERT_TRUE(Eventually([&] { return runtime_->Metrics().memory_budget.used_bytes == 2 * kPage; }));
  Call regrow = Submit(**first, "grow", {Value::I32(2)});
  ASSERT_TRUE(regrow.Wait());
  EXPECT_EQ(regrow.Wait()->values, std::vector<Value>{Value::I32(2)});
  EXPECT_EQ(runtime_->Metrics().memory_budget.used_bytes, 4 * kPage);
}

// --- Invariants under load -----------------------------------------------------------

// Random cancels at random moments and random deadlines over many calls on
// two workers. Checks: every handle resolves exactly once (callbacks count),
// no withdrawn call ever ran, sum rules hold, pools return to full health.
TEST_F(ExecTest, RandomizedStress) {
  constexpr int kCalls = 100000;
  auto pool = MakePool({.instances = 4,
                        .max_queue = 4096,
                        .host_state_factory = [] { return std::make_unique<TestHost::Tracker>(); }});
  std::mt19937 rng(12345);
  std::atomic<int> callbacks{0};
  std::vector<Call> inflight;
  std::vector<int> withdrawn_ids;
  std::vector<int> cancelled_before_start_ids;
  std::mutex ids_mu;
  int submitted = 0;
  int rejected = 0;
  for (int i = 1; i <= kCalls; ++i) {
    int id = i;
    int iters = static_cast<int>(rng() % 4 == 0 ? rng() % 20000 : rng() % 50);
    CallOptions options;
    if (rng() % 3 == 0) options.deadline = Clock::now() + std::chrono::microseconds(rng() % 3000 + 1);
    std::string_view name = rng() % 50 == 0 ? "ran_then_trap" : "work";
    auto call = name == "work" ? pool->Submit(name, {Value::I32(id), Value::I32(iters)}, options)
                               : pool->Submit(name, {Value::I32(id)}, options);
    if (!call) {
      ASSERT_TRUE(call.error().code == ErrorCode::kOverloaded ||
                  call.error().code == ErrorCode::kDeadlineExceeded)
          << call.error().ToString();
      rejected++;
      continue;
    }
    submitted++;
    call->OnComplete([&callbacks, &ids_mu, &cancelled_before_start_ids, id](const CallResult& r) {
      callbacks++;
      if (!r && r.error().code == ErrorCode::kDeadlineExceeded &&
          r.error().message.find("before the call started") != std::string::npos) {
        std::lock_guard<std::mutex> lock(ids_mu);
        cancelled_before_start_ids.push_back(id);
      }
    });
    switch (rng() % 8) {
      case 0: {
        CancelOutcome outcome = call->Cancel();
        if (outcome == CancelOutcome::kWithdrawn) withdrawn_ids.push_back(id);
        break;
      }
      case 1:
        break;  // dropped below: cancels as the handle goes
      default:
        inflight.push_back(std::move(*call));
    }
    if (inflight.size() > 256) {
      size_t k = rng() % inflight.size();
      if (rng() % 2) {
        if (inflight[k].Cancel() == CancelOutcome::kWithdrawn) {
          // Not recorded by id here; counted by metrics below.
        }
      }
      inflight[k].Wait();
      inflight.erase(inflight.begin() + static_cast<long>(k));
    }
  }
  for (auto& c : inflight) c.Wait();
  inflight.clear();
  ASSERT_TRUE(Eventually([&] { return callbacks.load() == submitted; }, 60s))
      << callbacks.load() << " of " << submitted;
  ASSERT_TRUE(Eventually([&] {
    MetricsSnapshot m = runtime_->Metrics();
    return m.running == 0 && m.queued == 0 && pool->Stats().healthy_instances == 4;
  }, 60s));
  for (int id : withdrawn_ids) EXPECT_EQ(host_.Ran(id), 0) << "withdrawn call " << id << " ran";
  {
    std::lock_guard<std::mutex> lock(ids_mu);
    for (int id : cancelled_before_start_ids) EXPECT_EQ(host_.Ran(id), 0) << "expired call " << id << " ran";
  }
  EXPECT_EQ(host_.reentries(), 0) << "an instance was entered while a call on it was in flight";
  EXPECT_EQ(host_.poisoned_reuse(), 0) << "a poisoned instance was called again";
  MetricsSnapshot m = runtime_->Metrics();
  EXPECT_EQ(m.submitted, static_cast<uint64_t>(submitted));
  EXPECT_GT(m.instances.poisoned, 0u);
  // An interrupt that landed on a call other than the one whose deadline
  // passed would end that call kInterrupted before anyone resolved it.
  EXPECT_EQ(m.resolved.errors, 0u);
  ExpectSumRules();
  EXPECT_EQ(m.instances.created - m.instances.poisoned - m.instances.recycled,
            static_cast<uint64_t>(m.instances_live));
  EXPECT_GT(m.resolved.ok, 0u);
  EXPECT_GT(m.resolved.cancelled_queued + m.resolved.detached, 0u);
  // Give the sink time to be emptied before the fixture goes.
  ASSERT_TRUE(Eventually([&] { return runtime_->Metrics().detached_results == SinkSize(); }));
  EXPECT_LE(SinkSize(), m.resolved.detached);
  (void)rejected;
}

}  // namespace
}  // namespace keel::exectest
