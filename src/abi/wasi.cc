// WASI preview1: the context, the linker table, and the functions that are
// not about files: args, environ, clocks, random, process, sockets, and the
// descriptor table itself.
#include "abi/wasi.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <utility>

#include "abi/wasi_internal.h"

namespace keel::abi {
namespace wasi {

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) close(fd_);
    fd_ = other.Release();
  }
  return *this;
}

UniqueFd::~UniqueFd() {
  if (fd_ >= 0) close(fd_);
}

Errno WasiState::Insert(FdEntry entry, uint32_t* fd) {
  if (fds.size() >= max_open_fds) return kMfile;
  uint32_t n = 0;
  for (const auto& [used, unused] : fds) {
    if (used != n) break;
    ++n;
  }
  fds.emplace(n, std::move(entry));
  *fd = n;
  return kSuccess;
}

Errno ErrnoFromHost(int e) {
  // Linux errno -> WASI errno (numbered as in the witx definition).
  // clang-format off
  static constexpr std::pair<int, Errno> kTable[] = {
      {E2BIG, 1}, {EACCES, 2}, {EADDRINUSE, 3}, {EADDRNOTAVAIL, 4}, {EAFNOSUPPORT, 5},
      {EAGAIN, kAgain}, {EALREADY, 7}, {EBADF, kBadf}, {EBADMSG, 9}, {EBUSY, 10}, {ECANCELED, 11},
      {ECHILD, 12}, {ECONNABORTED, 13}, {ECONNREFUSED, 14}, {ECONNRESET, 15}, {EDEADLK, 16},
      {EDESTADDRREQ, 17}, {EDOM, 18}, {EDQUOT, 19}, {EEXIST, kExist}, {EFAULT, kFault},
      {EFBIG, kFbig}, {EHOSTUNREACH, 23}, {EIDRM, 24}, {EILSEQ, kIlseq}, {EINPROGRESS, 26},
      {EINTR, kIntr}, {EINVAL, kInval}, {EIO, kIo}, {EISCONN, 30}, {EISDIR, kIsdir}, {ELOOP, kLoop},
      {EMFILE, kMfile}, {EMLINK, 34}, {EMSGSIZE, 35}, {EMULTIHOP, 36}, {ENAMETOOLONG, kNametoolong},
      {ENETDOWN, 38}, {ENETRESET, 39}, {ENETUNREACH, 40}, {ENFILE, 41}, {ENOBUFS, 42}, {ENODEV, 43},
      {ENOENT, kNoent}, {ENOEXEC, 45}, {ENOLCK, 46}, {ENOLINK, 47}, {ENOMEM, kNomem}, {ENOMSG, 49},
      {ENOPROTOOPT, 50}, {ENOSPC, 51}, {ENOSYS, kNosys}, {ENOTCONN, 53}, {ENOTDIR, kNotdir},
      {ENOTEMPTY, 55}, {ENOTRECOVERABLE, 56}, {ENOTSOCK, kNotsock}, {ENOTSUP, kNotsup},
      {ENOTTY, 59}, {ENXIO, 60}, {EOVERFLOW, kOverflow}, {EOWNERDEAD, 62}, {EPERM, kPerm},
      {EPIPE, kPipe}, {EPROTO, 65}, {EPROTONOSUPPORT, 66}, {EPROTOTYPE, 67}, {ERANGE, 68},
      {EROFS, 69}, {ESPIPE, kSpipe}, {ESRCH, 71}, {ESTALE, 72}, {ETIMEDOUT, 73}, {ETXTBSY, 74},
      {EXDEV, 75},
  };
  // clang-format on
  if (e == 0) return kSuccess;
  for (const auto& [host, wasi] : kTable) {
    if (host == e) return wasi;
  }
  return kIo;
}

uint8_t FiletypeFromMode(uint32_t mode) {
  switch (mode & S_IFMT) {
    case S_IFBLK:
      return kFiletypeBlockDevice;
    case S_IFCHR:
      return kFiletypeCharacterDevice;
    case S_IFDIR:
      return kFiletypeDirectory;
    case S_IFREG:
      return kFiletypeRegularFile;
    case S_IFSOCK:
      return kFiletypeSocketStream;
    case S_IFLNK:
      return kFiletypeSymbolicLink;
    default:
      return kFiletypeUnknown;  // FIFOs have no WASI type
  }
}

