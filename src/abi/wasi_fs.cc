// WASI preview1: the filesystem. Every path is resolved beneath its
// directory descriptor by OpenBeneath/ResolveParent (wasi_path.h); the
// descriptors of read-only preopens, and everything opened beneath them,
// refuse changes with EPERM, as wasmtime does.
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "abi/wasi_internal.h"
#include "abi/wasi_path.h"

namespace keel::abi::wasi {
namespace {

// The file behind `fd` for an operation needing `right`: EBADF for stdio
// and directories (as wasmtime), ENOTCAPABLE without the right.
Errno GetFile(Call& c, uint32_t fd, uint64_t right, FdEntry** out) {
  FdEntry* e = c.st.Find(fd);
  if (e == nullptr || e->kind != FdKind::kFile) return kBadf;
  if ((e->rights_base & right) != right) return kNotcapable;
  *out = e;
  return kSuccess;
}

// Bounds the memory one directory descriptor's cookies can take.
constexpr size_t kMaxDirCookies = size_t{1} << 20;

Errno FromResult(int r) { return r < 0 ? ErrnoFromHost(-r) : kSuccess; }

Errno Retry(int (*fn)(int), int fd) {
  int r;
  do {
    r = fn(fd);
  } while (r < 0 && errno == EINTR);
  return r < 0 ? ErrnoFromHost(errno) : kSuccess;
}

uint8_t FiletypeFromDtype(unsigned char type) {
  switch (type) {
    case DT_BLK:
      return kFiletypeBlockDevice;
    case DT_CHR:
      return kFiletypeCharacterDevice;
    case DT_DIR:
      return kFiletypeDirectory;
    case DT_REG:
      return kFiletypeRegularFile;
    case DT_SOCK:
      return kFiletypeSocketStream;
    case DT_LNK:
      return kFiletypeSymbolicLink;
    default:
      return kFiletypeUnknown;
  }
}

// Reads the path and finds its parent beneath the directory.
Errno ParentOf(Call& c, const FdEntry& dir, uint32_t path_ptr, uint32_t path_len, ParentPath* out) {
  std::string path;
  if (Errno err = ReadPath(c.mem, path_ptr, path_len, &path); err != kSuccess) return err;
  return FromResult(ResolveParent(dir.host.get(), path, out));
}

// Opens the path as O_PATH (for stat, set-times, readlink), following a
// final symlink only if asked.
Errno OpenPathOnly(Call& c, const FdEntry& dir, uint32_t path_ptr, uint32_t path_len, bool follow,
                   UniqueFd* out) {
  std::string path;
  if (Errno err = ReadPath(c.mem, path_ptr, path_len, &path); err != kSuccess) return err;
  int fd = OpenBeneath(dir.host.get(), path, O_PATH | (follow ? 0 : O_NOFOLLOW), 0);
  if (fd < 0) return ErrnoFromHost(-fd);
  *out = UniqueFd(fd);
  return kSuccess;
}

}  // namespace

R FdAdvise(Call& c, uint32_t fd, uint64_t offset, uint64_t len, uint32_t advice) {
  static constexpr int kAdvice[] = {POSIX_FADV_NORMAL,   POSIX_FADV_SEQUENTIAL, POSIX_FADV_RANDOM,
                                    POSIX_FADV_WILLNEED, POSIX_FADV_DONTNEED,   POSIX_FADV_NOREUSE};
  FdEntry* e;
  if (Errno err = GetFile(c, fd, kRightFdAdvise, &e); err != kSuccess) return err;
  if (advice > 5 || offset > INT64_MAX || len > INT64_MAX) return kInval;
  return ErrnoFromHost(posix_fadvise(e->host.get(), static_cast<off_t>(offset),
                                     static_cast<off_t>(len), kAdvice[advice]));
}

R FdAllocate(Call& c, uint32_t fd, uint64_t offset, uint64_t len) {
  FdEntry* e;
  if (Errno err = GetFile(c, fd, kRightFdAllocate, &e); err != kSuccess) return err;
  if (e->read_only) return kPerm;
  if (offset > INT64_MAX || len > INT64_MAX) return kInval;
  if (offset + len > INT64_MAX) return kFbig;
  int r;
  do {
    r = posix_fallocate(e->host.get(), static_cast<off_t>(offset), static_cast<off_t>(len));
  } while (r == EINTR);
  return ErrnoFromHost(r);
}

R FdDatasync(Call& c, uint32_t fd) {
  FdEntry* e;
  if (Errno err = GetFile(c, fd, kRightFdDatasync, &e); err != kSuccess) return err;
  return Retry(fdatasync, e->host.get());
}

R FdSync(Call& c, uint32_t fd) {
  FdEntry* e;
  if (Errno err = GetFile(c, fd, kRightFdSync, &e); err != kSuccess) return err;
  return Retry(fsync, e->host.get());
}

R FdFilestatGet(Call& c, uint32_t fd, uint32_t out) {
  FdEntry* e = c.st.Find(fd);
  if (e == nullptr) return kBadf;
  if (!(e->rights_base & kRightFdFilestatGet)) return kNotcapable;
  if (e->kind == FdKind::kStdio) {
    // As wasmtime: stdio has only a type.
    uint8_t buf[64] = {};
    Put<uint8_t>(buf, 16, e->filetype);
    return c.mem.Write(out, buf) ? kSuccess : kFault;
  }
  return WriteFilestat(c, out, e->host.get());
}

R FdFilestatSetSize(Call& c, uint32_t fd, uint64_t size) {
  FdEntry* e;
  if (Errno err = GetFile(c, fd, kRightFdFilestatSetSize, &e); err != kSuccess) return err;
  if (e->read_only) return kPerm;
  if (size > INT64_MAX) return kInval;
  int r;
  do {
    r = ftruncate(e->host.get(), static_cast<off_t>(size));
  } while (r < 0 && errno == EINTR);
  return r < 0 ? ErrnoFromHost(errno) : kSuccess;
}

R FdFilestatSetTimes(Call& c, uint32_t fd, uint64_t atim, uint64_t mtim, uint32_t fst_flags) {
  FdEntry* e = c.st.Find(fd);
  if (e == nullptr || e->kind == FdKind::kStdio) return kBadf;
  if (!(e->rights_base & kRightFdFilestatSetTimes)) return kNotcapable;
  struct timespec times[2];
  if (Errno err = TimespecsFromFst(atim, mtim, fst_flags, times); err != kSuccess) return err;
  if (e->read_only) return kPerm;
  return futimens(e->host.get(), times) < 0 ? ErrnoFromHost(errno) : kSuccess;
}

R FdReaddir(Call& c, uint32_t fd, uint32_t buf, uint32_t buf_len, uint64_t cookie,
            uint32_t bufused_out) {
  FdEntry* e = c.st.Find(fd);
  if (e == nullptr || e->kind == FdKind::kStdio) return kBadf;
  if (e->kind != FdKind::kDirectory) return kNotdir;
  if (!(e->rights_base & kRightFdReaddir)) return kNotcapable;
  auto dst = c.mem.Slice(buf, buf_len);
  if (!dst || !c.mem.InBounds(bufused_out, 4)) return kFault;
  if (!e->dir_cookies) e->dir_cookies = std::make_unique<DirCookies>();
  DirCookies& cookies = *e->dir_cookies;
  if (cookie > cookies.offsets.size()) return kInval;
  const int dir = e->host.get();
  const off_t start = cookie == 0 ? 0 : static_cast<off_t>(cookies.offsets[cookie - 1]);
  if (lseek(dir, start, SEEK_SET) < 0) return ErrnoFromHost(errno);
  size_t used = 0;
  alignas(struct dirent64) char entries[16384];
  while (used < dst->size()) {
    ssize_t n = getdents64(dir, entries, sizeof(entries));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoFromHost(errno);
    }
    if (n == 0) break;
    for (ssize_t at = 0; at < n && used < dst->size();) {
      const auto* d = reinterpret_cast<const struct dirent64*>(entries + at);
      at += d->d_reclen;
      const size_t name_len = std::strlen(d->d_name);
      uint8_t type = FiletypeFromDtype(d->d_type);
      if (d->d_type == DT_UNKNOWN) {
        struct stat st;
        if (fstatat(dir, d->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
          type = FiletypeFromMode(st.st_mode);
        }
      }
      uint8_t header[24] = {};
      auto it = cookies.cookies.find(d->d_off);
      if (it == cookies.cookies.end()) {
        if (cookies.offsets.size() >= kMaxDirCookies) return kNomem;
        cookies.offsets.push_back(d->d_off);
        it = cookies.cookies.emplace(d->d_off, cookies.offsets.size()).first;
      }
      Put<uint64_t>(header, 0, it->second);
      Put<uint64_t>(header, 8, d->d_ino);
      Put<uint32_t>(header, 16, static_cast<uint32_t>(name_len));
      Put<uint8_t>(header, 20, type);
      // A full buffer (the last entry cut short) tells libc to come back
      // with a bigger one.
      size_t k = std::min(sizeof(header), dst->size() - used);
      std::memcpy(dst->data() + used, header, k);
      used += k;
      k = std::min(name_len, dst->size() - used);
      std::memcpy(dst->data() + used, d->d_name, k);
      used += k;
    }
  }
  (void)c.mem.Store<uint32_t>(bufused_out, static_cast<uint32_t>(used));
  return kSuccess;
}

R PathCreateDirectory(Call& c, uint32_t fd, uint32_t path, uint32_t path_len) {
  FdEntry* dir;
  if (Errno err = GetDirectory(c, fd, kRightPathCreateDirectory, &dir); err != kSuccess) {
    return err;
  }
  if (dir->read_only) return kPerm;
  ParentPath parent;
  if (Errno err = ParentOf(c, *dir, path, path_len, &parent); err != kSuccess) return err;
  return mkdirat(parent.fd, parent.name.c_str(), 0777) < 0 ? ErrnoFromHost(errno) : kSuccess;
}

R PathFilestatGet(Call& c, uint32_t fd, uint32_t flags, uint32_t path, uint32_t path_len,
                  uint32_t out) {
  FdEntry* dir;
  if (Errno err = GetDirectory(c, fd, kRightPathFilestatGet, &dir); err != kSuccess) return err;
  if (flags & ~kLookupSymlinkFollow) return kInval;
  if (!c.mem.InBounds(out, 64)) return kFault;
  UniqueFd target;
  if (Errno err = OpenPathOnly(c, *dir, path, path_len, flags & kLookupSymlinkFollow, &target);
      err != kSuccess) {
    return err;
  }
  return WriteFilestat(c, out, target.get());
}

R PathFilestatSetTimes(Call& c, uint32_t fd, uint32_t flags, uint32_t path, uint32_t path_len,
                       uint64_t atim, uint64_t mtim, uint32_t fst_flags) {
  FdEntry* dir;
  if (Errno err = GetDirectory(c, fd, kRightPathFilestatSetTimes, &dir); err != kSuccess) {
    return err;
  }
  if (flags & ~kLookupSymlinkFollow) return kInval;
  struct timespec times[2];
  if (Errno err = TimespecsFromFst(atim, mtim, fst_flags, times); err != kSuccess) return err;
  if (dir->read_only) return kPerm;
  UniqueFd target;
  if (Errno err = OpenPathOnly(c, *dir, path, path_len, flags & kLookupSymlinkFollow, &target);
      err != kSuccess) {
    return err;
  }
  // On the resolved object itself (a symlink's own times without follow).
  if (utimensat(target.get(), "", times, AT_EMPTY_PATH) < 0) return ErrnoFromHost(errno);
  return kSuccess;
}

R PathLink(Call& c, uint32_t old_fd, uint32_t old_flags, uint32_t old_path, uint32_t old_len,
           uint32_t new_fd, uint32_t new_path, uint32_t new_len) {
  FdEntry* old_dir;
  FdEntry* new_dir;
  if (Errno err = GetDirectory(c, old_fd, kRightPathLinkSource, &old_dir); err != kSuccess) {
    return err;
  }
  if (Errno err = GetDirectory(c, new_fd, kRightPathLinkTarget, &new_dir); err != kSuccess) {
    return err;
  }
  if (old_dir->read_only || new_dir->read_only) return kPerm;
  // As wasmtime: following would resolve the source outside the kernel's
  // beneath-checks, so it is refused.
  if (old_flags != 0) return kInval;
  ParentPath from, to;
  if (Errno err = ParentOf(c, *old_dir, old_path, old_len, &from); err != kSuccess) return err;
  if (Errno err = ParentOf(c, *new_dir, new_path, new_len, &to); err != kSuccess) return err;
  if (from.name.back() == '/') {
    // "name/" would make the kernel follow the link; resolve it here, and
    // directories cannot be hard-linked anyway.
    std::string path;
    (void)ReadPath(c.mem, old_path, old_len, &path);
    int fd = OpenBeneath(old_dir->host.get(), path, O_PATH | O_DIRECTORY, 0);
    if (fd < 0) return ErrnoFromHost(-fd);
    close(fd);
    return kPerm;
  }
  if (linkat(from.fd, from.name.c_str(), to.fd, to.name.c_str(), 0) < 0) {
    return ErrnoFromHost(errno);
  }
  return kSuccess;
}

R PathOpen(Call& c, uint32_t fd, uint32_t dirflags, uint32_t path, uint32_t path_len,
           uint32_t oflags, uint64_t rights_base, uint64_t rights_inheriting, uint32_t fdflags,
           uint32_t fd_out) {
  FdEntry* dir;
  if (Errno err = GetDirectory(c, fd, kRightPathOpen, &dir); err != kSuccess) return err;
  if ((dirflags & ~kLookupSymlinkFollow) || (oflags & ~uint32_t{15}) ||
      (fdflags & ~uint32_t{kFdflagsAll})) {
    return kInval;
  }
  if ((oflags & kOflagDirectory) && (oflags & (kOflagCreat | kOflagExcl | kOflagTrunc))) {
    return kInval;
  }
  if (((oflags & kOflagCreat) && !(dir->rights_base & kRightPathCreateFile)) ||
      ((oflags & kOflagTrunc) && !(dir->rights_base & kRightPathFilestatSetSize))) {
    return kNotcapable;
  }
  // A descriptor gets what it asks for, within what its directory hands
  // down (as wasi-common did; libc asks for everything it might use).
  const uint64_t base = rights_base & dir->rights_inheriting;
  const uint64_t inheriting = rights_inheriting & dir->rights_inheriting;
  const bool read = base & (kRightFdRead | kRightFdReaddir);
  const bool write = base & kWriteRights;
  if (dir->read_only && (write || (oflags & (kOflagCreat | kOflagTrunc)))) return kPerm;
  if (!c.mem.InBounds(fd_out, 4)) return kFault;
  if (c.st.fds.size() >= c.st.max_open_fds) return kMfile;
  std::string name;
  if (Errno err = ReadPath(c.mem, path, path_len, &name); err != kSuccess) return err;

  // O_NONBLOCK, so that opening a FIFO cannot block the host; it stays on
  // pipes and devices (whose reads then wait in poll(), interruptibly).
  int flags = O_NOCTTY | O_NONBLOCK | (write ? (read ? O_RDWR : O_WRONLY) : O_RDONLY);
  if (oflags & kOflagCreat) flags |= O_CREAT;
  if (oflags & kOflagDirectory) flags |= O_DIRECTORY;
  if (oflags & kOflagExcl) flags |= O_EXCL;
  if (oflags & kOflagTrunc) flags |= O_TRUNC;
  if (fdflags & kFdflagAppend) flags |= O_APPEND;
  if (fdflags & kFdflagDsync) flags |= O_DSYNC;
  if (fdflags & (kFdflagSync | kFdflagRsync)) flags |= O_SYNC;
  if (!(dirflags & kLookupSymlinkFollow)) flags |= O_NOFOLLOW;
  const int host = OpenBeneath(dir->host.get(), name, flags, 0666);
  if (host < 0) return ErrnoFromHost(-host);
  FdEntry entry;
  entry.host = UniqueFd(host);
  struct stat st;
  if (fstat(host, &st) < 0) return ErrnoFromHost(errno);
  entry.kind = S_ISDIR(st.st_mode) ? FdKind::kDirectory : FdKind::kFile;
  entry.filetype = FiletypeFromMode(st.st_mode);
  entry.stream = !S_ISDIR(st.st_mode) && !S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode);
  if (!entry.stream) {
    const int status = fcntl(host, F_GETFL);
    if (status < 0 || fcntl(host, F_SETFL, status & ~O_NONBLOCK) < 0) return ErrnoFromHost(errno);
  }
  // Only rights that mean something for what was opened: a directory
  // cannot seek, read or write bytes, whatever the guest asked for.
  const bool dir_opened = entry.kind == FdKind::kDirectory;
  entry.rights_base = base & (dir_opened ? kDirectoryBaseRights : kFileRights);
  entry.rights_inheriting = dir_opened ? inheriting : inheriting & kFileRights;
  entry.flags = static_cast<uint16_t>(fdflags);
  entry.read_only = dir->read_only;
  if (dir_opened) entry.preopen_root = dir->preopen_root;
  uint32_t guest_fd;
  if (Errno err = c.st.Insert(std::move(entry), &guest_fd); err != kSuccess) return err;
  (void)c.mem.Store<uint32_t>(fd_out, guest_fd);
  return kSuccess;
}

