// WASI preview1: reading, writing and waiting. Everything that can block
// (pipes, terminals, sockets, sleeping) waits in poll() together with an
// eventfd that the call's interrupt hook signals, so a deadline always
// ends the call promptly.
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <optional>
#include <vector>

#include "abi/wasi_internal.h"

namespace keel::abi::wasi {

Waker::Waker() : fd_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {}

Waker::~Waker() {
  if (fd_ >= 0) close(fd_);
}

void Waker::Wake() const {
  const uint64_t one = 1;
  (void)!write(fd_, &one, sizeof(one));
}

void Waker::Drain() const {
  uint64_t count;
  (void)!read(fd_, &count, sizeof(count));
}

namespace {

uint64_t MonotonicNow() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(ts.tv_nsec);
}

uint64_t SaturatingAdd(uint64_t a, uint64_t b) { return b > UINT64_MAX - a ? UINT64_MAX : a + b; }

Error Interrupted() {
  return Error(ErrorCode::kInterrupted, "interrupted while blocked in a WASI call");
}

// Polls `fds` until one of them is ready, the CLOCK_MONOTONIC `deadline`
// passes, or the call is interrupted (an Error). Returns 0, or the host
// errno of a failed poll.
Result<int> PollInterruptibly(Call& c, std::vector<pollfd>& fds, std::optional<uint64_t> deadline) {
  if (c.caller.interrupted()) return tl::unexpected(Interrupted());
  if (!c.st.waker) {
    auto waker = std::make_shared<Waker>();
    if (!waker->valid()) return errno;
    c.st.waker = std::move(waker);
  }
  const Waker& waker = *c.st.waker;
  // A wake left over from an earlier hook means nothing now.
  waker.Drain();
  c.caller.SetInterruptHook([w = c.st.waker] { w->Wake(); });
  fds.push_back({waker.fd(), POLLIN, 0});
  const size_t n = fds.size() - 1;
  int result = 0;
  while (true) {
    struct timespec timeout;
    if (deadline) {
      const uint64_t now = MonotonicNow();
      const uint64_t left = *deadline > now ? *deadline - now : 0;
      timeout.tv_sec = static_cast<time_t>(std::min<uint64_t>(left / 1'000'000'000u, INT_MAX));
      timeout.tv_nsec = static_cast<long>(left % 1'000'000'000u);
    }
    const int ready = ppoll(fds.data(), fds.size(), deadline ? &timeout : nullptr, nullptr);
    if (ready < 0 && errno != EINTR) {
      result = errno;
      break;
    }
    if (c.caller.interrupted()) {
      fds.pop_back();
      return tl::unexpected(Interrupted());
    }
    if (ready > 0 && fds[n].revents) waker.Drain();
    if (std::any_of(fds.begin(), fds.begin() + static_cast<ptrdiff_t>(n),
                    [](const pollfd& p) { return p.revents != 0; })) {
      break;
    }
    if (deadline && MonotonicNow() >= *deadline) break;
  }
  fds.pop_back();
  return result;
}

// Waits for one fd to be readable (POLLIN) or writable (POLLOUT). kAgain at
// once for a non-blocking descriptor.
Result<Errno> WaitFor(Call& c, const FdEntry& e, short events) {
  std::vector<pollfd> fds = {{e.host.get(), events, 0}};
  if (e.flags & kFdflagNonblock) {
    int ready = poll(fds.data(), 1, 0);
    if (ready < 0) return ErrnoFromHost(errno);
    return ready == 0 ? kAgain : kSuccess;
  }
  auto waited = PollInterruptibly(c, fds, std::nullopt);
  if (!waited) return tl::unexpected(std::move(waited.error()));
  return ErrnoFromHost(*waited);
}

// Blocks SIGPIPE on this thread for the length of one write to a pipe or
// socket, and swallows the SIGPIPE the write raised, so that a reader
// going away gives the guest EPIPE instead of killing the host.
class SigpipeGuard {
 public:
  SigpipeGuard() {
    sigemptyset(&pipe_);
    sigaddset(&pipe_, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_, &old_);
    sigset_t pending;
    sigpending(&pending);
    was_pending_ = sigismember(&pending, SIGPIPE) == 1;
  }
  ~SigpipeGuard() { pthread_sigmask(SIG_SETMASK, &old_, nullptr); }
  SigpipeGuard(const SigpipeGuard&) = delete;
  SigpipeGuard& operator=(const SigpipeGuard&) = delete;

  void ConsumeRaised() {
    if (was_pending_) return;
    const struct timespec zero = {0, 0};
    while (sigtimedwait(&pipe_, nullptr, &zero) < 0 && errno == EINTR) {
    }
  }

 private:
  sigset_t pipe_;
  sigset_t old_;
  bool was_pending_ = false;
};

// The guest's iovec array as host iovecs into its memory (at most IOV_MAX;
// a short transfer is allowed). EFAULT when any of it is out of bounds.
Errno GatherIovecs(const GuestMemory& mem, uint32_t iovs, uint32_t count,
                   std::vector<struct iovec>* out) {
  if (!mem.InBounds(iovs, uint64_t{8} * count)) return kFault;
  for (uint32_t i = 0; i < count; ++i) {
    uint32_t buf = 0, len = 0;
    (void)mem.Load(iovs + uint64_t{8} * i, &buf);
    (void)mem.Load(iovs + uint64_t{8} * i + 4, &len);
    auto bytes = mem.Slice(buf, len);
    if (!bytes) return kFault;
    if (len != 0 && out->size() < IOV_MAX) out->push_back({bytes->data(), bytes->size()});
  }
  return kSuccess;
}

// One read or write on a pipe, FIFO, terminal, socket or device that
// waits in poll(), interruptibly, while it would block, and never blocks in
// the transfer itself. Descriptors path_open made keep O_NONBLOCK on their
// own file description. Inherited stdio shares its description with the
// host, so it uses RWF_NOWAIT, or where that is unsupported (terminals,
// FIFOs) waits for readiness before the plain call.
Result<Errno> StreamTransfer(Call& c, const FdEntry& e, std::vector<struct iovec>& iov, bool write,
                             size_t* n) {
  const int fd = e.host.get();
  const int count = static_cast<int>(iov.size());
  bool nowait = e.kind == FdKind::kStdio;
  while (true) {
    std::optional<SigpipeGuard> guard;
    if (write) guard.emplace();
    const int flags = nowait ? RWF_NOWAIT : 0;
    const ssize_t r = write ? pwritev2(fd, iov.data(), count, -1, flags)
                            : preadv2(fd, iov.data(), count, -1, flags);
    if (r >= 0) {
      *n = static_cast<size_t>(r);
      return kSuccess;
    }
    const int err = errno;
    if (write && err == EPIPE) guard->ConsumeRaised();
    if (err == EINTR) continue;
    if (err == EOPNOTSUPP && nowait) {
      nowait = false;
    } else if (err != EAGAIN) {
      return ErrnoFromHost(err);
    }
    auto ready = WaitFor(c, e, write ? POLLOUT : POLLIN);
    if (!ready || *ready != kSuccess) return ready;
  }
}

size_t CopyIn(std::string_view from, const std::vector<struct iovec>& iov) {
  size_t done = 0;
  for (const auto& v : iov) {
    const size_t k = std::min(v.iov_len, from.size() - done);
    std::memcpy(v.iov_base, from.data() + done, k);
    done += k;
    if (done == from.size()) break;
  }
  return done;
}

size_t AppendCapture(Capture& capture, const std::vector<struct iovec>& iov) {
  size_t total = 0;
  for (const auto& v : iov) {
    const size_t room = capture.limit - std::min(capture.limit, capture.data.size());
    const size_t k = std::min(room, v.iov_len);
    capture.data.append(static_cast<const char*>(v.iov_base), k);
    if (k < v.iov_len) capture.truncated = true;
    total += v.iov_len;
  }
  return total;
}

// Checks that `fd` can be read (or written, `write`) and the result
// pointer; EBADF for directories, missing rights, and the wrong stdio end.
Errno GetStream(Call& c, uint32_t fd, bool write, uint32_t result_ptr, FdEntry** out) {
  FdEntry* e = c.st.Find(fd);
  if (e == nullptr || e->kind == FdKind::kDirectory) return kBadf;
  // POSIX and wasmtime say EBADF for a descriptor not open for this.
  if (!(e->rights_base & (write ? kRightFdWrite : kRightFdRead))) return kBadf;
  if (e->kind == FdKind::kStdio && (e->stdio == 0) == write) return kBadf;
  if (!c.mem.InBounds(result_ptr, 4)) return kFault;
  *out = e;
  return kSuccess;
}

R Transfer(Call& c, uint32_t fd, uint32_t iovs, uint32_t iovs_len, std::optional<uint64_t> offset,
           bool write, uint32_t result_ptr) {
  FdEntry* e;
  if (Errno err = GetStream(c, fd, write, result_ptr, &e); err != kSuccess) return err;
  if (offset && (e->kind == FdKind::kStdio || e->stream)) return kSpipe;
  if (offset && *offset > static_cast<uint64_t>(INT64_MAX)) return kInval;
  std::vector<struct iovec> iov;
  if (Errno err = GatherIovecs(c.mem, iovs, iovs_len, &iov); err != kSuccess) return err;

  size_t n = 0;
  if (e->kind == FdKind::kStdio && e->stdio_kind != WasiStdio::Kind::kInherit) {
    if (e->stdio_kind == WasiStdio::Kind::kNull) {
      for (const auto& v : iov) n += write ? v.iov_len : 0;
    } else if (!write) {
      n = CopyIn(std::string_view(c.st.stdin_data).substr(c.st.stdin_pos), iov);
      c.st.stdin_pos += n;
    } else {
      n = AppendCapture(e->stdio == 1 ? c.st.out : c.st.err, iov);
    }
  } else if (e->stream) {
    auto done = StreamTransfer(c, *e, iov, write, &n);
    if (!done || *done != kSuccess) return done;
  } else {
    const int count = static_cast<int>(iov.size());
    ssize_t r;
    do {
      if (offset) {
        const auto at = static_cast<off_t>(*offset);
        r = write ? pwritev(e->host.get(), iov.data(), count, at)
                  : preadv(e->host.get(), iov.data(), count, at);
      } else {
        r = write ? writev(e->host.get(), iov.data(), count)
                  : readv(e->host.get(), iov.data(), count);
      }
    } while (r < 0 && errno == EINTR);
    if (r < 0) return ErrnoFromHost(errno);
    n = static_cast<size_t>(r);
  }
  (void)c.mem.Store<uint32_t>(result_ptr, static_cast<uint32_t>(n));
  return kSuccess;
}

// The seekable file behind `fd`: ESPIPE for stdio, EBADF for directories.
Errno GetSeekable(Call& c, uint32_t fd, uint64_t right, uint32_t result_ptr, FdEntry** out) {
  FdEntry* e = c.st.Find(fd);
  if (e == nullptr || e->kind == FdKind::kDirectory) return kBadf;
  if (e->kind == FdKind::kStdio) return kSpipe;
  if ((e->rights_base & right) != right) return kNotcapable;
  if (!c.mem.InBounds(result_ptr, 8)) return kFault;
  *out = e;
  return kSuccess;
}

}  // namespace

R FdRead(Call& c, uint32_t fd, uint32_t iovs, uint32_t iovs_len, uint32_t nread_out) {
  return Transfer(c, fd, iovs, iovs_len, std::nullopt, false, nread_out);
}

R FdPread(Call& c, uint32_t fd, uint32_t iovs, uint32_t iovs_len, uint64_t offset,
          uint32_t nread_out) {
  return Transfer(c, fd, iovs, iovs_len, offset, false, nread_out);
}

R FdWrite(Call& c, uint32_t fd, uint32_t iovs, uint32_t iovs_len, uint32_t nwritten_out) {
  return Transfer(c, fd, iovs, iovs_len, std::nullopt, true, nwritten_out);
}

R FdPwrite(Call& c, uint32_t fd, uint32_t iovs, uint32_t iovs_len, uint64_t offset,
           uint32_t nwritten_out) {
  return Transfer(c, fd, iovs, iovs_len, offset, true, nwritten_out);
}

R FdSeek(Call& c, uint32_t fd, uint64_t offset, uint32_t whence, uint32_t out) {
  static constexpr int kWhence[] = {SEEK_SET, SEEK_CUR, SEEK_END};
  // A seek that only reports the position needs just FD_TELL.
  const uint64_t right = (offset == 0 && whence == 1) ? kRightFdTell : kRightFdSeek;
  FdEntry* e;
  if (Errno err = GetSeekable(c, fd, right, out, &e); err != kSuccess) return err;
  if (whence > 2) return kInval;
  off_t pos = lseek(e->host.get(), static_cast<off_t>(offset), kWhence[whence]);
  if (pos < 0) return ErrnoFromHost(errno);
  (void)c.mem.Store<uint64_t>(out, static_cast<uint64_t>(pos));
  return kSuccess;
}

R FdTell(Call& c, uint32_t fd, uint32_t out) {
  FdEntry* e;
  if (Errno err = GetSeekable(c, fd, kRightFdTell, out, &e); err != kSuccess) return err;
  off_t pos = lseek(e->host.get(), 0, SEEK_CUR);
  if (pos < 0) return ErrnoFromHost(errno);
  (void)c.mem.Store<uint64_t>(out, static_cast<uint64_t>(pos));
  return kSuccess;
}

namespace {

constexpr uint8_t kEventClock = 0;
constexpr uint8_t kEventFdRead = 1;
constexpr uint8_t kEventFdWrite = 2;
constexpr uint16_t kEventHangup = 1;
constexpr uint32_t kMaxSubscriptions = 1 << 16;

struct Subscription {
  uint64_t userdata = 0;
  uint8_t type = kEventClock;
  uint64_t deadline = 0;  // clock: CLOCK_MONOTONIC ns
  int poll_index = -1;    // fd on a host stream: its pollfd
  bool ready = false;
  Errno error = kSuccess;
  uint64_t nbytes = 0;
  uint16_t rwflags = 0;
};

void Fail(Subscription& s, Errno error) {
  s.ready = true;
  s.error = error;
}

// Clock subscription at `base` (the union at offset 16).
void ParseClock(const GuestMemory& mem, uint64_t base, uint64_t now, Subscription& s) {
  uint32_t id = 0;
  uint64_t timeout = 0;
  uint16_t flags = 0;
  (void)mem.Load(base, &id);
  (void)mem.Load(base + 8, &timeout);
  (void)mem.Load(base + 24, &flags);
  const bool absolute = flags & 1;
  if (flags & ~uint16_t{1}) return Fail(s, kInval);
  if (id == 1) {
    s.deadline = absolute ? timeout : SaturatingAdd(now, timeout);
  } else if (id == 0) {
    if (absolute) {
      struct timespec ts;
      clock_gettime(CLOCK_REALTIME, &ts);
      const uint64_t real_now =
          static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(ts.tv_nsec);
      s.deadline = timeout > real_now ? SaturatingAdd(now, timeout - real_now) : now;
    } else {
      s.deadline = SaturatingAdd(now, timeout);
    }
  } else {
    // Waiting on a CPU-time clock is refused, as by wasmtime.
    Fail(s, kInval);
  }
}

// Fd subscription: ready at once unless it is a host stream to poll.
void ParseFd(Call& c, uint32_t fd, Subscription& s, std::vector<pollfd>& fds) {
  const bool read = s.type == kEventFdRead;
  const FdEntry* e = c.st.Find(fd);
  if (e == nullptr || e->kind == FdKind::kDirectory) return Fail(s, kBadf);
  if (!(e->rights_base & kRightPollFdReadwrite)) return Fail(s, kNotcapable);
  if (e->kind == FdKind::kStdio) {
    if ((e->stdio == 0) != read) return Fail(s, kBadf);
    if (e->stdio_kind != WasiStdio::Kind::kInherit) {
      s.ready = true;
      if (read) {
        s.nbytes = c.st.stdin_data.size() - c.st.stdin_pos;
        if (s.nbytes == 0) s.rwflags = kEventHangup;
      }
      return;
    }
  }
  if (e->stream) {
    s.poll_index = static_cast<int>(fds.size());
    fds.push_back({e->host.get(), static_cast<short>(read ? POLLIN : POLLOUT), 0});
    return;
  }
  // Regular files are always ready, with what is left to read.
  s.ready = true;
  if (read) {
    struct stat st;
    const off_t pos = lseek(e->host.get(), 0, SEEK_CUR);
    if (fstat(e->host.get(), &st) == 0 && pos >= 0 && st.st_size > pos) {
      s.nbytes = static_cast<uint64_t>(st.st_size - pos);
    }
  }
}

}  // namespace

R PollOneoff(Call& c, uint32_t in, uint32_t out, uint32_t nsubscriptions, uint32_t nevents_out) {
  // As wasmtime: waiting on nothing would sleep forever.
  if (nsubscriptions == 0) return kInval;
  if (!c.mem.InBounds(in, uint64_t{48} * nsubscriptions) ||
      !c.mem.InBounds(out, uint64_t{32} * nsubscriptions) || !c.mem.InBounds(nevents_out, 4)) {
    return kFault;
  }
  // The host's bookkeeping is per subscription; bound it.
  if (nsubscriptions > kMaxSubscriptions) return kNomem;
  const uint64_t now = MonotonicNow();
  std::vector<Subscription> subs(nsubscriptions);
  std::vector<pollfd> fds;
  std::optional<uint64_t> deadline;
  for (uint32_t i = 0; i < nsubscriptions; ++i) {
    const uint64_t at = in + uint64_t{48} * i;
    Subscription& s = subs[i];
    (void)c.mem.Load(at, &s.userdata);
    (void)c.mem.Load(at + 8, &s.type);
    if (s.type == kEventClock) {
      ParseClock(c.mem, at + 16, now, s);
      if (!s.ready) deadline = std::min(deadline.value_or(UINT64_MAX), s.deadline);
    } else if (s.type == kEventFdRead || s.type == kEventFdWrite) {
      uint32_t fd = 0;
      (void)c.mem.Load(at + 16, &fd);
      ParseFd(c, fd, s, fds);
    } else {
      return kInval;
    }
  }

  const bool any_ready = std::any_of(subs.begin(), subs.end(), [](auto& s) { return s.ready; });
  if (any_ready) {
    // Report whatever else is ready too, without waiting.
    if (!fds.empty() && poll(fds.data(), fds.size(), 0) < 0) return ErrnoFromHost(errno);
  } else {
    auto waited = PollInterruptibly(c, fds, deadline);
    if (!waited) return tl::unexpected(std::move(waited.error()));
    if (*waited != 0) return ErrnoFromHost(*waited);
  }

  const uint64_t after = MonotonicNow();
  uint32_t count = 0;
  for (auto& s : subs) {
    if (s.type == kEventClock && !s.ready) {
      s.ready = after >= s.deadline;
    } else if (s.poll_index >= 0) {
      const pollfd& p = fds[static_cast<size_t>(s.poll_index)];
      if (p.revents == 0) continue;
      s.ready = true;
      if (p.revents & POLLNVAL) {
        s.error = kBadf;
      } else if (p.revents & POLLHUP) {
        s.rwflags = kEventHangup;
      } else if (s.type == kEventFdRead) {
        int available = 0;
        if (ioctl(p.fd, FIONREAD, &available) == 0 && available > 0) {
          s.nbytes = static_cast<uint64_t>(available);
        }
      }
    }
    if (!s.ready) continue;
    uint8_t event[32] = {};
    Put<uint64_t>(event, 0, s.userdata);
    Put<uint16_t>(event, 8, s.error);
    Put<uint8_t>(event, 10, s.type);
    Put<uint64_t>(event, 16, s.nbytes);
    Put<uint16_t>(event, 24, s.rwflags);
    (void)c.mem.Write(out + uint64_t{32} * count, event);
    ++count;
  }
  (void)c.mem.Store<uint32_t>(nevents_out, count);
  return kSuccess;
}

}  // namespace keel::abi::wasi