namespace {

uint64_t Nanos(const struct timespec& ts) {
  if (ts.tv_sec < 0) return 0;
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<uint64_t>(ts.tv_nsec);
}

bool ValidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto b = static_cast<uint8_t>(s[i]);
    size_t n;
    uint32_t cp;
    if (b < 0x80) {
      ++i;
      continue;
    } else if ((b & 0xE0) == 0xC0) {
      n = 1;
      cp = b & 0x1F;
    } else if ((b & 0xF0) == 0xE0) {
      n = 2;
      cp = b & 0x0F;
    } else if ((b & 0xF8) == 0xF0) {
      n = 3;
      cp = b & 0x07;
    } else {
      return false;
    }
    if (i + n >= s.size()) return false;
    for (size_t k = 1; k <= n; ++k) {
      const auto c = static_cast<uint8_t>(s[i + k]);
      if ((c & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (c & 0x3F);
    }
    static constexpr uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n + 1;
  }
  return true;
}

// Copies NUL-terminated strings out as wasi-libc expects for argv and
// environ: an array of pointers and the strings they point at.
Errno WriteStringArray(Call& c, const std::vector<std::string>& strings, uint32_t ptrs,
                       uint32_t buf) {
  uint64_t total = 0;
  for (const auto& s : strings) total += s.size() + 1;
  if (!c.mem.InBounds(ptrs, uint64_t{4} * strings.size()) || !c.mem.InBounds(buf, total)) {
    return kFault;
  }
  uint64_t at = buf;
  for (size_t i = 0; i < strings.size(); ++i) {
    (void)c.mem.Store<uint32_t>(ptrs + 4 * i, static_cast<uint32_t>(at));
    auto bytes =
        std::span(reinterpret_cast<const uint8_t*>(strings[i].c_str()), strings[i].size() + 1);
    (void)c.mem.Write(at, bytes);
    at += bytes.size();
  }
  return kSuccess;
}

Errno WriteSizes(Call& c, const std::vector<std::string>& strings, uint32_t count_out,
                 uint32_t size_out) {
  uint64_t total = 0;
  for (const auto& s : strings) total += s.size() + 1;
  if (total > UINT32_MAX) return kOverflow;
  if (!c.mem.InBounds(count_out, 4) || !c.mem.InBounds(size_out, 4)) return kFault;
  (void)c.mem.Store<uint32_t>(count_out, static_cast<uint32_t>(strings.size()));
  (void)c.mem.Store<uint32_t>(size_out, static_cast<uint32_t>(total));
  return kSuccess;
}

bool HostClock(uint32_t id, clockid_t* out) {
  switch (id) {
    case 0:
      *out = CLOCK_REALTIME;
      return true;
    case 1:
      *out = CLOCK_MONOTONIC;
      return true;
    case 2:
      *out = CLOCK_PROCESS_CPUTIME_ID;
      return true;
    case 3:
      *out = CLOCK_THREAD_CPUTIME_ID;
      return true;
    default:
      return false;
  }
}

constexpr uint64_t kStdinRights =
    kRightFdRead | kRightFdFdstatSetFlags | kRightFdFilestatGet | kRightPollFdReadwrite;
constexpr uint64_t kStdoutRights =
    kRightFdWrite | kRightFdFdstatSetFlags | kRightFdFilestatGet | kRightPollFdReadwrite;

Result<FdEntry> MakeStdio(int index, const WasiStdio& config) {
  FdEntry e;
  e.kind = FdKind::kStdio;
  e.stdio = index;
  e.stdio_kind = config.kind;
  e.rights_base = index == 0 ? kStdinRights : kStdoutRights;
  e.rights_inheriting = e.rights_base;
  if (config.kind == WasiStdio::Kind::kInherit) {
    const int src = config.host_fd >= 0 ? config.host_fd : index;
    // Our own descriptor, so that the guest closing it leaves the host's
    // open; its flags are never changed (the description is shared).
    e.host = UniqueFd(fcntl(src, F_DUPFD_CLOEXEC, 0));
    if (!e.host.valid()) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "WASI stdio " + std::to_string(index) + ": cannot share host fd " +
                           std::to_string(src) + ": " + std::strerror(errno));
    }
    struct stat st;
    if (fstat(e.host.get(), &st) != 0) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "WASI stdio " + std::to_string(index) + ": " + std::strerror(errno));
    }
    e.stream = !S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode);
    // As wasmtime: a terminal is a character device, anything else unknown,
    // so that libc's isatty() answers truthfully.
    e.filetype = isatty(e.host.get()) ? kFiletypeCharacterDevice : kFiletypeUnknown;
  }
  return e;
}

}  // namespace