R PathReadlink(Call& c, uint32_t fd, uint32_t path, uint32_t path_len, uint32_t buf,
               uint32_t buf_len, uint32_t bufused_out) {
  FdEntry* dir;
  if (Errno err = GetDirectory(c, fd, kRightPathReadlink, &dir); err != kSuccess) return err;
  auto dst = c.mem.Slice(buf, buf_len);
  if (!dst || !c.mem.InBounds(bufused_out, 4)) return kFault;
  UniqueFd link;
  if (Errno err = OpenPathOnly(c, *dir, path, path_len, false, &link); err != kSuccess) {
    return err;
  }
  struct stat st;
  if (fstat(link.get(), &st) < 0) return ErrnoFromHost(errno);
  if (!S_ISLNK(st.st_mode)) return kInval;
  char target[kMaxPathBytes];
  const ssize_t n = readlinkat(link.get(), "", target, sizeof(target));
  if (n < 0) return ErrnoFromHost(errno);
  // As wasmtime and readlink(2): a short buffer gets a truncated target.
  const size_t k = std::min(static_cast<size_t>(n), dst->size());
  if (k > 0) std::memcpy(dst->data(), target, k);
  (void)c.mem.Store<uint32_t>(bufused_out, static_cast<uint32_t>(k));
  return kSuccess;
}

