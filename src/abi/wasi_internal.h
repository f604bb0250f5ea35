// Internals shared by the WASI preview1 implementation files: the ABI's
// constants and layouts, guest memory access, the descriptor table.
#ifndef KEEL_ABI_WASI_INTERNAL_H_
#define KEEL_ABI_WASI_INTERNAL_H_

#include <bit>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "abi/wasi.h"
#include "engine/engine.h"
#include "keel/status.h"

namespace keel::abi::wasi {

static_assert(std::endian::native == std::endian::little,
              "guest memory is little-endian; loads and stores copy bytes as they are");

// WASI errno values.
using Errno = uint16_t;
inline constexpr Errno kSuccess = 0;
inline constexpr Errno kAgain = 6;
inline constexpr Errno kBadf = 8;
inline constexpr Errno kExist = 20;
inline constexpr Errno kFault = 21;
inline constexpr Errno kFbig = 22;
inline constexpr Errno kIlseq = 25;
inline constexpr Errno kIntr = 27;
inline constexpr Errno kInval = 28;
inline constexpr Errno kIo = 29;
inline constexpr Errno kIsdir = 31;
inline constexpr Errno kLoop = 32;
inline constexpr Errno kMfile = 33;
inline constexpr Errno kNametoolong = 37;
inline constexpr Errno kNoent = 44;
inline constexpr Errno kNomem = 48;
inline constexpr Errno kNosys = 52;
inline constexpr Errno kNotdir = 54;
inline constexpr Errno kNotsock = 57;
inline constexpr Errno kNotsup = 58;
inline constexpr Errno kOverflow = 61;
inline constexpr Errno kPerm = 63;
inline constexpr Errno kPipe = 64;
inline constexpr Errno kSpipe = 70;
inline constexpr Errno kNotcapable = 76;

// Rights.
inline constexpr uint64_t kRightFdDatasync = 1ull << 0;
inline constexpr uint64_t kRightFdRead = 1ull << 1;
inline constexpr uint64_t kRightFdSeek = 1ull << 2;
inline constexpr uint64_t kRightFdFdstatSetFlags = 1ull << 3;
inline constexpr uint64_t kRightFdSync = 1ull << 4;
inline constexpr uint64_t kRightFdTell = 1ull << 5;
inline constexpr uint64_t kRightFdWrite = 1ull << 6;
inline constexpr uint64_t kRightFdAdvise = 1ull << 7;
inline constexpr uint64_t kRightFdAllocate = 1ull << 8;
inline constexpr uint64_t kRightPathCreateDirectory = 1ull << 9;
inline constexpr uint64_t kRightPathCreateFile = 1ull << 10;
inline constexpr uint64_t kRightPathLinkSource = 1ull << 11;
inline constexpr uint64_t kRightPathLinkTarget = 1ull << 12;
inline constexpr uint64_t kRightPathOpen = 1ull << 13;
inline constexpr uint64_t kRightFdReaddir = 1ull << 14;
inline constexpr uint64_t kRightPathReadlink = 1ull << 15;
inline constexpr uint64_t kRightPathRenameSource = 1ull << 16;
inline constexpr uint64_t kRightPathRenameTarget = 1ull << 17;
inline constexpr uint64_t kRightPathFilestatGet = 1ull << 18;
inline constexpr uint64_t kRightPathFilestatSetSize = 1ull << 19;
inline constexpr uint64_t kRightPathFilestatSetTimes = 1ull << 20;
inline constexpr uint64_t kRightFdFilestatGet = 1ull << 21;
inline constexpr uint64_t kRightFdFilestatSetSize = 1ull << 22;
inline constexpr uint64_t kRightFdFilestatSetTimes = 1ull << 23;
inline constexpr uint64_t kRightPathSymlink = 1ull << 24;
inline constexpr uint64_t kRightPathRemoveDirectory = 1ull << 25;
inline constexpr uint64_t kRightPathUnlinkFile = 1ull << 26;
inline constexpr uint64_t kRightPollFdReadwrite = 1ull << 27;

// What a directory can do to itself and what it hands to files opened
// beneath it. The same for read-only preopens (as in wasmtime): their
// read-only-ness is enforced with EPERM, so that libc's open() still asks
// for write rights and gets a clear error instead of a read-only fd.
inline constexpr uint64_t kDirectoryBaseRights =
    kRightPathCreateDirectory | kRightPathCreateFile | kRightPathLinkSource | kRightPathLinkTarget |
    kRightPathOpen | kRightFdReaddir | kRightPathReadlink | kRightPathRenameSource |
    kRightPathRenameTarget | kRightPathSymlink | kRightPathRemoveDirectory | kRightPathUnlinkFile |
    kRightPathFilestatGet | kRightPathFilestatSetSize | kRightPathFilestatSetTimes |
    kRightFdFilestatGet | kRightFdFilestatSetTimes | kRightFdFdstatSetFlags;
inline constexpr uint64_t kFileRights =
    kRightFdDatasync | kRightFdRead | kRightFdSeek | kRightFdFdstatSetFlags | kRightFdSync |
    kRightFdTell | kRightFdWrite | kRightFdAdvise | kRightFdAllocate | kRightFdFilestatGet |
    kRightFdFilestatSetSize | kRightFdFilestatSetTimes | kRightPollFdReadwrite;
inline constexpr uint64_t kDirectoryInheritingRights = kDirectoryBaseRights | kFileRights;
// Rights that make path_open open the host file for writing.
inline constexpr uint64_t kWriteRights = kRightFdWrite | kRightFdAllocate | kRightFdFilestatSetSize;

// File types.
inline constexpr uint8_t kFiletypeUnknown = 0;
inline constexpr uint8_t kFiletypeBlockDevice = 1;
inline constexpr uint8_t kFiletypeCharacterDevice = 2;
inline constexpr uint8_t kFiletypeDirectory = 3;
inline constexpr uint8_t kFiletypeRegularFile = 4;
inline constexpr uint8_t kFiletypeSocketStream = 6;
inline constexpr uint8_t kFiletypeSymbolicLink = 7;

// fdflags.
inline constexpr uint16_t kFdflagAppend = 1;
inline constexpr uint16_t kFdflagDsync = 2;
inline constexpr uint16_t kFdflagNonblock = 4;
inline constexpr uint16_t kFdflagRsync = 8;
inline constexpr uint16_t kFdflagSync = 16;
inline constexpr uint16_t kFdflagsAll = 31;
inline constexpr uint16_t kFdflagsSyncMask = kFdflagDsync | kFdflagRsync | kFdflagSync;

// oflags, lookupflags, fstflags.
inline constexpr uint32_t kOflagCreat = 1;
inline constexpr uint32_t kOflagDirectory = 2;
inline constexpr uint32_t kOflagExcl = 4;
inline constexpr uint32_t kOflagTrunc = 8;
inline constexpr uint32_t kLookupSymlinkFollow = 1;
inline constexpr uint32_t kFstflagAtim = 1;
inline constexpr uint32_t kFstflagAtimNow = 2;
inline constexpr uint32_t kFstflagMtim = 4;
inline constexpr uint32_t kFstflagMtimNow = 8;

// Longest path a guest may pass; longer ones fail with ENAMETOOLONG before
// anything is copied.
inline constexpr uint32_t kMaxPathBytes = 4096;

// Owns a host file descriptor.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.Release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd();

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int Release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_ = -1;
};

