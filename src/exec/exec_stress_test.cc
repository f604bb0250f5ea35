// The executor under stress and abuse: dispatch to idle workers, bounded
// queue memory, engine memory released, fairness between pools, start
// functions, operator aborts, shutdown races, hooks and callbacks.
#include <latch>

#include "exec/core.h"
#include "exec/exec_fixture.h"
#include "exec/testing.h"

namespace keel::exectest {
namespace {

using ::testing::HasSubstr;

// A module with one page of memory and an export "f" returning `n`, so
// every module is distinct.
std::vector<uint8_t> ModuleWithMemory(uint32_t n) {
  std::vector<uint8_t> body = {0x00, 0x41};  // no locals; i32.const n
  for (uint32_t v = n;;) {
    uint8_t byte = v & 0x7f;
    v >>= 7;
    bool more = v != 0 || (byte & 0x40) != 0;
    body.push_back(more ? (byte | 0x80) : byte);
    if (!more) break;
  }
  body.push_back(0x0b);
  std::vector<uint8_t> m = {0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
                            0x01, 0x05, 0x01, 0x60, 0x00, 0x01, 0x7f,  // type () -> i32
                            0x03, 0x02, 0x01, 0x00,                    // func 0: type 0
                            0x05, 0x03, 0x01, 0x00, 0x01,              // memory min 1
                            0x07, 0x0e, 0x02, 0x01, 'f',  0x00, 0x00,  // export "f"
                            0x06, 'm',  'e',  'm',  'o',  'r',  'y',  0x02, 0x00,
                            0x0a, static_cast<uint8_t>(body.size() + 2), 0x01,
                            static_cast<uint8_t>(body.size())};
  m.insert(m.end(), body.begin(), body.end());
  return m;
}

// --- Dispatch -------------------------------------------------------------------------

TEST_F(ExecTest, CallsSubmittedTogetherReachEveryIdleWorkerAtOnce) {
  auto pool = MakePool({.instances = 2});
  ASSERT_EQ(runtime_->workers(), 2);
  ASSERT_TRUE(Eventually([&] { return exec::IdleWorkers(*runtime_) == 2; }));
  Call first = Submit(*pool, "gated", {Value::I32(30)});
  Call second = Submit(*pool, "gated", {Value::I32(31)});
  // Both start without waiting for the other call or a timer (a lost
  // wake-up used to leave the second to a 1 s maintenance tick).
  EXPECT_TRUE(host_.WaitEntered(30, 1, 900ms));
  EXPECT_TRUE(host_.WaitEntered(31, 1, 900ms));
  host_.Open(30);
  host_.Open(31);
  EXPECT_TRUE(first.Wait());
  EXPECT_TRUE(second.Wait());
}

// A worker claimed for one call that finds another call of its own first
// hands the first one to an idle worker instead of leaving it behind.
TEST_F(ExecTest, AClaimedWorkerThatRunsAnotherCallFirstPassesTheWakeUpOn) {
  auto pool = MakePool({.instances = 2});
  uint64_t key = 0;
  while (exec::AffinitySlot(*pool, key) != 0) ++key;
  // Asleep, so that the first call wakes (claims) a worker.
  ASSERT_TRUE(Eventually([&] { return exec::IdleWorkers(*runtime_) == 2; }));
  std::latch woken(1), go(1);
  std::atomic<int> claims{0};
  exec::SetTestHook(*runtime_, [&](exec::TestPoint point) {
    if (point != exec::TestPoint::kClaimed || claims++ != 0) return;
    woken.count_down();
    go.wait();
  });
  // The shared call claims slot 0's worker, which is held as it wakes ...
  Call shared = Submit(*pool, "gated", {Value::I32(62)});
  woken.wait();
  // ... until a call bound to slot 0 is queued too; the worker takes that
  // one first (its affinity queue), so the shared one must go elsewhere.
  Call bound = Submit(*pool, "gated", {Value::I32(61)}, {.affinity_key = key});
  go.count_down();
  EXPECT_TRUE(host_.WaitEntered(61));
  EXPECT_TRUE(host_.WaitEntered(62));
  exec::SetTestHook(*runtime_, nullptr);
  host_.Open(61);
  host_.Open(62);
  EXPECT_TRUE(shared.Wait());
  EXPECT_TRUE(bound.Wait());
}

TEST_F(ExecTest, QueueMemoryStaysBoundedWhenAffinityCallsAreDropped) {
#if defined(KEEL_SANITIZE) || defined(KEEL_TSAN)
  constexpr int kCalls = 100000;
#else
  constexpr int kCalls = 1000000;
#endif
  constexpr size_t kMaxQueue = 16;
  auto pool = MakePool({.instances = 1, .max_queue = kMaxQueue});
  Call blocker = Submit(*pool, "gated", {Value::I32(32)});
  ASSERT_TRUE(host_.WaitEntered(32));
  size_t most = 0;
  for (int i = 0; i < kCalls; ++i) {
    auto call = pool->Submit("add", {Value::I32(i), Value::I32(1)}, {.affinity_key = 5});
    ASSERT_TRUE(call) << call.error().ToString();
    if (i % 1024 == 0) most = std::max(most, exec::QueueEntries(*pool));
  }  // each handle is dropped at once: withdrawn
  most = std::max(most, exec::QueueEntries(*pool));
  EXPECT_LE(most, 2 * kMaxQueue + 64);
  EXPECT_EQ(pool->Stats().queued, 0u);
  host_.Open(32);
  EXPECT_TRUE(blocker.Wait());
  EXPECT_EQ(runtime_->Metrics().resolved.cancelled_queued, static_cast<uint64_t>(kCalls));
}

// --- Engine memory ------------------------------------------------------------------------

TEST_F(ExecTest, EngineMemoryOfClosedPoolsIsReleased) {
  constexpr int kCycles = 1000;
  for (int i = 0; i < kCycles; ++i) {
    auto module = runtime_->Compile(ModuleWithMemory(i), {.name = "m" + std::to_string(i)});
    ASSERT_TRUE(module) << i << ": " << module.error().ToString();
    auto pool = runtime_->CreatePool(*module, {.instances = 2});
    ASSERT_TRUE(pool) << pool.error().ToString();
    auto call = (*pool)->Submit("f", {});
    ASSERT_TRUE(call) << call.error().ToString();
    const CallResult& r = call->Wait();
    ASSERT_TRUE(r) << "cycle " << i << ": " << r.error().ToString();
    ASSERT_EQ(r->values[0].i32(), i);
    (*pool)->Close();
  }
  EXPECT_EQ(runtime_->Metrics().instances.instantiation_failures, 0u);
  // One pool stays open: the gauge comes back to its instances.
  auto pool = MakePool({.instances = 2});
  ASSERT_TRUE(Eventually([&] {
    MetricsSnapshot m = runtime_->Metrics();
    return m.engine_memory.live_memories == m.instances_live;
  })) << runtime_->Metrics().engine_memory.live_memories << " memories, "
      << runtime_->Metrics().instances_live << " instances";
  // SpiderMonkey reserves 6 GiB of address space per memory; Wasmtime's
  // pooling allocator reserves its slots once, counted nowhere per memory.
  const uint64_t reserved = runtime_->engine() == EngineKind::kSpiderMonkey ? uint64_t{6} << 30 : 0;
  EXPECT_EQ(runtime_->Metrics().engine_memory.reserved_bytes, 2 * reserved);
  EXPECT_EQ(runtime_->Metrics().engine_memory.committed_bytes, 2 * 65536u);
}

// --- Fairness -------------------------------------------------------------------------------

TEST_F(ExecTest, OnePoolHoldingEveryWorkerDoesNotStarveAnother) {
  auto hog = MakePool({.instances = 2});
  auto other = MakePool({.instances = 2});
  Call held1 = Submit(*hog, "gated", {Value::I32(40)});
  Call held2 = Submit(*hog, "gated", {Value::I32(41)});
  ASSERT_TRUE(host_.WaitEntered(40));
  ASSERT_TRUE(host_.WaitEntered(41));
  // The hog's own extra call waits for the hog's instances: no spare for it.
  Call hog_queued = Submit(*hog, "add", {Value::I32(0), Value::I32(0)});
  Call call = Submit(*other, "add", {Value::I32(2), Value::I32(3)}, {.timeout = 10s});
  const CallResult& r = call.Wait();
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->values[0].i32(), 5);
  EXPECT_EQ(hog_queued.state(), CallState::kQueued);
  MetricsSnapshot m = runtime_->Metrics();
  EXPECT_GE(m.spares.grants, 1u);
  EXPECT_GE(m.spares.workers, 1);
  EXPECT_GE(other->Stats().temporary_instances, 1u);
  EXPECT_EQ(hog->Stats().temporary_instances, 0u);
  host_.Open(40);
  host_.Open(41);
  EXPECT_TRUE(hog_queued.Wait());
}

TEST_F(ExecTest, DetachedSpinnersDoNotStarveAnotherPool) {
  auto hog = MakePool({.instances = 2});
  auto other = MakePool({.instances = 1});
  std::vector<Call> spinners;
  for (int i = 0; i < 2; ++i) spinners.push_back(Submit(*hog, "spin", {}, {.timeout = 60s}));
  ASSERT_TRUE(Eventually([&] { return runtime_->Metrics().running == 2; }));
  for (Call& c : spinners) EXPECT_EQ(c.Cancel(), CancelOutcome::kDetached);
  for (int i = 0; i < 5; ++i) {
    Call call = Submit(*other, "add", {Value::I32(i), Value::I32(i)}, {.timeout = 10s});
    ASSERT_TRUE(call.Wait()) << call.Wait().error().ToString();
  }
  // An operator's abort stops what a cancel only detached.
  for (Call& c : spinners) EXPECT_EQ(c.Abort(), CancelOutcome::kAborted);
  ASSERT_TRUE(Eventually([&] { return runtime_->Metrics().running == 0; }));
  ASSERT_TRUE(Eventually([&] { return hog->Stats().healthy_instances == 2; }));
  MetricsSnapshot m = runtime_->Metrics();
  EXPECT_EQ(m.runs.run_interrupted, 2u);
  EXPECT_EQ(m.aborts, 2u);
  EXPECT_EQ(m.resolved.detached, 2u);  // they had resolved as detached already
}

// A spare that serves one starving pool and then another does not count
// for the first while the second's long call holds it.
TEST_F(ExecTest, TwoStarvingPoolsSharingASpareBothMakeProgress) {
  auto hog = MakePool({.instances = 2});
  auto b = MakePool({.instances = 2});
  auto c = MakePool({.instances = 2});
  Call held1 = Submit(*hog, "gated", {Value::I32(80)});
  Call held2 = Submit(*hog, "gated", {Value::I32(81)});
  ASSERT_TRUE(host_.WaitEntered(80));
  ASSERT_TRUE(host_.WaitEntered(81));
  ASSERT_TRUE(Submit(*b, "add", {Value::I32(1), Value::I32(1)}, {.timeout = 10s}).Wait());
  Call c_held = Submit(*c, "gated", {Value::I32(82)}, {.timeout = 20s});
  ASSERT_TRUE(host_.WaitEntered(82));
  Call b_again = Submit(*b, "add", {Value::I32(2), Value::I32(2)}, {.timeout = 10s});
  const CallResult& r = b_again.Wait();
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->values[0].i32(), 4);
  for (int id : {80, 81, 82}) host_.Open(id);
  EXPECT_TRUE(c_held.Wait());
}