R PathRemoveDirectory(Call& c, uint32_t fd, uint32_t path, uint32_t path_len) {
  FdEntry* dir;
  if (Errno err = GetDirectory(c, fd, kRightPathRemoveDirectory, &dir); err != kSuccess) {
    return err;
  }
  if (dir->read_only) return kPerm;
  ParentPath parent;
  if (Errno err = ParentOf(c, *dir, path, path_len, &parent); err != kSuccess) return err;
  if (unlinkat(parent.fd, parent.name.c_str(), AT_REMOVEDIR) < 0) return ErrnoFromHost(errno);
  return kSuccess;
}

R PathRename(Call& c, uint32_t old_fd, uint32_t old_path, uint32_t old_len, uint32_t new_fd,
             uint32_t new_path, uint32_t new_len) {
  FdEntry* old_dir;
  FdEntry* new_dir;
  if (Errno err = GetDirectory(c, old_fd, kRightPathRenameSource, &old_dir); err != kSuccess) {
    return err;
  }
  if (Errno err = GetDirectory(c, new_fd, kRightPathRenameTarget, &new_dir); err != kSuccess) {
    return err;
  }
  if (old_dir->read_only || new_dir->read_only) return kPerm;
  ParentPath from, to;
  if (Errno err = ParentOf(c, *old_dir, old_path, old_len, &from); err != kSuccess) return err;
  if (Errno err = ParentOf(c, *new_dir, new_path, new_len, &to); err != kSuccess) return err;
  if (renameat(from.fd, from.name.c_str(), to.fd, to.name.c_str()) < 0) {
    return ErrnoFromHost(errno);
  }
  return kSuccess;
}

