#include "engine/dirty_pages.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace keel::engine {
namespace {

using ::testing::HasSubstr;

// An anonymous mapping standing for a linear memory, with a guard page after
// it (as engines reserve address space beyond the accessible part).
class Mapping {
 public:
  explicit Mapping(size_t size) : size_(size) {
    void* map = mmap(nullptr, size + kHostPageSize, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    EXPECT_NE(map, MAP_FAILED);
    data_ = static_cast<uint8_t*>(map);
    EXPECT_EQ(mprotect(data_, size, PROT_READ | PROT_WRITE), 0);
  }
  ~Mapping() { munmap(data_, size_ + kHostPageSize); }
  std::span<uint8_t> span() { return {data_, size_}; }
  uint8_t* data() { return data_; }

 private:
  size_t size_;
  uint8_t* data_;
};

constexpr size_t kSize = 2 << 20;

// Fills some pages (and leaves others zero, as a fresh memory's heap is).
void FillPattern(std::span<uint8_t> memory, uint32_t seed) {
  std::mt19937 rng(seed);
  for (size_t page = 0; page < memory.size() / kHostPageSize; page += 3) {
    for (size_t i = 0; i < kHostPageSize; i += 64) memory[page * kHostPageSize + i] = rng();
  }
}

class DirtyPagesTest : public ::testing::TestWithParam<bool> {
 protected:
  bool track() const { return GetParam(); }
  // Whether this run really tracks; the whole-memory comparison otherwise.
  bool tracked() const { return track() && WriteTrackingAvailable(); }
  std::unique_ptr<MemorySnapshot> Take(std::span<uint8_t> memory) {
    auto snapshot = MemorySnapshot::Take(memory, {.track_writes = track()});
    EXPECT_TRUE(snapshot) << snapshot.error().ToString();
    if (!snapshot) return nullptr;
    EXPECT_EQ((*snapshot)->tracking(), tracked()) << (*snapshot)->tracking_error();
    return std::move(*snapshot);
  }
};

TEST(DirtyPagesProbe, TrackingWorksOnThisMachine) {
  // The development machine runs Linux 6.18 as root: tracking must work
  // here. Elsewhere the reason is printed and the fallback is tested.
  std::string why;
  bool available = WriteTrackingAvailable(&why);
  if (!available) GTEST_SKIP() << "write tracking unavailable: " << why;
  EXPECT_TRUE(why.empty());
}

TEST_P(DirtyPagesTest, RestoresExactlyThePagesWritten) {
  Mapping memory(kSize);
  FillPattern(memory.span(), 1);
  std::vector<uint8_t> expected(memory.data(), memory.data() + kSize);
  auto snapshot = Take(memory.span());
  ASSERT_TRUE(snapshot);

  memory.data()[5 * kHostPageSize + 17] ^= 0xff;  // a page the pattern filled
  memory.data()[7 * kHostPageSize] = 9;             // a page that was zero
  memory.data()[kSize - 1] = 1;                     // the last byte
  auto stats = snapshot->Restore(memory.span());
  ASSERT_TRUE(stats) << stats.error().ToString();
  EXPECT_EQ(stats->tracked, tracked());
  EXPECT_EQ(stats->pages_copied, 3u);
  EXPECT_EQ(std::memcmp(memory.data(), expected.data(), kSize), 0);

  auto again = snapshot->Restore(memory.span());
  ASSERT_TRUE(again) << again.error().ToString();
  EXPECT_EQ(again->pages_copied, 0u) << "copying back must not count as a write";

  memory.data()[5 * kHostPageSize] = 3;
  again = snapshot->Restore(memory.span());
  ASSERT_TRUE(again);
  EXPECT_EQ(again->pages_copied, 1u) << "a page restored before is tracked again";
  EXPECT_EQ(std::memcmp(memory.data(), expected.data(), kSize), 0);
}

TEST_P(DirtyPagesTest, RandomWritePatternsRestoreByteForByte) {
  Mapping memory(kSize);
  FillPattern(memory.span(), 2);
  std::vector<uint8_t> expected(memory.data(), memory.data() + kSize);
  auto snapshot = Take(memory.span());
  ASSERT_TRUE(snapshot);
  std::mt19937 rng(42);
  for (int round = 0; round < 200; ++round) {
    // A few small writes, or long runs, or every other page (more runs than
    // one PAGEMAP_SCAN reports at once).
    std::set<size_t> pages;
    const int shape = round % 3;
    const int writes = shape == 0 ? 1 + rng() % 8 : shape == 1 ? 1 + rng() % 4 : 1;
    for (int w = 0; w < writes; ++w) {
      size_t at = rng() % kSize;
      size_t len = shape == 0 ? 1 + rng() % 16 : std::min<size_t>(kSize - at, rng() % (kSize / 4));
      if (shape == 2) {
        at = (rng() % 2) * kHostPageSize;
        len = 0;
        for (size_t p = at; p < kSize; p += 2 * kHostPageSize) {
          memory.data()[p + rng() % kHostPageSize] ^= 1 + rng() % 255;
          pages.insert(p / kHostPageSize);
        }
      }
      for (size_t i = 0; i < len; ++i) memory.data()[at + i] = static_cast<uint8_t>(rng() | 1);
      for (size_t p = at / kHostPageSize; len > 0 && p <= (at + len - 1) / kHostPageSize; ++p) {
        pages.insert(p);
      }
    }
    auto stats = snapshot->Restore(memory.span());
    ASSERT_TRUE(stats) << stats.error().ToString();
    ASSERT_EQ(std::memcmp(memory.data(), expected.data(), kSize), 0) << "round " << round;
    if (tracked()) {
      EXPECT_EQ(stats->pages_copied, pages.size()) << "round " << round;
    } else {
      // Comparison misses pages written with their old bytes: never more.
      EXPECT_LE(stats->pages_copied, pages.size()) << "round " << round;
    }
  }
}

TEST_P(DirtyPagesTest, WritesByTheKernelAreTracked) {
  Mapping memory(kSize);
  auto snapshot = Take(memory.span());
  ASSERT_TRUE(snapshot);
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  ASSERT_EQ(write(fds[1], "guest", 5), 5);
  ASSERT_EQ(read(fds[0], memory.data() + 300 * kHostPageSize, 5), 5);
  close(fds[0]);
  close(fds[1]);
  auto stats = snapshot->Restore(memory.span());
  ASSERT_TRUE(stats) << stats.error().ToString();
  EXPECT_EQ(stats->pages_copied, 1u);
  EXPECT_EQ(memory.data()[300 * kHostPageSize], 0);
}

// A restore asks the kernel only when a protected page may have been
// written: a fault of the restoring thread, a use from another thread, or
// foreign code. Each case restores byte for byte.
class SkippedScanTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!WritesCountAsFaults()) GTEST_SKIP() << "writes do not count as faults here";
    FillPattern(memory_.span(), 5);
    expected_.assign(memory_.data(), memory_.data() + kSize);
    auto snapshot = MemorySnapshot::Take(memory_.span(), {});
    ASSERT_TRUE(snapshot && (*snapshot)->tracking());
    snapshot_ = std::move(*snapshot);
    page(3)[1] ^= 0x10;  // the first restore always scans; page 3 stays unprotected
    ExpectRestored(/*scanned=*/true, 1);
  }
  uint8_t* page(size_t n) { return memory_.data() + n * kHostPageSize; }
  // `scanned`: whether the restore must have asked the kernel; nullopt: it
  // may have.
  void ExpectRestored(std::optional<bool> scanned, uint64_t copied) {
    auto stats = snapshot_->Restore(memory_.span());
    ASSERT_TRUE(stats) << stats.error().ToString();
    // Under the sanitizers their own allocations fault between restores:
    // a restore may scan when it need not (never the other way round).
#ifdef KEEL_SANITIZE
    if (scanned == false) scanned.reset();
#endif
    if (scanned) {
      EXPECT_EQ(stats->scanned, *scanned);
    }
    EXPECT_EQ(stats->pages_copied, copied);
    EXPECT_EQ(std::memcmp(memory_.data(), expected_.data(), kSize), 0);
  }

  Mapping memory_{kSize};
  std::vector<uint8_t> expected_;
  std::unique_ptr<MemorySnapshot> snapshot_;
};

