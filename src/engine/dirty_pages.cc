#include "engine/dirty_pages.h"

#include <fcntl.h>
#include <linux/perf_event.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <functional>

namespace keel::engine {
namespace {

// The Linux 6.7 ABI, absent from older kernel headers (Debian bookworm's
// are 6.1): userfaultfd's async write protection and PAGEMAP_SCAN.
constexpr uint64_t kUffdFeatureWpUnpopulated = uint64_t{1} << 13;
constexpr uint64_t kUffdFeatureWpAsync = uint64_t{1} << 15;

struct PageRegion {
  uint64_t start;
  uint64_t end;
  uint64_t categories;
};

struct PmScanArg {
  uint64_t size;
  uint64_t flags;
  uint64_t start;
  uint64_t end;
  uint64_t walk_end;
  uint64_t vec;
  uint64_t vec_len;
  uint64_t max_pages;
  uint64_t category_inverted;
  uint64_t category_mask;
  uint64_t category_anyof_mask;
  uint64_t return_mask;
};

constexpr unsigned long kPagemapScan = _IOWR('f', 16, PmScanArg);
constexpr uint64_t kScanWpMatching = 1 << 0;   // write-protect the pages reported
constexpr uint64_t kScanCheckWpAsync = 1 << 1;  // fail on pages not under async WP
constexpr uint64_t kPageIsWritten = 1 << 1;

std::string Errno(std::string_view what) {
  return std::string(what) + ": " + std::strerror(errno);
}

// The process's userfaultfd and pagemap descriptors, opened once and never
// closed (every tracked range is registered with the one userfaultfd).
struct Tracker {
  int uffd = -1;
  int pagemap = -1;
  std::string error;  // why tracking is unavailable; empty when it works
  // A write to a protected page counts as a page fault of the writing
  // thread (as Linux counts every fault it resolves): then a restore may
  // skip the scan (MemorySnapshot::NoteAccess).
  bool faults_counted = false;
};

constexpr uint64_t kUnknownFaults = ~uint64_t{0};

// Page faults the calling thread has taken, minor and major.
uint64_t RusageFaults() {
  rusage usage{};
  if (getrusage(RUSAGE_THREAD, &usage) != 0) return kUnknownFaults;
  return static_cast<uint64_t>(usage.ru_minflt) + static_cast<uint64_t>(usage.ru_majflt);
}

// A value that moves on every page fault of the thread that opened it, read
// without a system call: the head of a perf ring buffer that gets one sample
// per fault. Linux emits the software page-fault event on entry to its user-
// address fault handler, also for faults in kernel mode (copy_to_user), but
// not for faults get_user_pages resolves (host functions force a scan). The
// mapping is read-only, so the buffer overwrites itself and its head always
// advances. Refused without CAP_PERFMON where perf_event_paranoid > 1 (the
// kernel-mode faults are needed): then getrusage, a ~0.2 µs system call.
class PerfFaults {
 public:
  PerfFaults() {
    perf_event_attr attr{};
    attr.size = sizeof attr;
    attr.type = PERF_TYPE_SOFTWARE;
    attr.config = PERF_COUNT_SW_PAGE_FAULTS;
    attr.sample_period = 1;
    attr.exclude_hv = 1;
    fd_ = static_cast<int>(syscall(SYS_perf_event_open, &attr, 0, -1, -1, PERF_FLAG_FD_CLOEXEC));
    if (fd_ < 0) return;
    void* map = mmap(nullptr, kMapSize, PROT_READ, MAP_SHARED, fd_, 0);
    if (map == MAP_FAILED) {
      close(fd_);
      fd_ = -1;
      return;
    }
    page_ = static_cast<perf_event_mmap_page*>(map);
  }
  ~PerfFaults() {
    if (page_) munmap(page_, kMapSize);
    if (fd_ >= 0) close(fd_);
  }
  PerfFaults(const PerfFaults&) = delete;
  PerfFaults& operator=(const PerfFaults&) = delete;

  bool available() const { return page_ != nullptr; }
  uint64_t Read() const { return __atomic_load_n(&page_->data_head, __ATOMIC_ACQUIRE); }

  static const PerfFaults& ThisThread() {
    static thread_local const PerfFaults faults;
    return faults;
  }