// Short calls of two pools that share the workers are no starvation: no
// spare is started however often one pool's worker runs the other's call.
TEST_F(ExecTest, MixedShortCallsStartNoSpares) {
  runtime_->Shutdown(10s);
  StartRuntime(2, {.fairness = {.starvation_delay = 200ms}});
  auto p = MakePool({.instances = 2});
  auto q = MakePool({.instances = 2});
  auto until = Clock::now() + 1s;
  auto load = [&](Pool& pool) {
    std::vector<Call> window;
    while (Clock::now() < until) {
      for (int i = 0; i < 64; ++i) window.push_back(Submit(pool, "work", {Value::I32(i), Value::I32(2000)}));
      for (Call& call : window) EXPECT_TRUE(call.Wait());
      window.clear();
    }
  };
  std::thread other([&] { load(*q); });
  load(*p);
  other.join();
  EXPECT_EQ(runtime_->Metrics().spares.grants, 0u);
}

// --- Abort ----------------------------------------------------------------------------------

TEST_F(ExecTest, AbortWhileQueuedWithdraws) {
  auto pool = MakePool();
  Call blocker = Submit(*pool, "gated", {Value::I32(42)});
  ASSERT_TRUE(host_.WaitEntered(42));
  Call queued = Submit(*pool, "work", {Value::I32(6001), Value::I32(0)});
  EXPECT_EQ(queued.Abort(), CancelOutcome::kWithdrawn);
  EXPECT_EQ(queued.Wait().error().code, ErrorCode::kCancelled);
  EXPECT_EQ(queued.state(), CallState::kWithdrawn);
  host_.Open(42);
  ASSERT_TRUE(blocker.Wait());
  ASSERT_TRUE(Submit(*pool, "work", {Value::I32(6002), Value::I32(0)}).Wait());
  EXPECT_EQ(host_.Ran(6001), 0);
  EXPECT_EQ(runtime_->Metrics().resolved.aborted, 0u);
}