TEST_F(SkippedScanTest, UnprotectedPagesAloneAreComparedWithoutAScan) {
  page(3)[9] ^= 0x20;
  snapshot_->NoteAccess();  // same thread: changes nothing
  ExpectRestored(/*scanned=*/false, 1);
  ExpectRestored(/*scanned=*/false, 0);
}

TEST_F(SkippedScanTest, AWriteToAProtectedPageFaultsAndForcesAScan) {
  page(3)[9] ^= 0x20;
  page(40)[0] = 7;  // protected, zero
  page(6)[5] ^= 1;  // protected, present
  ExpectRestored(/*scanned=*/true, 3);
  // That restore's first read of page 40's copy (a zero page never
  // touched) was a fault too: the next restore may scan once more.
  ExpectRestored(std::nullopt, 0);
  ExpectRestored(/*scanned=*/false, 0);
}

TEST_F(SkippedScanTest, TheKernelWritingAProtectedPageForcesAScan) {
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  ASSERT_EQ(write(fds[1], "guestguest", 10), 10);
  ASSERT_EQ(read(fds[0], page(300), 5), 5);  // protected: faults in the kernel
  ExpectRestored(/*scanned=*/true, 1);
  ASSERT_EQ(read(fds[0], page(3), 5), 5);  // unprotected: no fault, still compared
  ExpectRestored(/*scanned=*/false, 1);
  close(fds[0]);
  close(fds[1]);
}