 private:
  // The control page and one page of samples (8 bytes each).
  static constexpr size_t kMapSize = 2 * kHostPageSize;
  int fd_ = -1;
  perf_event_mmap_page* page_ = nullptr;
};

// Whether the probe found the perf ring buffer's head to move on every
// fault (ProbePerfFaults); set once, before any snapshot.
std::atomic<bool> perf_faults_trusted{false};

// Moves on every page fault the calling thread takes; kUnknownFaults when it
// cannot be read. Only compared with itself on one thread: a thread keeps
// the source it first used.
uint64_t ThreadFaults() {
  if (perf_faults_trusted.load(std::memory_order_relaxed)) {
    const PerfFaults& perf = PerfFaults::ThisThread();
    if (perf.available()) return perf.Read();
  }
  return RusageFaults();
}

// Whether the calling thread's perf ring buffer took a sample for each of
// many faults in a row: the kernel throttles sampling events that overflow
// too often per tick, and a throttled event would miss faults.
bool ProbePerfFaults() {
  const PerfFaults& perf = PerfFaults::ThisThread();
  if (!perf.available()) return false;
  constexpr size_t kPages = 512;
  const size_t size = kPages * kHostPageSize;
  void* map = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (map == MAP_FAILED) return false;
  const uint64_t before = perf.Read();
  auto* bytes = static_cast<volatile uint8_t*>(map);
  for (size_t at = 0; at < size; at += kHostPageSize) bytes[at] = 1;
  const uint64_t after = perf.Read();
  munmap(map, size);
  return after - before >= kPages * sizeof(perf_event_header);
}

// A userfaultfd that handles user-mode faults only: enough for async write
// protection (the kernel resolves those itself, also for its own writes)
// and allowed without privileges. /dev/userfaultfd where the system call is
// refused (seccomp, vm.unprivileged_userfaultfd).
int OpenUserfaultfd() {
  const int flags = O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY;
  int fd = static_cast<int>(syscall(SYS_userfaultfd, flags));
  if (fd >= 0) return fd;
  int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
  if (dev < 0) return -1;
  fd = ioctl(dev, USERFAULTFD_IOC_NEW, flags);
  int saved = errno;
  close(dev);
  errno = saved;
  return fd;
}

Result<void> Register(int uffd, uintptr_t begin, uintptr_t end) {
  uffdio_register reg{};
  reg.range = {begin, end - begin};
  reg.mode = UFFDIO_REGISTER_MODE_WP;
  if (ioctl(uffd, UFFDIO_REGISTER, &reg) != 0) {
    return MakeError(ErrorCode::kFailedPrecondition, Errno("userfaultfd register"));
  }
  uffdio_writeprotect wp{};
  wp.range = {begin, end - begin};
  wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
  if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) != 0) {
    return MakeError(ErrorCode::kFailedPrecondition, Errno("userfaultfd write-protect"));
  }
  return {};
}

// Reports each run of pages in [begin, end) written since it was last
// protected to `on_run` (when given); with `protect`, protects them again.
// Fails (EPERM) where a page is not under async write protection any more.
Result<void> Scan(int pagemap, uintptr_t begin, uintptr_t end, bool protect,
                  const std::function<void(uintptr_t, uintptr_t)>& on_run) {
  PageRegion regions[64];
  while (begin < end) {
    PmScanArg arg{};
    arg.size = sizeof arg;
    arg.flags = kScanCheckWpAsync | (protect ? kScanWpMatching : 0);
    arg.start = begin;
    arg.end = end;
    if (on_run) {
      arg.vec = reinterpret_cast<uintptr_t>(regions);
      arg.vec_len = std::size(regions);
    }
    arg.category_mask = kPageIsWritten;
    arg.return_mask = kPageIsWritten;
    long n = ioctl(pagemap, kPagemapScan, &arg);
    if (n < 0) return MakeError(ErrorCode::kFailedPrecondition, Errno("PAGEMAP_SCAN"));
    for (long i = 0; i < n; ++i) on_run(regions[i].start, regions[i].end);
    if (arg.walk_end <= begin) {
      return MakeError(ErrorCode::kFailedPrecondition, "PAGEMAP_SCAN made no progress");
    }
    begin = arg.walk_end;
  }
  return {};
}

// Whether `write` moves both sources of ThreadFaults (a thread whose perf
// event could not be opened uses getrusage).
bool CountsAsFaults(const std::function<void()>& write) {
  const uint64_t rusage = RusageFaults();
  const uint64_t thread = ThreadFaults();
  write();
  return RusageFaults() > rusage && ThreadFaults() != thread;
}