// The guest's linear memory, bounds-checked. Offsets are 64-bit so that
// ptr + len never wraps.
class GuestMemory {
 public:
  explicit GuestMemory(std::span<uint8_t> bytes) : bytes_(bytes) {}

  // The `len` bytes at `ptr`; nullopt when any of them is out of bounds.
  std::optional<std::span<uint8_t>> Slice(uint64_t ptr, uint64_t len) const {
    if (ptr > bytes_.size() || len > bytes_.size() - ptr) return std::nullopt;
    return bytes_.subspan(ptr, len);
  }
  bool InBounds(uint64_t ptr, uint64_t len) const { return Slice(ptr, len).has_value(); }

  template <typename T>
  bool Load(uint64_t ptr, T* out) const {
    auto s = Slice(ptr, sizeof(T));
    if (!s) return false;
    std::memcpy(out, s->data(), sizeof(T));
    return true;
  }
  template <typename T>
  bool Store(uint64_t ptr, T value) {
    auto s = Slice(ptr, sizeof(T));
    if (!s) return false;
    std::memcpy(s->data(), &value, sizeof(T));
    return true;
  }
  bool Write(uint64_t ptr, std::span<const uint8_t> data) {
    auto s = Slice(ptr, data.size());
    if (!s) return false;
    if (!data.empty()) std::memcpy(s->data(), data.data(), data.size());
    return true;
  }

