// Pool ownership and fire-and-forget calls (Call::Detach), through the
// public API.
#include <condition_variable>
#include <mutex>
#include <optional>
#include <type_traits>

#include "public_fixture.h"

namespace keel::publictest {
namespace {

static_assert(!std::is_copy_constructible_v<Pool>, "one owner: shared_ptr<Pool>");
static_assert(!std::is_move_constructible_v<Pool>);

TEST_F(PublicTest, DroppingTheLastPoolPointerClosesThePool) {
  auto pool = MakePool();
  Call running = Submit(*pool, "gated", {Value::I32(1)});
  gates_.AwaitEntered(1);
  Call queued = Submit(*pool, "add", {Value::I32(1), Value::I32(2)});
  std::weak_ptr<Pool> weak = pool;
  pool.reset();
  EXPECT_TRUE(weak.expired());

  // Queued: cancelled by the close, never run.
  ASSERT_FALSE(queued.Wait());
  EXPECT_EQ(queued.Wait().error().code, ErrorCode::kCancelled);
  EXPECT_EQ(runtime_->Metrics().resolved.cancelled_queued, 1u);
  // Running: finishes with its own result.
  gates_.Release(1);
  EXPECT_EQ(I32(running.Wait()), 1);
}

TEST_F(PublicTest, APoolLivesWhileAnyPointerToItDoes) {
  auto pool = MakePool();
  std::shared_ptr<Pool> other = pool;
  pool.reset();
  Call call = Submit(*other, "add", {Value::I32(2), Value::I32(3)});
  EXPECT_EQ(I32(call.Wait()), 5);
}

TEST_F(PublicTest, ADetachedCallRunsToItsEndAndItsResultReachesTheSink) {
  auto pool = MakePool();
  Call call = Submit(*pool, "gated", {Value::I32(7)});
  CallId id = call.id();
  gates_.AwaitEntered(7);
  call.Detach();
  EXPECT_FALSE(call.valid());
  gates_.Release(7);
  EXPECT_EQ(I32(sink_.Await(id)), 7);
  MetricsSnapshot m = runtime_->Metrics();
  EXPECT_EQ(m.resolved.ok, 1u) << "a detached call is not a cancelled one";
  EXPECT_EQ(m.resolved.detached, 0u);
  EXPECT_EQ(m.detached_results, 1u);
}

TEST_F(PublicTest, ADetachedQueuedCallIsNotWithdrawn) {
  auto pool = MakePool();
  Call holder = Submit(*pool, "gated", {Value::I32(1)});
  gates_.AwaitEntered(1);
  Call queued = Submit(*pool, "add", {Value::I32(20), Value::I32(22)});
  CallId id = queued.id();
  queued.Detach();
  gates_.Release(1);
  EXPECT_EQ(I32(sink_.Await(id)), 42);
  EXPECT_EQ(I32(holder.Wait()), 1);
}

TEST_F(PublicTest, ADetachedCallWithACallbackGivesItTheResultNotTheSink) {
  auto pool = MakePool();
  Call call = Submit(*pool, "gated", {Value::I32(3)});
  std::mutex mu;
  std::condition_variable cv;
  std::optional<CallResult> seen;
  call.OnComplete([&](const CallResult& r) {
    std::lock_guard<std::mutex> lock(mu);
    seen = r;
    cv.notify_all();
  });
  gates_.AwaitEntered(3);
  call.Detach();
  gates_.Release(3);
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return seen.has_value(); });
  }
  EXPECT_EQ(I32(*seen), 3);
  // Only one result is delivered, and it was the callback's.
  FlushCallbacks(*pool);
  EXPECT_EQ(sink_.size(), 0u);
  EXPECT_EQ(runtime_->Metrics().detached_results, 0u);
}

TEST_F(PublicTest, ADetachedCallStillMeetsItsDeadline) {
  auto pool = MakePool();
  auto call = pool->Submit("spin", {}, {.timeout = 50ms});
  ASSERT_TRUE(call);
  CallId id = call->id();
  call->Detach();
  CallResult result = sink_.Await(id);
  ASSERT_FALSE(result);
  EXPECT_EQ(result.error().code, ErrorCode::kDeadlineExceeded);
}

TEST_F(PublicTest, DetachingAResolvedCallOnlyReleasesTheHandle) {
  auto pool = MakePool();
  Call call = Submit(*pool, "add", {Value::I32(1), Value::I32(2)});
  ASSERT_EQ(I32(call.Wait()), 3);
  call.Detach();
  EXPECT_FALSE(call.valid());
  FlushCallbacks(*pool);
  EXPECT_EQ(sink_.size(), 0u);
}

}  // namespace
}  // namespace keel::publictest