TEST_F(SkippedScanTest, AccessFromAnotherThreadForcesAScan) {
  std::thread other([&] {
    snapshot_->NoteAccess();
    page(50)[0] = 1;  // its fault is not the restoring thread's
  });
  other.join();
  ExpectRestored(/*scanned=*/true, 1);
}

TEST_F(SkippedScanTest, ForeignWritesForceAScan) {
  snapshot_->NoteForeignWrites();
  ExpectRestored(/*scanned=*/true, 0);
}

TEST_P(DirtyPagesTest, RefusesARangeThatGrewOrMovedAndTouchesNothing) {
  Mapping memory(kSize);
  auto snapshot = Take(memory.span().first(kSize / 2));
  ASSERT_TRUE(snapshot);
  memory.data()[0] = 7;
  auto grew = snapshot->Restore(memory.span());
  ASSERT_FALSE(grew);
  EXPECT_EQ(grew.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_THAT(grew.error().message, HasSubstr("grew from 1048576 to 2097152 bytes"));
  auto moved = snapshot->Restore(memory.span().subspan(kHostPageSize, kSize / 2));
  ASSERT_FALSE(moved);
  EXPECT_THAT(moved.error().message, HasSubstr("moved"));
  EXPECT_EQ(memory.data()[0], 7) << "a refused restore must not write";
}

TEST_P(DirtyPagesTest, SnapshotsOfSeparateRangesAreIndependent) {
  Mapping a(kSize);
  Mapping b(kSize);
  auto snap_a = Take(a.span());
  auto snap_b = Take(b.span());
  ASSERT_TRUE(snap_a && snap_b);
  a.data()[0] = 1;
  b.data()[kHostPageSize] = 2;
  b.data()[2 * kHostPageSize] = 2;
  auto stats_a = snap_a->Restore(a.span());
  ASSERT_TRUE(stats_a);
  EXPECT_EQ(stats_a->pages_copied, 1u);
  auto stats_b = snap_b->Restore(b.span());
  ASSERT_TRUE(stats_b);
  EXPECT_EQ(stats_b->pages_copied, 2u);
  EXPECT_EQ(b.data()[kHostPageSize], 0);
}

TEST_P(DirtyPagesTest, EmptyMemory) {
  auto snapshot = MemorySnapshot::Take({}, {.track_writes = track()});
  ASSERT_TRUE(snapshot);
  auto stats = (*snapshot)->Restore({});
  ASSERT_TRUE(stats);
  EXPECT_EQ(stats->pages_copied, 0u);
}

INSTANTIATE_TEST_SUITE_P(Modes, DirtyPagesTest, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "Tracked" : "Compared"; });