// Tracks a scratch page end to end: the kernel must report exactly the
// page written. Sets *faults_counted when that write counted as a fault.
Result<void> SelfTest(int uffd, int pagemap, bool* faults_counted) {
  const size_t size = 2 * kHostPageSize;
  void* map = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (map == MAP_FAILED) return MakeError(ErrorCode::kResourceExhausted, Errno("mmap"));
  auto* bytes = static_cast<uint8_t*>(map);
  const auto begin = reinterpret_cast<uintptr_t>(bytes);
  bytes[0] = 1;
  Result<void> result = Register(uffd, begin, begin + size);
  if (result) {
    *faults_counted = CountsAsFaults([&] { static_cast<volatile uint8_t*>(bytes)[kHostPageSize] = 1; });
    std::vector<std::pair<uintptr_t, uintptr_t>> runs;
    result = Scan(pagemap, begin, begin + size, /*protect=*/false,
                  [&](uintptr_t b, uintptr_t e) { runs.emplace_back(b, e); });
    if (result && (runs.size() != 1 || runs[0].first != begin + kHostPageSize ||
                   runs[0].second != begin + size)) {
      result = MakeError(ErrorCode::kFailedPrecondition,
                         "PAGEMAP_SCAN did not report the page written");
    }
    // A protected page that was present before, too.
    *faults_counted = *faults_counted &&
                      CountsAsFaults([&] { static_cast<volatile uint8_t*>(bytes)[0] = 2; });
  }
  munmap(map, size);
  return result;
}

Tracker Probe() {
  Tracker t;
  t.uffd = OpenUserfaultfd();
  if (t.uffd < 0) {
    t.error = Errno("userfaultfd");
    return t;
  }
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = kUffdFeatureWpAsync | kUffdFeatureWpUnpopulated;
  if (ioctl(t.uffd, UFFDIO_API, &api) != 0) {
    t.error = Errno("userfaultfd without asynchronous write protection (Linux 6.7+)");
    return t;
  }
  t.pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  if (t.pagemap < 0) {
    t.error = Errno("/proc/self/pagemap");
    return t;
  }
  // Only where tracking works is a fault count of any use; the self-test
  // then checks the source chosen here.
  perf_faults_trusted.store(ProbePerfFaults(), std::memory_order_relaxed);
  if (auto ok = SelfTest(t.uffd, t.pagemap, &t.faults_counted); !ok) t.error = ok.error().message;
  return t;
}

const Tracker& ProcessTracker() {
  static const Tracker* tracker = new Tracker(Probe());
  return *tracker;
}

bool IsZeroPage(const uint8_t* page) {
  return page[0] == 0 && std::memcmp(page, page + 1, kHostPageSize - 1) == 0;
}

}  // namespace

bool WriteTrackingAvailable(std::string* why_not) {
  const Tracker& t = ProcessTracker();
  if (why_not) *why_not = t.error;
  return t.error.empty();
}

bool WritesCountAsFaults() {
  const Tracker& t = ProcessTracker();
  return t.error.empty() && t.faults_counted;
}

Result<std::unique_ptr<MemorySnapshot>> MemorySnapshot::Take(std::span<uint8_t> memory,
                                                             const Options& options) {
  const auto begin = reinterpret_cast<uintptr_t>(memory.data());
  if (begin % kHostPageSize != 0 || memory.size() % kHostPageSize != 0) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "memory range is not aligned to host pages (" +
                         std::to_string(memory.size()) + " bytes)");
  }
  uint8_t* copy = nullptr;
  if (!memory.empty()) {
    void* map = mmap(nullptr, memory.size(), PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (map == MAP_FAILED) {
      return MakeError(ErrorCode::kResourceExhausted, Errno("memory snapshot of " +
                                                            std::to_string(memory.size()) +
                                                            " bytes"));
    }
    copy = static_cast<uint8_t*>(map);
  }
  // Zero pages stay unwritten in the copy: they cost no memory.
  for (size_t at = 0; at < memory.size(); at += kHostPageSize) {
    if (!IsZeroPage(memory.data() + at)) std::memcpy(copy + at, memory.data() + at, kHostPageSize);
  }
  std::unique_ptr<MemorySnapshot> snapshot(new MemorySnapshot(memory.data(), memory.size(), copy));
  std::string why_not;
  if (!options.track_writes) {
    snapshot->tracking_error_ = "write tracking turned off";
  } else if (!WriteTrackingAvailable(&why_not)) {
    snapshot->tracking_error_ = why_not;
  } else if (!memory.empty()) {
    auto armed = Register(ProcessTracker().uffd, begin, begin + memory.size());
    if (armed) {
      snapshot->tracking_ = true;
    } else {
      snapshot->tracking_error_ = armed.error().message;
    }
  }
  return snapshot;
}