TEST_F(ExecTest, AbortWhileRunningInterruptsPoisonsAndReplaces) {
  auto pool = MakePool();
  EXPECT_EQ(Submit(*pool, "bump", {}).Wait()->values[0].i32(), 1);
  Call call = Submit(*pool, "gated", {Value::I32(43)});
  ASSERT_TRUE(host_.WaitEntered(43));
  EXPECT_EQ(call.Abort(), CancelOutcome::kAborted);
  ASSERT_TRUE(call.ready());
  EXPECT_EQ(call.Wait().error().code, ErrorCode::kCancelled);
  EXPECT_THAT(call.Wait().error().message, HasSubstr("aborted"));
  EXPECT_EQ(call.Abort(), CancelOutcome::kTooLate);
  ASSERT_TRUE(Eventually([&] { return runtime_->Metrics().instances.replaced == 1; }));
  MetricsSnapshot m = runtime_->Metrics();
  EXPECT_EQ(m.resolved.aborted, 1u);
  EXPECT_EQ(m.instances.poisoned, 1u);
  EXPECT_EQ(m.runs.run_interrupted, 1u);
  EXPECT_EQ(Submit(*pool, "bump", {}).Wait()->values[0].i32(), 1);  // a fresh instance
  ExpectSumRules();
}

// --- Start functions ------------------------------------------------------------------------

