#include "base/mutex.h"

#include <gtest/gtest.h>

#include <thread>

namespace keel {
namespace {

struct Box {
  Mutex mu;
  CondVar cv;
  int value GUARDED_BY(mu) = 0;
};

TEST(MutexTest, WaitWakesOnSignalWithTheLockHeld) {
  Box box;
  std::thread setter([&] {
    MutexLock lock(box.mu);
    box.value = 7;
    box.cv.SignalAll();
  });
  {
    MutexLock lock(box.mu);
    while (box.value == 0) box.cv.Wait(box.mu);
    EXPECT_EQ(box.value, 7);
  }
  setter.join();
}

TEST(MutexTest, WaitUntilReturnsFalseAtTheDeadline) {
  Box box;
  MutexLock lock(box.mu);
  EXPECT_FALSE(box.cv.WaitFor(box.mu, std::chrono::milliseconds(1)));
  box.value = 1;  // still held after the timed-out wait
  EXPECT_EQ(box.value, 1);
}

TEST(MutexTest, ScopedLockCanReleaseAndRetake) {
  Box box;
  MutexLock lock(box.mu);
  lock.Unlock();
  if (box.mu.TryLock()) {
    box.mu.Unlock();
  } else {
    ADD_FAILURE() << "the released lock is still held";
  }
  lock.Lock();
  box.value = 2;
  EXPECT_EQ(box.value, 2);
}

}  // namespace
}  // namespace keel