MemorySnapshot::~MemorySnapshot() {
  // The range itself is left registered unless StopTracking ran: it may
  // not be ours any more, and its registration ends with its mapping.
  if (copy_) munmap(copy_, size_);
}

void MemorySnapshot::StopTracking(std::span<uint8_t> memory) {
  if (!tracking_ || memory.data() != base_ || memory.size() < size_) return;
  tracking_ = false;
  tracking_error_ = "tracking stopped";
  uffdio_range range{reinterpret_cast<uintptr_t>(base_), size_};
  // Unregistering also clears the pages' write protection. A failure
  // leaves them protected in asynchronous mode: writes still succeed.
  (void)ioctl(ProcessTracker().uffd, UFFDIO_UNREGISTER, &range);
}

Result<RestoreStats> MemorySnapshot::Restore(std::span<uint8_t> memory) {
  if (memory.data() != base_ || memory.size() != size_) {
    std::string what = memory.size() != size_ ? "grew from " + std::to_string(size_) + " to " +
                                                    std::to_string(memory.size()) + " bytes"
                                              : "moved";
    return MakeError(ErrorCode::kFailedPrecondition,
                     "linear memory " + what + " since the snapshot");
  }
  RestoreStats stats;
  stats.tracked = tracking_;
  if (tracking_) {
    auto pages = RestoreTracked(&stats.scanned);
    if (!pages) return MakeError(pages.error());
    stats.pages_copied = *pages;
  } else {
    stats.pages_copied = RestoreByComparison();
  }
  return stats;
}

uint64_t MemorySnapshot::ThisThread() {
  // Not the address of a thread_local: a new thread may reuse a dead one's.
  static std::atomic<uint64_t> next{1};
  static thread_local const uint64_t id = next.fetch_add(1, std::memory_order_relaxed);
  return id;
}

Result<void> MemorySnapshot::ScanWritten() {
  const auto begin = reinterpret_cast<uintptr_t>(base_);
  const uintptr_t end = begin + size_;
  unprotected_.clear();
  return Scan(ProcessTracker().pagemap, begin, end, /*protect=*/false,
              [&](uintptr_t b, uintptr_t e) {
                b = std::max(b, begin);
                e = std::min(e, end);
                if (b < e) unprotected_.emplace_back(b - begin, e - begin);
              });
}

Result<uint64_t> MemorySnapshot::RestoreTracked(bool* scanned) {
  const Tracker& t = ProcessTracker();
  const uint64_t faults = ThreadFaults();
  *scanned = must_scan_ || !t.faults_counted || ThisThread() != restored_on_ ||
             faults == kUnknownFaults || faults != faults_;
  // After a scan, the count is read again at once: only this restore's
  // own first reads of the copy fault after it (and may make the next
  // restore scan needlessly, once).
  uint64_t counted = faults;
  if (*scanned) {
    if (auto ok = ScanWritten(); !ok) return MakeError(ok.error());
    counted = ThreadFaults();
  }
  // The pages left unprotected include those the last restores found:
  // only the ones that differ are written back.
  uint64_t unprotected = 0;
  uint64_t copied = 0;
  for (auto [b, e] : unprotected_) {
    for (size_t at = b; at < e; at += kHostPageSize) copied += CopyBackIfChanged(at) ? 1 : 0;
    unprotected += (e - b) / kHostPageSize;
  }
  // Protecting again costs a TLB flush on every CPU running this process
  // and a fault at the next first write of each page, far more than
  // comparing a page: the pages stay unprotected (and compared at every
  // restore) until too many of them were compared for nothing (not
  // written since the last restore).
  if (unprotected - copied > kMaxStalePages) {
    const auto begin = reinterpret_cast<uintptr_t>(base_);
    auto ok = Scan(t.pagemap, begin + unprotected_.front().first,
                   begin + unprotected_.back().second, /*protect=*/true, nullptr);
    if (!ok) return MakeError(ok.error());
    unprotected_.clear();
  }
  restored_on_ = ThisThread();
  faults_ = counted;
  must_scan_ = false;
  return copied;
}

bool MemorySnapshot::CopyBackIfChanged(size_t at) {
  if (std::memcmp(base_ + at, copy_ + at, kHostPageSize) == 0) return false;
  std::memcpy(base_ + at, copy_ + at, kHostPageSize);
  return true;
}

uint64_t MemorySnapshot::RestoreByComparison() {
  uint64_t pages = 0;
  for (size_t at = 0; at < size_; at += kHostPageSize) pages += CopyBackIfChanged(at) ? 1 : 0;
  return pages;
}

}  // namespace keel::engine