TEST_F(ExecTest, CompileRefusesAStartFunctionThatSpinsOrTraps) {
  auto spinning = ReadFile(std::string(KEEL_FIXTURE_DIR) + "/engine_start.wasm");
  ASSERT_TRUE(spinning);
  auto refused = runtime_->Compile(*spinning, {.name = "spins", .start_timeout = 100ms});
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, ErrorCode::kInvalidModule);
  EXPECT_THAT(refused.error().message, HasSubstr("did not finish within 100 ms"));

  auto trapping = ReadFile(std::string(KEEL_FIXTURE_DIR) + "/server_bad_start.wasm");
  ASSERT_TRUE(trapping);
  refused = runtime_->Compile(*trapping, {.name = "traps"});
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, ErrorCode::kInvalidModule);
  EXPECT_THAT(refused.error().message, HasSubstr("trapped"));
  EXPECT_THAT(refused.error().message, HasSubstr("unreachable"));
  EXPECT_EQ(runtime_->Metrics().modules_refused, 2u);
  // Nothing else was disturbed.
  auto pool = MakePool();
  EXPECT_TRUE(Submit(*pool, "add", {Value::I32(1), Value::I32(1)}).Wait());
}

TEST_F(ExecTest, QuarantinedPoolRetriesOnlyWhenACallArrives) {
  runtime_->Shutdown(10s);
  StartRuntime(1);  // one worker: its loop is observable through other calls
  auto helper = MakePool();
  host_.SetStartOk(false);
  PoolOptions options;
  options.instances = 1;
  options.linker = host_.linker();
  options.quarantine = {.failures = 2, .initial_backoff = 30ms, .max_backoff = 30ms};
  auto pool = runtime_->CreatePool(module_, options);
  ASSERT_TRUE(pool);
  ASSERT_TRUE(Eventually([&] { return (*pool)->Stats().quarantined; }));
  ASSERT_TRUE(Eventually([&] { return !(*pool)->Stats().quarantined; }));
  uint64_t failures = runtime_->Metrics().instances.instantiation_failures;
  // The backoff is over, yet nothing tries to instantiate the quarantined
  // module until a call arrives: not while the one worker goes round its
  // loop for ten backoffs' time.
  auto until = Clock::now() + 300ms;
  while (Clock::now() < until) {
    EXPECT_TRUE(Submit(*helper, "add", {Value::I32(1), Value::I32(1)}).Wait());
  }
  EXPECT_EQ(runtime_->Metrics().instances.instantiation_failures, failures);

  host_.SetStartOk(true);
  auto call = (*pool)->Submit("add", {Value::I32(20), Value::I32(22)});
  ASSERT_TRUE(call) << call.error().ToString();
  const CallResult& r = call->Wait();
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->values[0].i32(), 42);
  EXPECT_EQ((*pool)->Stats().healthy_instances, 1u);
}