TEST(DirtyPages, ARangeNoLongerTrackedIsAnErrorNotACopy) {
  if (!WriteTrackingAvailable()) GTEST_SKIP() << "write tracking unavailable";
  Mapping memory(kSize);
  auto snapshot = MemorySnapshot::Take(memory.span(), {});
  ASSERT_TRUE(snapshot);
  ASSERT_TRUE((*snapshot)->tracking());
  // Someone else's mapping now sits at the same address with the same
  // length: the registration went with the old one.
  void* replaced = mmap(memory.data(), kSize, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
  ASSERT_EQ(replaced, memory.data());
  memory.data()[0] = 5;
  auto stats = (*snapshot)->Restore(memory.span());
  ASSERT_FALSE(stats);
  EXPECT_EQ(stats.error().code, ErrorCode::kFailedPrecondition);
  EXPECT_THAT(stats.error().message, HasSubstr("PAGEMAP_SCAN"));
  EXPECT_EQ(memory.data()[0], 5);
}

TEST(DirtyPages, MisalignedRangeIsRefused) {
  Mapping memory(kSize);
  auto snapshot = MemorySnapshot::Take(memory.span().subspan(8, kHostPageSize), {});
  ASSERT_FALSE(snapshot);
  EXPECT_EQ(snapshot.error().code, ErrorCode::kInvalidArgument);
  snapshot = MemorySnapshot::Take(memory.span().first(100), {});
  ASSERT_FALSE(snapshot);
}

TEST(DirtyPages, TurnedOffSaysSo) {
  Mapping memory(kSize);
  auto snapshot = MemorySnapshot::Take(memory.span(), {.track_writes = false});
  ASSERT_TRUE(snapshot);
  EXPECT_FALSE((*snapshot)->tracking());
  EXPECT_EQ((*snapshot)->tracking_error(), "write tracking turned off");
}

// Whether the kernel has the mapping holding `address` registered for
// userfaultfd write protection ("uw" among its VmFlags in smaps).
bool RegisteredForWriteProtect(const void* address) {
  std::ifstream smaps("/proc/self/smaps");
  const auto at = reinterpret_cast<uintptr_t>(address);
  bool inside = false;
  for (std::string line; std::getline(smaps, line);) {
    unsigned long begin = 0;
    unsigned long end = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &begin, &end) == 2) {
      inside = begin <= at && at < end;
    } else if (inside && line.starts_with("VmFlags:")) {
      return line.find(" uw") != std::string::npos;
    }
  }
  return false;
}

// Whether the page at `address` is write-protected through userfaultfd
// (bit 57 of its /proc/self/pagemap entry).
bool WriteProtected(const void* address) {
  int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  uint64_t entry = 0;
  const off_t at = reinterpret_cast<uintptr_t>(address) / kHostPageSize * sizeof entry;
  EXPECT_EQ(pread(fd, &entry, sizeof entry, at), static_cast<ssize_t>(sizeof entry))
      << "reading /proc/self/pagemap";
  close(fd);
  return (entry >> 57) & 1;
}