 private:
  std::span<uint8_t> bytes_;
};

// Little-endian field writes into a struct being built for the guest.
template <typename T>
void Put(std::span<uint8_t> out, size_t offset, T value) {
  std::memcpy(out.data() + offset, &value, sizeof(T));
}

enum class FdKind : uint8_t { kStdio, kFile, kDirectory };

// The readdir cookies a directory descriptor handed out. The guest gets
// small numbers (1, 2, ...; 0 is the start) standing for the kernel's
// d_off positions: d_off survives entries being added or removed between
// calls, unlike an index, but is 64-bit, and wasi-libc's telldir() keeps
// cookies in a 32-bit long.
struct DirCookies {
  std::vector<int64_t> offsets;                   // cookie n -> offsets[n - 1]
  std::unordered_map<int64_t, uint64_t> cookies;  // and back
};

// WasiContext::Reset (wasi_snapshot.cc) rebuilds entries field by field:
// a field added here must be copied there too.
struct FdEntry {
  FdKind kind = FdKind::kFile;
  // Which stream, for kStdio (0, 1 or 2), and where it goes.
  int stdio = -1;
  WasiStdio::Kind stdio_kind = WasiStdio::Kind::kNull;
  // Absent for null and buffered stdio.
  UniqueFd host;
  uint8_t filetype = kFiletypeUnknown;
  uint64_t rights_base = 0;
  uint64_t rights_inheriting = 0;
  // fdflags as the guest set them. The guest's NONBLOCK is honoured by the
  // stream reads and writes, not set on the host fd (stdio shares its
  // description with the host).
  uint16_t flags = 0;
  // Opened beneath a read-only preopen.
  bool read_only = false;
  // A pipe, socket, tty or other device: reads and writes may block, so
  // they wait in poll() where an interrupt can wake them.
  bool stream = false;
  // The guest name of a preopened directory.
  std::optional<std::string> preopen_name;
  // Directories: the preopen they lie beneath (its own fd, duplicated so
  // that it outlives the guest closing the preopen). Symlinks created
  // beneath must point inside it.
  std::shared_ptr<const UniqueFd> preopen_root;
  // Directories: the cookies fd_readdir gave out, made on first use.
  std::unique_ptr<DirCookies> dir_cookies;
};

struct Capture {
  std::string data;
  size_t limit = 0;
  bool truncated = false;
};

// Wakes a host call blocked in poll() when the call is interrupted. Shared
// with the interrupt hook, which may run on another thread.
class Waker {
 public:
  Waker();
  ~Waker();
  Waker(const Waker&) = delete;
  Waker& operator=(const Waker&) = delete;
  bool valid() const { return fd_ >= 0; }
  int fd() const { return fd_; }
  void Wake() const;
  void Drain() const;

 private:
  int fd_ = -1;
};

struct WasiState {
  std::vector<std::string> args;
  std::vector<std::string> env;  // "KEY=VALUE"
  std::map<uint32_t, FdEntry> fds;
  uint32_t max_open_fds = 1024;
  std::string stdin_data;
  size_t stdin_pos = 0;
  Capture out;
  Capture err;
  std::optional<int> exit_code;
  std::shared_ptr<Waker> waker;