// --- Shutdown, hooks, callbacks -----------------------------------------------------------

TEST_F(ExecTest, ShutdownRacingADispatchStillInterruptsTheCall) {
  auto pool = MakePool();
  std::latch dequeued(1), interrupted(1);
  exec::SetTestHook(*runtime_, [&](exec::TestPoint point) {
    if (point == exec::TestPoint::kDequeued) {
      dequeued.count_down();
      interrupted.wait();  // shutdown interrupts while this call is in flight
    } else if (point == exec::TestPoint::kInterrupted) {
      interrupted.count_down();
    }
  });
  Call call = Submit(*pool, "spin", {});  // no deadline: only shutdown can stop it
  dequeued.wait();
  auto start = Clock::now();
  runtime_->Shutdown(20ms);
  EXPECT_LT(Clock::now() - start, 10s);  // sanity bound only
  ASSERT_TRUE(call.ready());
  EXPECT_EQ(call.Wait().error().code, ErrorCode::kShuttingDown);
  ExpectSumRules();
}

TEST_F(ExecTest, InterruptHookMayTakeALockTheHostHolds) {
  auto pool = MakePool();
  Call call = Submit(*pool, "held", {Value::I32(44)}, {.timeout = 50ms});
  EXPECT_EQ(call.Wait().error().code, ErrorCode::kDeadlineExceeded);
  ASSERT_TRUE(host_.WaitEntered(44));
  ASSERT_TRUE(Eventually([&] { return runtime_->Metrics().instances.replaced == 1; }));
  // The worker is free again: the host function returned.
  EXPECT_TRUE(Submit(*pool, "add", {Value::I32(1), Value::I32(1)}).Wait());
}