Errno WriteFilestat(Call& c, uint32_t ptr, int host_fd) {
  if (!c.mem.InBounds(ptr, 64)) return kFault;
  struct stat st;
  if (fstat(host_fd, &st) != 0) return ErrnoFromHost(errno);
  uint8_t buf[64] = {};
  Put<uint64_t>(buf, 0, st.st_dev);
  Put<uint64_t>(buf, 8, st.st_ino);
  Put<uint8_t>(buf, 16, FiletypeFromMode(st.st_mode));
  Put<uint64_t>(buf, 24, st.st_nlink);
  Put<uint64_t>(buf, 32, static_cast<uint64_t>(st.st_size));
  Put<uint64_t>(buf, 40, Nanos(st.st_atim));
  Put<uint64_t>(buf, 48, Nanos(st.st_mtim));
  Put<uint64_t>(buf, 56, Nanos(st.st_ctim));
  (void)c.mem.Write(ptr, buf);
  return kSuccess;
}

Errno ReadPath(const GuestMemory& mem, uint32_t ptr, uint32_t len, std::string* out) {
  if (!mem.InBounds(ptr, len)) return kFault;
  if (len > kMaxPathBytes) return kNametoolong;
  auto bytes = *mem.Slice(ptr, len);
  out->assign(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  if (out->find('\0') != std::string::npos) return kInval;
  if (!ValidUtf8(*out)) return kIlseq;
  return kSuccess;
}

Errno GetDirectory(Call& c, uint32_t fd, uint64_t right, FdEntry** out) {
  FdEntry* e = c.st.Find(fd);
  if (e == nullptr || e->kind == FdKind::kStdio) return kBadf;
  if (e->kind != FdKind::kDirectory) return kNotdir;
  if ((e->rights_base & right) != right) return kNotcapable;
  *out = e;
  return kSuccess;
}

Errno TimespecsFromFst(uint64_t atim, uint64_t mtim, uint32_t fst, struct timespec out[2]) {
  if (fst & ~uint32_t{15}) return kInval;
  if ((fst & kFstflagAtim) && (fst & kFstflagAtimNow)) return kInval;
  if ((fst & kFstflagMtim) && (fst & kFstflagMtimNow)) return kInval;
  auto convert = [](uint64_t ns, bool set, bool now, struct timespec* ts) {
    if (now) {
      ts->tv_sec = 0;
      ts->tv_nsec = UTIME_NOW;
    } else if (set) {
      ts->tv_sec = static_cast<time_t>(ns / 1'000'000'000u);
      ts->tv_nsec = static_cast<long>(ns % 1'000'000'000u);
    } else {
      ts->tv_sec = 0;
      ts->tv_nsec = UTIME_OMIT;
    }
  };
  convert(atim, fst & kFstflagAtim, fst & kFstflagAtimNow, &out[0]);
  convert(mtim, fst & kFstflagMtim, fst & kFstflagMtimNow, &out[1]);
  return kSuccess;
}

R ArgsGet(Call& c, uint32_t argv, uint32_t argv_buf) {
  return WriteStringArray(c, c.st.args, argv, argv_buf);
}

R ArgsSizesGet(Call& c, uint32_t argc_out, uint32_t size_out) {
  return WriteSizes(c, c.st.args, argc_out, size_out);
}

R EnvironGet(Call& c, uint32_t environ, uint32_t environ_buf) {
  return WriteStringArray(c, c.st.env, environ, environ_buf);
}

R EnvironSizesGet(Call& c, uint32_t count_out, uint32_t size_out) {
  return WriteSizes(c, c.st.env, count_out, size_out);
}

R ClockResGet(Call& c, uint32_t id, uint32_t out) {
  clockid_t clock;
  if (!HostClock(id, &clock)) return kInval;
  if (!c.mem.InBounds(out, 8)) return kFault;
  struct timespec ts;
  if (clock_getres(clock, &ts) != 0) return ErrnoFromHost(errno);
  (void)c.mem.Store<uint64_t>(out, Nanos(ts));
  return kSuccess;
}

R ClockTimeGet(Call& c, uint32_t id, uint64_t /*precision*/, uint32_t out) {
  clockid_t clock;
  if (!HostClock(id, &clock)) return kInval;
  if (!c.mem.InBounds(out, 8)) return kFault;
  struct timespec ts;
  if (clock_gettime(clock, &ts) != 0) return ErrnoFromHost(errno);
  (void)c.mem.Store<uint64_t>(out, Nanos(ts));
  return kSuccess;
}

R RandomGet(Call& c, uint32_t buf, uint32_t len) {
  auto dst = c.mem.Slice(buf, len);
  if (!dst) return kFault;
  size_t done = 0;
  while (done < dst->size()) {
    ssize_t n = getrandom(dst->data() + done, dst->size() - done, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoFromHost(errno);
    }
    done += static_cast<size_t>(n);
  }
  return kSuccess;
}

R SchedYield(Call& /*c*/) {
  sched_yield();
  return kSuccess;
}

Result<void> ProcExit(Call& c, uint32_t code) {
  const int status = static_cast<int>(code);
  c.st.exit_code = status;
  Error error = Error::Trap(TrapKind::kExit, "exit " + std::to_string(status));
  error.exit_code = status;
  return tl::unexpected(std::move(error));
}

// Signals are not delivered to guests; wasmtime answers the same.
R ProcRaise(Call& /*c*/, uint32_t /*sig*/) { return kNotsup; }

// No socket can be opened through preview1 here, so every open descriptor
// is not a socket (wasmtime: EBADF for a closed fd, else ENOTSOCK).
R SockAccept(Call& c, uint32_t fd, uint32_t /*flags*/, uint32_t /*out*/) {
  return c.st.Find(fd) == nullptr ? kBadf : kNotsock;
}
R SockRecv(Call& c, uint32_t fd, uint32_t, uint32_t, uint32_t, uint32_t, uint32_t) {
  return c.st.Find(fd) == nullptr ? kBadf : kNotsock;
}
R SockSend(Call& c, uint32_t fd, uint32_t, uint32_t, uint32_t, uint32_t) {
  return c.st.Find(fd) == nullptr ? kBadf : kNotsock;
}
R SockShutdown(Call& c, uint32_t fd, uint32_t /*how*/) {
  return c.st.Find(fd) == nullptr ? kBadf : kNotsock;
}

R FdClose(Call& c, uint32_t fd) { return c.st.fds.erase(fd) == 1 ? kSuccess : kBadf; }

R FdRenumber(Call& c, uint32_t from, uint32_t to) {
  auto from_it = c.st.fds.find(from);
  auto to_it = c.st.fds.find(to);
  // As wasmtime: both must be open (POSIX dup2 would open `to`).
  if (from_it == c.st.fds.end() || to_it == c.st.fds.end()) return kBadf;
  if (from == to) return kSuccess;
  to_it->second = std::move(from_it->second);
  c.st.fds.erase(from_it);
  return kSuccess;
}

R FdFdstatGet(Call& c, uint32_t fd, uint32_t out) {
  const FdEntry* e = c.st.Find(fd);
  if (e == nullptr) return kBadf;
  if (!c.mem.InBounds(out, 24)) return kFault;
  uint8_t buf[24] = {};
  Put<uint8_t>(buf, 0, e->filetype);
  Put<uint16_t>(buf, 2, e->flags);
  Put<uint64_t>(buf, 8, e->rights_base);
  Put<uint64_t>(buf, 16, e->rights_inheriting);
  (void)c.mem.Write(out, buf);
  return kSuccess;
}

R FdFdstatSetFlags(Call& c, uint32_t fd, uint32_t flags) {
  FdEntry* e = c.st.Find(fd);
  if (e == nullptr || e->kind == FdKind::kDirectory) return kBadf;
  if (!(e->rights_base & kRightFdFdstatSetFlags)) return kNotcapable;
  if (flags & ~uint32_t{kFdflagsAll}) return kInval;
  // Linux cannot change O_SYNC/O_DSYNC after open.
  if ((flags & kFdflagsSyncMask) != (e->flags & kFdflagsSyncMask)) return kInval;
  const bool append = flags & kFdflagAppend;
  if (e->kind == FdKind::kFile && append != bool(e->flags & kFdflagAppend)) {
    // A file's description is ours alone (path_open made it).
    int host_flags = fcntl(e->host.get(), F_GETFL);
    if (host_flags < 0) return ErrnoFromHost(errno);
    host_flags = append ? (host_flags | O_APPEND) : (host_flags & ~O_APPEND);
    if (fcntl(e->host.get(), F_SETFL, host_flags) != 0) return ErrnoFromHost(errno);
  }
  e->flags = static_cast<uint16_t>(flags);
  return kSuccess;
}

R FdFdstatSetRights(Call& c, uint32_t fd, uint64_t base, uint64_t inheriting) {
  FdEntry* e = c.st.Find(fd);
  if (e == nullptr) return kBadf;
  // Rights can only be dropped.
  if ((base & ~e->rights_base) || (inheriting & ~e->rights_inheriting)) return kNotcapable;
  e->rights_base = base;
  e->rights_inheriting = inheriting;
  return kSuccess;
}

R FdPrestatGet(Call& c, uint32_t fd, uint32_t out) {
  const FdEntry* e = c.st.Find(fd);
  if (e == nullptr || !e->preopen_name) return kBadf;
  if (!c.mem.InBounds(out, 8)) return kFault;
  uint8_t buf[8] = {};
  Put<uint8_t>(buf, 0, 0);  // preopentype dir
  Put<uint32_t>(buf, 4, static_cast<uint32_t>(e->preopen_name->size()));
  (void)c.mem.Write(out, buf);
  return kSuccess;
}

R FdPrestatDirName(Call& c, uint32_t fd, uint32_t buf, uint32_t len) {
  const FdEntry* e = c.st.Find(fd);
  if (e == nullptr) return kBadf;
  if (!e->preopen_name) return kNotdir;  // as wasmtime
  const std::string& name = *e->preopen_name;
  if (len < name.size()) return kNametoolong;
  if (!c.mem.Write(buf, std::span(reinterpret_cast<const uint8_t*>(name.data()), name.size()))) {
    return kFault;
  }
  return kSuccess;
}

namespace {

template <typename T>
constexpr ValType WasmType() {
  if constexpr (std::is_same_v<T, uint64_t>) {
    return ValType::kI64;
  } else {
    static_assert(std::is_same_v<T, uint32_t>);
    return ValType::kI32;
  }
}

template <typename T>
T FromValue(const Value& v) {
  if constexpr (std::is_same_v<T, uint64_t>) {
    return static_cast<uint64_t>(v.i64());
  } else {
    return static_cast<uint32_t>(v.i32());
  }
}

constexpr const char* kModule = "wasi_snapshot_preview1";

// Adapts `fn`, taking the call and the wasm arguments as uint32_t (i32) or
// uint64_t (i64), to a HostFunc returning the errno as i32 (or nothing,
// for functions returning Result<void>).
template <typename Ret, typename... Args>
void Define(engine::Linker& linker, const char* name, Ret (*fn)(Call&, Args...)) {
  constexpr bool kHasErrno = std::is_same_v<Ret, R>;
  FuncType type;
  type.params = {WasmType<Args>()...};
  if constexpr (kHasErrno) type.results = {ValType::kI32};
  std::string fn_name = name;
  linker.Define(kModule, name, type,
                [fn, fn_name](engine::Caller& caller, std::span<const Value> args,
                              std::span<Value> results) -> Result<void> {
                  if (args.size() != sizeof...(Args) || results.size() != (kHasErrno ? 1u : 0u)) {
                    return MakeError(ErrorCode::kInternal, "WASI " + fn_name + ": wrong arity");
                  }
                  auto* context = dynamic_cast<WasiContext*>(caller.host_state());
                  if (context == nullptr) {
                    return MakeError(
                        ErrorCode::kFailedPrecondition,
                        "WASI " + fn_name + " called by an instance without a WASI context");
                  }
                  Call call{caller, context->state(), GuestMemory(caller.Memory())};
                  auto result = [&]<size_t... I>(std::index_sequence<I...>) {
                    return fn(call, FromValue<Args>(args[I])...);
                  }
                  (std::index_sequence_for<Args...>{});
                  if (!result) return tl::unexpected(std::move(result.error()));
                  if constexpr (kHasErrno) results[0] = Value::I32(*result);
                  return {};
                });
}

}  // namespace
}  // namespace wasi

WasiContext::WasiContext(std::unique_ptr<wasi::WasiState> state) : state_(std::move(state)) {}
WasiContext::~WasiContext() = default;

Result<std::unique_ptr<WasiContext>> WasiContext::Create(const WasiConfig& config) {
  using wasi::FdEntry;
  using wasi::FdKind;
  auto st = std::make_unique<wasi::WasiState>();
  for (const auto& arg : config.args) {
    if (arg.find('\0') != std::string::npos) {
      return MakeError(ErrorCode::kInvalidArgument, "WASI argument holds a NUL byte");
    }
  }
  st->args = config.args;
  for (const auto& [key, value] : config.env) {
    if (key.empty() || key.find_first_of(std::string_view("=\0", 2)) != std::string::npos ||
        value.find('\0') != std::string::npos) {
      return MakeError(ErrorCode::kInvalidArgument, "WASI environment variable '" + key +
                                                        "' has an empty key, '=' in its key, "
                                                        "or a NUL byte");
    }
    st->env.push_back(key + "=" + value);
  }
  if (config.max_open_fds < 3 + config.preopens.size()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "WASI max_open_fds is below stdio plus the preopens");
  }
  st->max_open_fds = config.max_open_fds;

  const WasiStdio* stdio[3] = {&config.stdin_io, &config.stdout_io, &config.stderr_io};
  for (int i = 0; i < 3; ++i) {
    auto entry = wasi::MakeStdio(i, *stdio[i]);
    if (!entry) return tl::unexpected(std::move(entry.error()));
    st->fds.emplace(static_cast<uint32_t>(i), std::move(*entry));
  }
  st->stdin_data = config.stdin_io.input;
  st->out.limit = config.stdout_io.capture_limit;
  st->err.limit = config.stderr_io.capture_limit;

  for (const auto& preopen : config.preopens) {
    if (preopen.guest_path.empty()) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "WASI preopen of " + preopen.host_path + " has an empty guest path");
    }
    FdEntry e;
    e.kind = FdKind::kDirectory;
    e.host = wasi::UniqueFd(open(preopen.host_path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!e.host.valid()) {
      return MakeError(ErrorCode::kNotFound,
                       "WASI preopen " + preopen.host_path + ": " + std::strerror(errno));
    }
    e.filetype = wasi::kFiletypeDirectory;
    e.rights_base = wasi::kDirectoryBaseRights;
    e.rights_inheriting = wasi::kDirectoryInheritingRights;
    e.read_only = preopen.read_only;
    e.preopen_name = preopen.guest_path;
    e.preopen_root =
        std::make_shared<const wasi::UniqueFd>(fcntl(e.host.get(), F_DUPFD_CLOEXEC, 0));
    if (!e.preopen_root->valid()) {
      return MakeError(ErrorCode::kResourceExhausted,
                       "WASI preopen " + preopen.host_path + ": " + std::strerror(errno));
    }
    uint32_t fd;
    (void)st->Insert(std::move(e), &fd);
  }
  return std::unique_ptr<WasiContext>(new WasiContext(std::move(st)));
}