  FdEntry* Find(uint32_t fd) {
    auto it = fds.find(fd);
    return it == fds.end() ? nullptr : &it->second;
  }
  // The lowest free descriptor number, or EMFILE at the limit.
  Errno Insert(FdEntry entry, uint32_t* fd);
};

// A descriptor as WasiContext::Snapshot saw it.
struct SavedFd {
  FdEntry fields;  // without `host`; `dir_cookies` copied
  // What a rebuilt entry's host fd is duplicated from: preopens share their
  // root, other descriptors hold a duplicate taken at the snapshot (null
  // when the entry has no host fd).
  std::shared_ptr<const UniqueFd> source;
  int host_number = -1;  // the entry's own host fd number at the snapshot
  // Files: their position and status flags (shared with `source`).
  std::optional<int64_t> offset;
  int status_flags = -1;
};

// The state WasiContext::Reset returns to. Arguments, environment and
// stdin's bytes cannot change and are not kept.
struct WasiSnapshot {
  std::map<uint32_t, SavedFd> fds;
  size_t stdin_pos = 0;
  Capture out;
  Capture err;
  std::optional<int> exit_code;
};

// One host call: the caller, its WASI state and memory.
struct Call {
  engine::Caller& caller;
  WasiState& st;
  GuestMemory mem;
};

// Host errno -> WASI errno.
Errno ErrnoFromHost(int host_errno);
uint8_t FiletypeFromMode(uint32_t mode);
// Fills the 64-byte filestat at `ptr` from fstat() of `host_fd`.
Errno WriteFilestat(Call& c, uint32_t ptr, int host_fd);
// Reads the guest path at [ptr, ptr+len): EFAULT, ENAMETOOLONG, EINVAL for
// NUL bytes, EILSEQ for invalid UTF-8 (paths are UTF-8 strings in WASI).
Errno ReadPath(const GuestMemory& mem, uint32_t ptr, uint32_t len, std::string* out);
// The directory `fd` for a path operation needing `right`: EBADF when it is
// not open or stdio, ENOTDIR for a file, ENOTCAPABLE without the right.
Errno GetDirectory(Call& c, uint32_t fd, uint64_t right, FdEntry** out);
// Converts timestamps of set-times calls; EINVAL for bad fstflags.
Errno TimespecsFromFst(uint64_t atim, uint64_t mtim, uint32_t fst_flags, struct timespec out[2]);

// The functions, by file. Each returns the WASI errno or an Error that ends
// the guest's call (interrupt, proc_exit, no WASI context).
using R = Result<Errno>;

// wasi.cc
R ArgsGet(Call& c, uint32_t argv, uint32_t argv_buf);
R ArgsSizesGet(Call& c, uint32_t argc_out, uint32_t size_out);
R EnvironGet(Call& c, uint32_t environ, uint32_t environ_buf);
R EnvironSizesGet(Call& c, uint32_t count_out, uint32_t size_out);
R ClockResGet(Call& c, uint32_t id, uint32_t out);
R ClockTimeGet(Call& c, uint32_t id, uint64_t precision, uint32_t out);
R RandomGet(Call& c, uint32_t buf, uint32_t len);
R SchedYield(Call& c);
Result<void> ProcExit(Call& c, uint32_t code);
R ProcRaise(Call& c, uint32_t sig);
R SockAccept(Call& c, uint32_t fd, uint32_t flags, uint32_t out);
R SockRecv(Call& c, uint32_t fd, uint32_t iovs, uint32_t iovs_len, uint32_t flags,
           uint32_t nread_out, uint32_t flags_out);
R SockSend(Call& c, uint32_t fd, uint32_t iovs, uint32_t iovs_len, uint32_t flags,
           uint32_t nwritten_out);