TEST_F(ExecTest, AnInterruptHookThatThrowsDoesNotHoldItsWorker) {
  auto pool = MakePool();
  // The deadline must pass after the host function set its hook (the first
  // thing it does), or the hook runs at once on the worker, not on the
  // waker that counts its exception: 50 ms was too short on a loaded CI
  // machine; no gate can hold back a deadline.
  Call call = Submit(*pool, "throwing_hook", {Value::I32(45)}, {.timeout = 1s});
  EXPECT_EQ(call.Wait().error().code, ErrorCode::kDeadlineExceeded);
  ASSERT_TRUE(Eventually([&] { return runtime_->Metrics().instances.replaced == 1; }));
  EXPECT_TRUE(Submit(*pool, "add", {Value::I32(1), Value::I32(1)}, {.timeout = 10s}).Wait());
  EXPECT_EQ(runtime_->Metrics().callback_exceptions, 1u);
}

TEST_F(ExecTest, ACallbackThatThrowsIsCaughtAndCounted) {
  auto pool = MakePool();
  Call call = Submit(*pool, "add", {Value::I32(1), Value::I32(2)});
  call.OnComplete([](const CallResult&) { throw std::runtime_error("a user's bug"); });
  std::atomic<bool> later{false};
  call.OnComplete([&](const CallResult&) { later = true; });
  ASSERT_TRUE(Eventually([&] { return later.load(); }));
  EXPECT_EQ(runtime_->Metrics().callback_exceptions, 1u);
  EXPECT_TRUE(Submit(*pool, "add", {Value::I32(1), Value::I32(1)}).Wait());
}

TEST_F(ExecTest, ARuntimeMayBeDestroyedFromItsOwnCallback) {
  auto pool = MakePool();
  std::atomic<bool> done{false};
  Call call = Submit(*pool, "add", {Value::I32(1), Value::I32(2)});
  call.OnComplete([&](const CallResult&) {
    runtime_.reset();  // shuts down and joins every thread but this one
    done = true;
  });
  ASSERT_TRUE(Eventually([&] { return done.load(); }));
  EXPECT_TRUE(call.Wait());
  auto after = pool->Submit("add", {Value::I32(1), Value::I32(1)});
  ASSERT_FALSE(after);
  EXPECT_EQ(after.error().code, ErrorCode::kShuttingDown);
}

TEST_F(ExecTest, TwoCallbacksMayShutTheRuntimeDownAtOnce) {
  runtime_->Shutdown(10s);
  StartRuntime(2, {.callback_threads = 2});
  auto pool = MakePool({.instances = 2});
  std::latch both_in_callbacks(2);
  std::atomic<int> done{0};
  std::vector<Call> calls;
  for (int i = 0; i < 2; ++i) {
    calls.push_back(Submit(*pool, "add", {Value::I32(i), Value::I32(1)}));
    calls.back().OnComplete([&](const CallResult&) {
      both_in_callbacks.arrive_and_wait();
      runtime_->Shutdown(1s);
      done++;
    });
  }
  ASSERT_TRUE(Eventually([&] { return done.load() == 2; }));
  for (Call& call : calls) EXPECT_TRUE(call.Wait());
}

TEST_F(ExecTest, AfterShutdownOnCompleteRunsOnTheCallingThread) {
  auto pool = MakePool();
  Call call = Submit(*pool, "add", {Value::I32(1), Value::I32(2)});
  ASSERT_TRUE(call.Wait());
  runtime_->Shutdown(1s);
  std::thread::id ran_on;
  call.OnComplete([&](const CallResult& r) {
    EXPECT_TRUE(r);
    ran_on = std::this_thread::get_id();
  });
  EXPECT_EQ(ran_on, std::this_thread::get_id());
}

}  // namespace
}  // namespace keel::exectest