std::string_view WasiContext::captured_stdout() const { return state_->out.data; }
std::string_view WasiContext::captured_stderr() const { return state_->err.data; }
bool WasiContext::stdout_truncated() const { return state_->out.truncated; }
bool WasiContext::stderr_truncated() const { return state_->err.truncated; }
std::optional<int> WasiContext::exit_code() const { return state_->exit_code; }

void WasiContext::OnCallStart() {
  for (auto* capture : {&state_->out, &state_->err}) {
    capture->data.clear();
    capture->truncated = false;
  }
  state_->exit_code.reset();
  state_->stdin_pos = 0;
}

void WasiContext::AnnotateOutput(CallOutput& output) {
  output.stdio.out = std::move(state_->out.data);
  output.stdio.err = std::move(state_->err.data);
  output.stdio.out_truncated = state_->out.truncated;
  output.stdio.err_truncated = state_->err.truncated;
  state_->out.data.clear();
  state_->err.data.clear();
}

void WasiContext::AnnotateError(Error& error) const {
  constexpr size_t kTail = 512;
  std::string_view err = state_->err.data;
  while (!err.empty() && (err.back() == '\n' || err.back() == '\r')) err.remove_suffix(1);
  if (err.empty()) return;
  if (err.size() > kTail) err = err.substr(err.size() - kTail);
  error.message += "; guest stderr: ";
  error.message += err;
}