R SockShutdown(Call& c, uint32_t fd, uint32_t how);
R FdClose(Call& c, uint32_t fd);
R FdRenumber(Call& c, uint32_t from, uint32_t to);
R FdFdstatGet(Call& c, uint32_t fd, uint32_t out);
R FdFdstatSetFlags(Call& c, uint32_t fd, uint32_t flags);
R FdFdstatSetRights(Call& c, uint32_t fd, uint64_t base, uint64_t inheriting);
R FdPrestatGet(Call& c, uint32_t fd, uint32_t out);
R FdPrestatDirName(Call& c, uint32_t fd, uint32_t buf, uint32_t len);

// wasi_io.cc
R FdRead(Call& c, uint32_t fd, uint32_t iovs, uint32_t iovs_len, uint32_t nread_out);
R FdPread(Call& c, uint32_t fd, uint32_t iovs, uint32_t iovs_len, uint64_t offset,
          uint32_t nread_out);
R FdWrite(Call& c, uint32_t fd, uint32_t iovs, uint32_t iovs_len, uint32_t nwritten_out);
R FdPwrite(Call& c, uint32_t fd, uint32_t iovs, uint32_t iovs_len, uint64_t offset,
           uint32_t nwritten_out);
R FdSeek(Call& c, uint32_t fd, uint64_t offset, uint32_t whence, uint32_t out);
R FdTell(Call& c, uint32_t fd, uint32_t out);
R PollOneoff(Call& c, uint32_t in, uint32_t out, uint32_t nsubscriptions, uint32_t nevents_out);

// wasi_fs.cc
R FdAdvise(Call& c, uint32_t fd, uint64_t offset, uint64_t len, uint32_t advice);
R FdAllocate(Call& c, uint32_t fd, uint64_t offset, uint64_t len);
R FdDatasync(Call& c, uint32_t fd);
R FdSync(Call& c, uint32_t fd);
R FdFilestatGet(Call& c, uint32_t fd, uint32_t out);
R FdFilestatSetSize(Call& c, uint32_t fd, uint64_t size);
R FdFilestatSetTimes(Call& c, uint32_t fd, uint64_t atim, uint64_t mtim, uint32_t fst_flags);
R FdReaddir(Call& c, uint32_t fd, uint32_t buf, uint32_t buf_len, uint64_t cookie,
            uint32_t bufused_out);
R PathCreateDirectory(Call& c, uint32_t fd, uint32_t path, uint32_t path_len);
R PathFilestatGet(Call& c, uint32_t fd, uint32_t flags, uint32_t path, uint32_t path_len,
                  uint32_t out);
R PathFilestatSetTimes(Call& c, uint32_t fd, uint32_t flags, uint32_t path, uint32_t path_len,
                       uint64_t atim, uint64_t mtim, uint32_t fst_flags);
R PathLink(Call& c, uint32_t old_fd, uint32_t old_flags, uint32_t old_path, uint32_t old_len,
           uint32_t new_fd, uint32_t new_path, uint32_t new_len);
R PathOpen(Call& c, uint32_t fd, uint32_t dirflags, uint32_t path, uint32_t path_len,
           uint32_t oflags, uint64_t rights_base, uint64_t rights_inheriting, uint32_t fdflags,
           uint32_t fd_out);
R PathReadlink(Call& c, uint32_t fd, uint32_t path, uint32_t path_len, uint32_t buf,
               uint32_t buf_len, uint32_t bufused_out);
R PathRemoveDirectory(Call& c, uint32_t fd, uint32_t path, uint32_t path_len);
R PathRename(Call& c, uint32_t old_fd, uint32_t old_path, uint32_t old_len, uint32_t new_fd,
             uint32_t new_path, uint32_t new_len);
R PathSymlink(Call& c, uint32_t old_path, uint32_t old_len, uint32_t fd, uint32_t new_path,
              uint32_t new_len);
R PathUnlinkFile(Call& c, uint32_t fd, uint32_t path, uint32_t path_len);

}  // namespace keel::abi::wasi

#endif  // KEEL_ABI_WASI_INTERNAL_H_
