#include "abi/wasi_path.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <string_view>
#include <vector>

namespace keel::abi::wasi {
namespace {

// Symlinks expanded in one walk before ELOOP, as Linux's MAXSYMLINKS.
constexpr int kMaxSymlinks = 40;
// openat2 fails with EAGAIN when a concurrent rename or mount could have
// let ".." escape; it is retried, then the walk (which keeps its own
// stack of directories and so needs no such check) takes over.
constexpr int kOpenat2Attempts = 8;

std::atomic<bool> force_walk{false};
// 0: not tried yet, 1: works, 2: ENOSYS.
std::atomic<int> openat2_state{0};

// Reads the symlink `name` in `dirfd` ("" for an O_PATH fd of the link).
int ReadLink(int dirfd, const char* name, std::string* out) {
  char buf[kMaxPathBytes];
  ssize_t n = readlinkat(dirfd, name, buf, sizeof(buf));
  if (n < 0) return -errno;
  if (static_cast<size_t>(n) == sizeof(buf)) return -ENAMETOOLONG;
  out->assign(buf, static_cast<size_t>(n));
  return 0;
}

bool IsSymlinkAt(int dirfd, const char* name) {
  struct stat st;
  return fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode);
}

int WalkOpen(int dirfd, const std::string& path, int flags, mode_t mode) {
  if (path.empty()) return -ENOENT;
  // Directories entered below `dirfd`; ".." pops, so it can never climb
  // above `dirfd` however the tree is renamed meanwhile.
  std::vector<UniqueFd> stack;
  std::string rest = path;
  int links = 0;
  const bool follow_last = !(flags & O_NOFOLLOW);
  while (true) {
    if (rest.empty()) return -ENOENT;  // e.g. a symlink to ""
    if (rest[0] == '/') return -EPERM;
    const size_t end = rest.find('/');
    const std::string comp = rest.substr(0, end);
    const size_t next_start = end == std::string::npos ? end : rest.find_first_not_of('/', end);
    const bool trailing_slash = end != std::string::npos && next_start == std::string::npos;
    const bool last = next_start == std::string::npos;
    std::string next = last ? std::string() : rest.substr(next_start);
    const int cur = stack.empty() ? dirfd : stack.back().get();

    if (comp == "." || comp == "..") {
      if (comp == "..") {
        if (stack.empty()) return -EPERM;
        stack.pop_back();
      }
      if (last) {
        const int at = stack.empty() ? dirfd : stack.back().get();
        int fd = openat(at, ".", (flags & ~O_NOFOLLOW) | O_CLOEXEC, mode);
        return fd < 0 ? -errno : fd;
      }
      rest = std::move(next);
      continue;
    }

    if (!last) {
      UniqueFd fd(openat(cur, comp.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
      if (!fd.valid()) return -errno;
      struct stat st;
      if (fstat(fd.get(), &st) != 0) return -errno;
      if (S_ISLNK(st.st_mode)) {
        if (++links > kMaxSymlinks) return -ELOOP;
        std::string target;
        if (int e = ReadLink(fd.get(), "", &target); e != 0) return e;
        rest = target + "/" + next;
        continue;
      }
      if (!S_ISDIR(st.st_mode)) return -ENOTDIR;
      stack.push_back(std::move(fd));
      rest = std::move(next);
      continue;
    }

    // The last component. A trailing slash means "a directory", and
    // follows a symlink like POSIX does.
    const bool follow = follow_last || trailing_slash;
    if (trailing_slash && (flags & O_CREAT)) return -EISDIR;
    const int open_flags = flags | O_NOFOLLOW | O_CLOEXEC | (trailing_slash ? O_DIRECTORY : 0);
    int fd = openat(cur, comp.c_str(), open_flags, mode);
    const int open_errno = errno;
    bool is_link = false;
    if (fd >= 0 && follow && (flags & O_PATH)) {
      struct stat st;
      is_link = fstat(fd, &st) == 0 && S_ISLNK(st.st_mode);
      if (is_link) close(fd);
    } else if (fd < 0 && follow && (open_errno == ELOOP || open_errno == ENOTDIR)) {
      is_link = IsSymlinkAt(cur, comp.c_str());
    }
    if (!is_link) return fd >= 0 ? fd : -open_errno;
    if (++links > kMaxSymlinks) return -ELOOP;
    std::string target;
    if (int e = ReadLink(cur, comp.c_str(), &target); e != 0) return e;
    rest = trailing_slash ? target + "/" : target;
  }
}

bool SameFile(const struct stat& a, const struct stat& b) {
  return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

// How many directories `dir` lies below `root`, found by climbing ".."
// (so that symlinks in the path that led to `dir` do not matter), or
// -errno; -EPERM if `root` is never met.
int DepthBelow(int root, int dir) {
  struct stat root_st, st;
  if (fstat(root, &root_st) != 0 || fstat(dir, &st) != 0) return -errno;
  UniqueFd climbed;
  int cur = dir;
  for (int depth = 0; depth <= static_cast<int>(kMaxPathBytes / 2); ++depth) {
    if (SameFile(st, root_st)) return depth;
    UniqueFd up(openat(cur, "..", O_PATH | O_DIRECTORY | O_CLOEXEC));
    struct stat up_st;
    if (!up.valid() || fstat(up.get(), &up_st) != 0) return -errno;
    if (SameFile(up_st, st)) return -EPERM;  // the host's "/": root was not above
    climbed = std::move(up);
    cur = climbed.get();
    st = up_st;
  }
  return -EPERM;
}

}  // namespace

int CheckSymlinkTarget(int dirfd, int parent_fd, const std::string& target) {
  if (!target.empty() && target[0] == '/') return -EPERM;
  int depth = DepthBelow(dirfd, parent_fd);
  if (depth < 0) return depth;
  size_t start = 0;
  while (start < target.size()) {
    size_t end = target.find('/', start);
    if (end == std::string::npos) end = target.size();
    const std::string_view comp(target.data() + start, end - start);
    if (comp == "..") {
      if (--depth < 0) return -EPERM;
    } else if (!comp.empty() && comp != ".") {
      ++depth;
    }
    start = end + 1;
  }
  return 0;
}

void ForcePathWalkForTesting(bool on) { force_walk.store(on); }

int OpenBeneath(int dirfd, const std::string& path, int flags, mode_t mode) {
  if (!force_walk.load() && openat2_state.load(std::memory_order_relaxed) != 2) {
    struct open_how how = {};
    how.flags = static_cast<uint64_t>(flags | O_CLOEXEC);
    how.mode = (flags & O_CREAT) ? mode : 0;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
    for (int attempt = 0; attempt < kOpenat2Attempts; ++attempt) {
      long fd = syscall(SYS_openat2, dirfd, path.c_str(), &how, sizeof(how));
      if (fd >= 0) {
        openat2_state.store(1, std::memory_order_relaxed);
        return static_cast<int>(fd);
      }
      if (errno == EAGAIN || errno == EINTR) continue;
      if (errno == ENOSYS) {
        openat2_state.store(2, std::memory_order_relaxed);
        break;
      }
      // RESOLVE_BENEATH reports every escape as EXDEV.
      return errno == EXDEV ? -EPERM : -errno;
    }
  }
  return WalkOpen(dirfd, path, flags, mode);
}

int ResolveParent(int dirfd, const std::string& path, ParentPath* out) {
  if (path.empty()) return -ENOENT;
  if (path[0] == '/') return -EPERM;
  const size_t end = path.find_last_not_of('/');
  const bool trailing_slash = end + 1 < path.size();
  const std::string base = path.substr(0, end + 1);
  const size_t slash = base.rfind('/');
  const std::string dir = slash == std::string::npos ? std::string() : base.substr(0, slash + 1);
  const std::string name = slash == std::string::npos ? base : base.substr(slash + 1);
  if (name == "." || name == "..") {
    // The kernel refuses to create, remove or rename "." and "..", but a
    // path climbing out must still be reported as the escape it is.
    int fd = OpenBeneath(dirfd, path, O_PATH | O_DIRECTORY, 0);
    if (fd < 0) return fd;
    close(fd);
  }
  if (dir.empty()) {
    out->fd = dirfd;
  } else {
    int fd = OpenBeneath(dirfd, dir, O_PATH | O_DIRECTORY, 0);
    if (fd < 0) return fd;
    out->holder = UniqueFd(fd);
    out->fd = fd;
  }
  out->name = trailing_slash ? name + "/" : name;
  return 0;
}

}  // namespace keel::abi::wasi