void AddWasiToLinker(engine::Linker& linker) {
  using namespace wasi;  // NOLINT(build/namespaces): the table below reads better
  Define(linker, "args_get", ArgsGet);
  Define(linker, "args_sizes_get", ArgsSizesGet);
  Define(linker, "environ_get", EnvironGet);
  Define(linker, "environ_sizes_get", EnvironSizesGet);
  Define(linker, "clock_res_get", ClockResGet);
  Define(linker, "clock_time_get", ClockTimeGet);
  Define(linker, "fd_advise", FdAdvise);
  Define(linker, "fd_allocate", FdAllocate);
  Define(linker, "fd_close", FdClose);
  Define(linker, "fd_datasync", FdDatasync);
  Define(linker, "fd_fdstat_get", FdFdstatGet);
  Define(linker, "fd_fdstat_set_flags", FdFdstatSetFlags);
  Define(linker, "fd_fdstat_set_rights", FdFdstatSetRights);
  Define(linker, "fd_filestat_get", FdFilestatGet);
  Define(linker, "fd_filestat_set_size", FdFilestatSetSize);
  Define(linker, "fd_filestat_set_times", FdFilestatSetTimes);
  Define(linker, "fd_pread", FdPread);
  Define(linker, "fd_prestat_get", FdPrestatGet);
  Define(linker, "fd_prestat_dir_name", FdPrestatDirName);
  Define(linker, "fd_pwrite", FdPwrite);
  Define(linker, "fd_read", FdRead);
  Define(linker, "fd_readdir", FdReaddir);
  Define(linker, "fd_renumber", FdRenumber);
  Define(linker, "fd_seek", FdSeek);
  Define(linker, "fd_sync", FdSync);
  Define(linker, "fd_tell", FdTell);
  Define(linker, "fd_write", FdWrite);
  Define(linker, "path_create_directory", PathCreateDirectory);
  Define(linker, "path_filestat_get", PathFilestatGet);
  Define(linker, "path_filestat_set_times", PathFilestatSetTimes);
  Define(linker, "path_link", PathLink);
  Define(linker, "path_open", PathOpen);
  Define(linker, "path_readlink", PathReadlink);
  Define(linker, "path_remove_directory", PathRemoveDirectory);
  Define(linker, "path_rename", PathRename);
  Define(linker, "path_symlink", PathSymlink);
  Define(linker, "path_unlink_file", PathUnlinkFile);
  Define(linker, "poll_oneoff", PollOneoff);
  Define(linker, "proc_exit", ProcExit);
  Define(linker, "proc_raise", ProcRaise);
  Define(linker, "sched_yield", SchedYield);
  Define(linker, "random_get", RandomGet);
  Define(linker, "sock_accept", SockAccept);
  Define(linker, "sock_recv", SockRecv);
  Define(linker, "sock_send", SockSend);
  Define(linker, "sock_shutdown", SockShutdown);
}

}  // namespace keel::abi