// A restore leaves the pages it found written unprotected (no fault at the
// next call's write, no TLB flush), compares them at every restore after,
// and protects everything again once too many of them were not written.
TEST(DirtyPages, WrittenPagesStayUnprotectedAndAreStillRestored) {
  if (!WriteTrackingAvailable()) GTEST_SKIP() << "write tracking unavailable";
  Mapping memory(kSize);
  FillPattern(memory.span(), 4);
  std::vector<uint8_t> expected(memory.data(), memory.data() + kSize);
  auto snapshot = MemorySnapshot::Take(memory.span(), {});
  ASSERT_TRUE(snapshot && (*snapshot)->tracking());
  uint8_t* a = memory.data() + 3 * kHostPageSize;
  uint8_t* b = memory.data() + 10 * kHostPageSize;
  ASSERT_TRUE(WriteProtected(a));

  a[1] ^= 0x5a;
  auto restored = (*snapshot)->Restore(memory.span());
  ASSERT_TRUE(restored) << restored.error().ToString();
  EXPECT_EQ(restored->pages_copied, 1u);
  EXPECT_FALSE(WriteProtected(a)) << "a page written once stays unprotected";

  b[7] = 1;  // a is left alone this time: compared, equal, not copied
  restored = (*snapshot)->Restore(memory.span());
  ASSERT_TRUE(restored) << restored.error().ToString();
  EXPECT_EQ(restored->pages_copied, 1u);
  a[2] ^= 0x77;  // written again, without a fault: still restored
  restored = (*snapshot)->Restore(memory.span());
  ASSERT_TRUE(restored) << restored.error().ToString();
  EXPECT_EQ(restored->pages_copied, 1u);
  EXPECT_EQ(std::memcmp(memory.data(), expected.data(), kSize), 0);

  // Many pages written at every call stay unprotected, however many.
  const size_t many = MemorySnapshot::kMaxStalePages + 1;
  for (int round = 0; round < 2; ++round) {
    for (size_t page = 100; page < 100 + many; ++page) memory.data()[page * kHostPageSize] ^= 1;
    restored = (*snapshot)->Restore(memory.span());
    ASSERT_TRUE(restored) << restored.error().ToString();
    EXPECT_EQ(restored->pages_copied, many);
    EXPECT_EQ(std::memcmp(memory.data(), expected.data(), kSize), 0);
    EXPECT_FALSE(WriteProtected(memory.data() + 100 * kHostPageSize));
  }
  // Once that many were compared for nothing, all are protected again.
  restored = (*snapshot)->Restore(memory.span());
  ASSERT_TRUE(restored) << restored.error().ToString();
  EXPECT_EQ(restored->pages_copied, 0u);
  EXPECT_TRUE(WriteProtected(a)) << "too many unchanged unprotected pages: all protected again";
  EXPECT_TRUE(WriteProtected(memory.data() + 100 * kHostPageSize));
  a[3] ^= 1;
  restored = (*snapshot)->Restore(memory.span());
  ASSERT_TRUE(restored) << restored.error().ToString();
  EXPECT_EQ(restored->pages_copied, 1u);
  EXPECT_EQ(std::memcmp(memory.data(), expected.data(), kSize), 0);
}

// What Wasmtime's pooling allocator needs: the range handed back untracked
// for the next memory mapped there, which tracks it afresh.
TEST(DirtyPages, StopTrackingHandsTheRangeBackUnregistered) {
  if (!WriteTrackingAvailable()) GTEST_SKIP() << "write tracking unavailable";
  Mapping memory(kSize);
  FillPattern(memory.span(), 3);
  auto first = MemorySnapshot::Take(memory.span(), {});
  ASSERT_TRUE(first && (*first)->tracking());
  ASSERT_TRUE(RegisteredForWriteProtect(memory.data()));
  // A memory that moved: the old range may be someone else's.
  (*first)->StopTracking({memory.data() + kHostPageSize, kSize - kHostPageSize});
  EXPECT_TRUE((*first)->tracking());
  (*first)->StopTracking(memory.span());
  EXPECT_FALSE((*first)->tracking());
  EXPECT_FALSE(RegisteredForWriteProtect(memory.data()));
  memory.data()[3 * kHostPageSize] ^= 1;
  auto restored = (*first)->Restore(memory.span());
  ASSERT_TRUE(restored) << restored.error().ToString();
  EXPECT_FALSE(restored->tracked);
  EXPECT_EQ(restored->pages_copied, 1u);
  first->reset();

  auto second = MemorySnapshot::Take(memory.span(), {});
  ASSERT_TRUE(second && (*second)->tracking());
  memory.data()[9 * kHostPageSize] = 1;
  restored = (*second)->Restore(memory.span());
  ASSERT_TRUE(restored) << restored.error().ToString();
  EXPECT_TRUE(restored->tracked);
  EXPECT_EQ(restored->pages_copied, 1u);
}

}  // namespace
}  // namespace keel::engine