R PathSymlink(Call& c, uint32_t old_path, uint32_t old_len, uint32_t fd, uint32_t new_path,
              uint32_t new_len) {
  FdEntry* dir;
  if (Errno err = GetDirectory(c, fd, kRightPathSymlink, &dir); err != kSuccess) return err;
  if (dir->read_only) return kPerm;
  std::string target;
  if (Errno err = ReadPath(c.mem, old_path, old_len, &target); err != kSuccess) return err;
  // Following a link is always confined, but a link that points outside
  // would still lead any host program that follows it out of the preopen:
  // absolute targets are refused (as cap-std does) and so are ".." climbs
  // above the preopen, with the same EPERM.
  ParentPath parent;
  if (Errno err = ParentOf(c, *dir, new_path, new_len, &parent); err != kSuccess) return err;
  const int root = dir->preopen_root ? dir->preopen_root->get() : dir->host.get();
  if (int e = CheckSymlinkTarget(root, parent.fd, target); e != 0) {
    return ErrnoFromHost(-e);
  }
  if (symlinkat(target.c_str(), parent.fd, parent.name.c_str()) < 0) return ErrnoFromHost(errno);
  return kSuccess;
}

R PathUnlinkFile(Call& c, uint32_t fd, uint32_t path, uint32_t path_len) {
  FdEntry* dir;
  if (Errno err = GetDirectory(c, fd, kRightPathUnlinkFile, &dir); err != kSuccess) return err;
  if (dir->read_only) return kPerm;
  ParentPath parent;
  if (Errno err = ParentOf(c, *dir, path, path_len, &parent); err != kSuccess) return err;
  if (unlinkat(parent.fd, parent.name.c_str(), 0) < 0) return ErrnoFromHost(errno);
  return kSuccess;
}

}  // namespace keel::abi::wasi
