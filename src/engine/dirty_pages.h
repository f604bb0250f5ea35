// A copy of a linear memory and the means to bring the memory back to it,
// copying only the pages written since (instance resets, DESIGN.md
// "Isolation: every call from a snapshot"). Engine-independent: it sees a
// range of bytes, which the engine re-reads before every restore.
//
// Written pages are found with userfaultfd write protection in async mode
// (the kernel resolves each first write itself and marks the page; no
// thread, no signal) and read with the PAGEMAP_SCAN ioctl on the range
// alone (Linux 6.7+). A restore leaves the pages it found written
// unprotected while they keep being written (see kMaxStalePages), so that
// the next restore finds them again and compares them. The soft-dirty bits
// of /proc/self/pagemap are not used: clearing them (clear_refs) is
// process-wide, so one instance's reset would wipe every other instance's
// record. Where tracking is unavailable
// (older kernel, userfaultfd refused) or not wanted, a restore compares the
// whole memory with the copy page by page and copies back the pages that
// differ.
#ifndef KEEL_ENGINE_DIRTY_PAGES_H_
#define KEEL_ENGINE_DIRTY_PAGES_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "keel/status.h"

namespace keel::engine {

inline constexpr size_t kHostPageSize = 4096;

// Whether this process can track written pages; probed once (userfaultfd
// with write-protect-async, PAGEMAP_SCAN on a scratch page). When not,
// `why_not` (if given) says what failed.
bool WriteTrackingAvailable(std::string* why_not = nullptr);

// Whether a write to a protected page counts as a page fault of the
// writing thread here (probed with WriteTrackingAvailable): the condition
// for a restore to skip the scan (MemorySnapshot::NoteAccess).
bool WritesCountAsFaults();

struct RestoreStats {
  // The written pages were known from tracking; false: found by comparing
  // the whole memory with the copy.
  bool tracked = false;
  // Tracked, and the kernel was asked which pages were written; false when
  // no write could have reached a protected page (see NoteAccess).
  bool scanned = false;
  uint64_t pages_copied = 0;  // host pages that differed from the copy, written back
};

// One per memory range: two snapshots of the same range would re-arm each
// other's tracking. Used on one thread at a time.
class MemorySnapshot {
 public:
  struct Options {
    // Track written pages where the kernel allows; false forces the
    // whole-memory comparison (tests and benchmarks of the fallback).
    bool track_writes = true;
  };

  // Copies `memory` (base and length multiples of kHostPageSize) and starts
  // tracking writes to it. Failing to track is not an error: the snapshot
  // then compares (see tracking_error()). kInvalidArgument for a misaligned
  // range, kResourceExhausted when the copy cannot be allocated.
  [[nodiscard]] static Result<std::unique_ptr<MemorySnapshot>> Take(std::span<uint8_t> memory,
                                                                    const Options& options);
  ~MemorySnapshot();
  MemorySnapshot(const MemorySnapshot&) = delete;
  MemorySnapshot& operator=(const MemorySnapshot&) = delete;

  // A restore leaves the pages it found written unprotected: a call that
  // writes the same pages each time (its stack, its argument buffer) then
  // costs no fault, and its restore no TLB flush. It protects them all again
  // once more than this many of them (256 KiB) were found unchanged.
  static constexpr uint64_t kMaxStalePages = 64;

  // Brings `memory` back to the copy. `memory` is the range as the engine
  // reports it now: when its base or length differ from the snapshot's (the
  // memory grew, or moved and the old range may belong to someone else),
  // nothing is touched and kFailedPrecondition says so. A tracking failure
  // is kFailedPrecondition too, possibly after some pages were copied back:
  // either way the memory must be given up, not used.
  [[nodiscard]] Result<RestoreStats> Restore(std::span<uint8_t> memory);

  // Ends the tracking of the range before the memory is given up, so that
  // whatever the engine maps there next starts untracked: for engines that
  // keep the mapping and hand it to another memory (Wasmtime's pooling
  // allocator). `memory` is the range as the engine reports it now; when
  // it no longer starts at the snapshot's base (moved: the old range may be
  // someone else's), nothing is touched. Later restores compare.
  void StopTracking(std::span<uint8_t> memory);

  // Writes the next restore must look for in the kernel's record. A
  // restore skips asking the kernel (a page-table walk over the whole
  // range) when no page it protected can have been written since the last
  // restore: the first write to one faults, and the restoring thread has
  // taken no page fault since, while nothing but code on that thread wrote
  // the memory. The engine says when that may not hold:
  // NoteAccess() when the memory is about to be used or written from the
  // current thread (a call, or keel writing arguments), which forces a
  // look if that thread is not the one that restored last;
  // NoteForeignWrites() when code keel does not control ran with access to
  // the memory (a host function may have had it written by another thread
  // before it returned; nothing may write it after: keel/host.h).
  void NoteAccess() {
    if (ThisThread() != restored_on_) must_scan_ = true;
  }
  void NoteForeignWrites() { must_scan_ = true; }

  bool tracking() const { return tracking_; }
  // Why writes are not tracked; empty while they are.
  const std::string& tracking_error() const { return tracking_error_; }
  size_t size() const { return size_; }

 private:
  MemorySnapshot(uint8_t* base, size_t size, uint8_t* copy)
      : base_(base), size_(size), copy_(copy) {}
  // A token for the calling thread (no system call).
  static uint64_t ThisThread();
  Result<uint64_t> RestoreTracked(bool* scanned);
  // Replaces unprotected_ with the runs of pages the kernel reports written
  // since they were last protected.
  Result<void> ScanWritten();
  uint64_t RestoreByComparison();
  // Copies the page at offset `at` back when it differs from the copy.
  bool CopyBackIfChanged(size_t at);

  uint8_t* base_;
  size_t size_;
  uint8_t* copy_;  // mmap'd; pages that were zero are left untouched (shared zero page)
  bool tracking_ = false;
  std::string tracking_error_;
  // Offsets [first, second) of the pages left unprotected by the last
  // restore: all the pages that can differ from the copy while no protected
  // page was written.
  std::vector<std::pair<size_t, size_t>> unprotected_;
  uint64_t restored_on_ = 0;  // the thread of the last restore (ThisThread)
  uint64_t faults_ = 0;       // its page faults after that restore's scan
  bool must_scan_ = true;
};

}  // namespace keel::engine

#endif  // KEEL_ENGINE_DIRTY_PAGES_H_
