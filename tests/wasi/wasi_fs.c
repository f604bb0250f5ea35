// The WASI filesystem in preopened directories: fd 3 is "/sandbox"
// (read-write), fd 4 is "/ro" (read-only). The host prepares
//   /sandbox/abs_link -> /etc             (an absolute symlink)
//   /sandbox/out_link -> ../outside       (a relative one leading out)
//   /ro/test.txt = "read only test file\n", /ro/d/inner.txt
// and a file outside both, ../outside/secret.txt, that must stay untouched.
// argv[1]: "fs" runs every check, "fdlimit" the descriptor limit.
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <unistd.h>

#include "wasi_raw.h"

enum { SB = 3, RO = 4 };

// Directories cannot be opened with write rights (EISDIR, as POSIX and
// wasmtime); they hand everything down.
#define R_DIR (R_ALL & ~(R_FD_WRITE | R_FD_ALLOCATE | R_FD_FILESTAT_SET_SIZE))
static int open_dir(int dir, const char* path) {
  int fd = -1;
  int e = raw_path_open(dir, LOOKUP_FOLLOW, S(path), OFLAG_DIRECTORY, (i64)R_DIR, (i64)R_ALL, 0,
                        P(&fd));
  return e == 0 ? fd : -e;
}

static void write_file(const char* path, const char* text) {
  FILE* f = fopen(path, "w");
  CHECK(f != NULL);
  if (f) {
    fputs(text, f);
    fclose(f);
  }
}

static bool file_is(const char* path, const char* text) {
  char buf[256] = {0};
  FILE* f = fopen(path, "r");
  if (!f) return false;
  size_t n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  return n == strlen(text) && memcmp(buf, text, n) == 0;
}

static int raw_errno_of_open(int dir, int lookup, const char* path, int oflags, uint64_t base) {
  i32 fd = -1;
  int e = raw_path_open(dir, lookup, S(path), oflags, (i64)base, (i64)base, 0, P(&fd));
  if (e == 0) raw_fd_close(fd);
  return e;
}

static void preopens(void) {
  i32 prestat[2] = {-1, -1};
  char name[32] = {0};
  CHECK_OK(raw_fd_prestat_get(SB, P(prestat)));
  CHECK((prestat[0] & 0xff) == 0 && prestat[1] == 8);
  CHECK_OK(raw_fd_prestat_dir_name(SB, P(name), 8));
  CHECK(memcmp(name, "/sandbox", 8) == 0);
  CHECK_ERRNO(raw_fd_prestat_dir_name(SB, P(name), 3), E_NAMETOOLONG);
  CHECK_ERRNO(raw_fd_prestat_dir_name(SB, BAD_PTR, 8), E_FAULT);
  CHECK_ERRNO(raw_fd_prestat_get(SB, BAD_PTR), E_FAULT);
  CHECK_OK(raw_fd_prestat_get(RO, P(prestat)));
  CHECK(prestat[1] == 3);
  CHECK_ERRNO(raw_fd_prestat_get(5, P(prestat)), E_BADF);

  fdstat_t st;
  CHECK_OK(raw_fd_fdstat_get(SB, P(&st)));
  CHECK(fdstat_type(&st) == FT_DIR);
  uint64_t want = R_PATH_OPEN | R_PATH_CREATE_FILE | R_PATH_CREATE_DIRECTORY | R_FD_READDIR |
                  R_PATH_FILESTAT_GET | R_PATH_UNLINK_FILE;
  CHECK((fdstat_base(&st) & want) == want);
  CHECK((fdstat_inh(&st) & R_FILE) == R_FILE);
  // A read-only preopen reports the same rights; it refuses with EPERM.
  fdstat_t ro;
  CHECK_OK(raw_fd_fdstat_get(RO, P(&ro)));
  CHECK(fdstat_base(&ro) == fdstat_base(&st) && fdstat_inh(&ro) == fdstat_inh(&st));
}

static void libc_files(void) {
  write_file("/sandbox/hello.txt", "hello world\n");
  CHECK(file_is("/sandbox/hello.txt", "hello world\n"));
  FILE* f = fopen("/sandbox/hello.txt", "r");
  CHECK(f != NULL);
  if (f) {
    char buf[32];
    CHECK(fseek(f, 6, SEEK_SET) == 0);
    CHECK(fgets(buf, sizeof(buf), f) && strcmp(buf, "world\n") == 0);
    CHECK(ftell(f) == 12);
    fclose(f);
  }
  f = fopen("/sandbox/hello.txt", "a");
  CHECK(f != NULL);
  if (f) {
    fputs("more\n", f);
    fclose(f);
  }
  CHECK(file_is("/sandbox/hello.txt", "hello world\nmore\n"));

  // O_APPEND: every write lands at the end, whatever the position.
  int fd = open("/sandbox/hello.txt", O_RDWR | O_APPEND);
  CHECK(fd >= 0);
  CHECK(lseek(fd, 0, SEEK_SET) == 0);
  CHECK(write(fd, "end\n", 4) == 4);
  CHECK(lseek(fd, 0, SEEK_CUR) == 21);
  close(fd);
  CHECK(file_is("/sandbox/hello.txt", "hello world\nmore\nend\n"));

  errno = 0;
  CHECK(open("/sandbox/hello.txt", O_WRONLY | O_CREAT | O_EXCL, 0644) < 0 && errno == EEXIST);
  errno = 0;
  CHECK(open("/sandbox/hello.txt", O_RDONLY | O_DIRECTORY) < 0 && errno == ENOTDIR);
  errno = 0;
  CHECK(open("/sandbox/hello.txt/", O_RDONLY) < 0 && errno == ENOTDIR);
  errno = 0;
  CHECK(open("/sandbox/missing.txt", O_RDONLY) < 0 && errno == ENOENT);

  fd = open("/sandbox/hello.txt", O_RDWR | O_TRUNC);
  CHECK(fd >= 0);
  struct stat st;
  CHECK(fstat(fd, &st) == 0 && st.st_size == 0 && S_ISREG(st.st_mode));
  CHECK(write(fd, "0123456789", 10) == 10);
  char buf[16] = {0};
  CHECK(pread(fd, buf, 4, 3) == 4 && memcmp(buf, "3456", 4) == 0);
  CHECK(lseek(fd, 0, SEEK_CUR) == 10);  // pread leaves the position alone
  CHECK(pwrite(fd, "ab", 2, 1) == 2);
  CHECK(lseek(fd, 0, SEEK_CUR) == 10);
  CHECK(lseek(fd, 0, SEEK_END) == 10);
  errno = 0;
  CHECK(lseek(fd, -20, SEEK_CUR) < 0 && errno == EINVAL);
  CHECK(lseek(fd, 2, SEEK_SET) == 2);
  CHECK(read(fd, buf, 3) == 3 && memcmp(buf, "b34", 3) == 0);

  CHECK(ftruncate(fd, 4) == 0);
  CHECK(fstat(fd, &st) == 0 && st.st_size == 4);
  CHECK(ftruncate(fd, 100) == 0);
  CHECK(pread(fd, buf, 4, 50) == 4 && memcmp(buf, "\0\0\0\0", 4) == 0);
  CHECK(posix_fallocate(fd, 0, 5000) == 0);
  CHECK(fstat(fd, &st) == 0 && st.st_size == 5000);
  CHECK(posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL) == 0);
  CHECK_ERRNO(raw_fd_advise(fd, 0, 0, 9), E_INVAL);
  CHECK(fsync(fd) == 0);
  CHECK(fdatasync(fd) == 0);

  struct timespec times[2] = {{1000, 5}, {2000, 7}};
  CHECK(futimens(fd, times) == 0);
  CHECK(fstat(fd, &st) == 0 && st.st_atim.tv_sec == 1000 && st.st_mtim.tv_sec == 2000 &&
        st.st_mtim.tv_nsec == 7);
  close(fd);
  // Explicit times only: this wasi-libc's <sys/stat.h> defines UTIME_NOW
  // and UTIME_OMIT unlike its utimensat expects, which also reads NULL
  // times. The raw calls below cover "now".
  struct timespec later[2] = {{3000, 0}, {4000, 0}};
  CHECK(utimensat(AT_FDCWD, "/sandbox/hello.txt", later, 0) == 0);
  CHECK(stat("/sandbox/hello.txt", &st) == 0 && st.st_atim.tv_sec == 3000 &&
        st.st_mtim.tv_sec == 4000);

  CHECK(mkdir("/sandbox/dir", 0755) == 0);
  errno = 0;
  CHECK(mkdir("/sandbox/dir", 0755) < 0 && errno == EEXIST);
  CHECK(stat("/sandbox/dir", &st) == 0 && S_ISDIR(st.st_mode));
  CHECK(rmdir("/sandbox/dir") == 0);
  errno = 0;
  CHECK(stat("/sandbox/dir", &st) < 0 && errno == ENOENT);

  CHECK(rename("/sandbox/hello.txt", "/sandbox/renamed.txt") == 0);
  CHECK(access("/sandbox/hello.txt", F_OK) < 0 && access("/sandbox/renamed.txt", F_OK) == 0);
  CHECK(link("/sandbox/renamed.txt", "/sandbox/hard.txt") == 0);
  struct stat a, b;
  CHECK(stat("/sandbox/renamed.txt", &a) == 0 && stat("/sandbox/hard.txt", &b) == 0);
  CHECK(a.st_ino == b.st_ino && a.st_nlink == 2);
  CHECK(symlink("renamed.txt", "/sandbox/sym") == 0);
  char target[64] = {0};
  CHECK(readlink("/sandbox/sym", target, sizeof(target)) == 11 &&
        memcmp(target, "renamed.txt", 11) == 0);
  CHECK(lstat("/sandbox/sym", &st) == 0 && S_ISLNK(st.st_mode));
  CHECK(stat("/sandbox/sym", &st) == 0 && S_ISREG(st.st_mode) && st.st_ino == a.st_ino);
  errno = 0;
  CHECK(open("/sandbox/sym", O_RDONLY | O_NOFOLLOW) < 0 && errno == ELOOP);
  fd = open("/sandbox/sym", O_RDONLY);
  CHECK(fd >= 0);
  close(fd);
  CHECK(unlink("/sandbox/hard.txt") == 0);
  CHECK(stat("/sandbox/renamed.txt", &st) == 0 && st.st_nlink == 1);
  CHECK(unlink("/sandbox/sym") == 0 && unlink("/sandbox/renamed.txt") == 0);
}

// Lists "/sandbox/many" through fd_readdir with a small buffer, resuming
// from cookies; returns the number of entries.
static int count_raw(int dir, size_t buf_size) {
  static uint8_t buf[4096];
  uint64_t cookie = 0;
  int entries = 0;
  for (int rounds = 0; rounds < 10000; ++rounds) {
    i32 used = -1;
    if (raw_fd_readdir(dir, P(buf), (i32)buf_size, (i64)cookie, P(&used)) != 0) return -1;
    size_t at = 0;
    bool cut = false;
    while (at + 24 <= (size_t)used) {
      uint64_t next;
      uint32_t namlen;
      memcpy(&next, buf + at, 8);
      memcpy(&namlen, buf + at + 16, 4);
      if (at + 24 + namlen > (size_t)used) {
        cut = true;
        break;
      }
      ++entries;
      cookie = next;
      at += 24 + namlen;
    }
    if (at < (size_t)used) cut = true;
    if ((size_t)used < buf_size && !cut) return entries;
  }
  return -2;
}

static void readdir_many(void) {
  enum { N = 300 };
  CHECK(mkdir("/sandbox/many", 0755) == 0);
  char path[128];
  for (int i = 0; i < N; ++i) {
    snprintf(path, sizeof(path), "/sandbox/many/file_%03d_with_a_rather_long_name_to_fill_buffers",
             i);
    int fd = open(path, O_WRONLY | O_CREAT, 0644);
    CHECK(fd >= 0);
    close(fd);
  }
  CHECK(mkdir("/sandbox/many/subdir", 0755) == 0);

  static bool seen[N];
  memset(seen, 0, sizeof(seen));
  DIR* d = opendir("/sandbox/many");
  CHECK(d != NULL);
  if (!d) return;
  int total = 0, dots = 0, dirs = 0;
  struct dirent* e;
  while ((e = readdir(d)) != NULL) {
    ++total;
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) {
      ++dots;
      continue;
    }
    if (e->d_type == DT_DIR) ++dirs;
    int i;
    if (sscanf(e->d_name, "file_%03d", &i) == 1 && i >= 0 && i < N) {
      CHECK(e->d_type == DT_REG);
      seen[i] = true;
    }
  }
  CHECK(total == N + 3 && dots == 2 && dirs == 1);
  for (int i = 0; i < N; ++i) CHECK(seen[i]);

  // telldir/seekdir: cookies resume where they were taken.
  rewinddir(d);
  for (int i = 0; i < 10; ++i) readdir(d);
  long mark = telldir(d);
  char names[5][80];
  for (int i = 0; i < 5; ++i) {
    e = readdir(d);
    CHECK(e != NULL);
    if (e) snprintf(names[i], sizeof(names[i]), "%s", e->d_name);
  }
  seekdir(d, mark);
  for (int i = 0; i < 5; ++i) {
    e = readdir(d);
    CHECK(e != NULL && strcmp(e->d_name, names[i]) == 0);
  }
  closedir(d);

  // Raw fd_readdir: a buffer too small for one entry comes back full; small
  // buffers resume from cookies and see everything exactly once.
  int dir = open_at(SB, "many", OFLAG_DIRECTORY, R_FD_READDIR | R_PATH_OPEN, 0);
  CHECK(dir >= 0);
  static uint8_t buf[64];
  i32 used = -1;
  CHECK_OK(raw_fd_readdir(dir, P(buf), 10, 0, P(&used)));
  CHECK(used == 10);
  CHECK(count_raw(dir, 100) == N + 3);
  CHECK(count_raw(dir, 4096) == N + 3);
  CHECK_ERRNO(raw_fd_readdir(dir, BAD_PTR, 64, 0, P(&used)), E_FAULT);
  CHECK_ERRNO(raw_fd_readdir(dir, P(buf), 64, 0, BAD_PTR), E_FAULT);
  int file = open_at(SB, "many/file_000_with_a_rather_long_name_to_fill_buffers", 0, R_FILE, 0);
  CHECK(file >= 0);
  CHECK_ERRNO(raw_fd_readdir(file, P(buf), 64, 0, P(&used)), E_NOTDIR);
  raw_fd_close(file);
  // Without FD_READDIR.
  CHECK_OK(raw_fd_fdstat_set_rights(dir, R_PATH_OPEN, 0));
  CHECK_ERRNO(raw_fd_readdir(dir, P(buf), 64, 0, P(&used)), E_NOTCAPABLE);
  raw_fd_close(dir);

  // Deleting what is listed while listing it skips nothing.
  d = opendir("/sandbox/many");
  CHECK(d != NULL);
  int removed = 0;
  while (d && (e = readdir(d)) != NULL) {
    if (strncmp(e->d_name, "file_", 5) != 0) continue;
    snprintf(path, sizeof(path), "/sandbox/many/%s", e->d_name);
    if (unlink(path) == 0) ++removed;
  }
  if (d) closedir(d);
  CHECK(removed == N);
  CHECK(rmdir("/sandbox/many/subdir") == 0);
  CHECK(rmdir("/sandbox/many") == 0);
}

static void rights_and_flags(void) {
  write_file("/sandbox/r.txt", "0123456789");
  // What a descriptor asks for, within what its directory hands down.
  int fd = open_at(SB, "r.txt", 0, R_ALL, 0);
  CHECK(fd >= 0);
  fdstat_t st, dir;
  CHECK_OK(raw_fd_fdstat_get(SB, P(&dir)));
  CHECK_OK(raw_fd_fdstat_get(fd, P(&st)));
  CHECK(fdstat_type(&st) == FT_REG);
  CHECK(fdstat_base(&st) == (fdstat_inh(&dir) & R_FILE));  // no path rights on a file
  raw_fd_close(fd);

  // A directory gets only what a directory can do, whatever it asks for:
  // no seeking, reading or writing bytes (wasi-testsuite's directory_seek).
  CHECK_OK(raw_path_create_directory(SB, S("rdir")));
  fd = -1;
  CHECK_OK(raw_path_open(SB, 0, S("rdir"), OFLAG_DIRECTORY, (i64)R_DIR, (i64)R_ALL, 0, P(&fd)));
  CHECK_OK(raw_fd_fdstat_get(fd, P(&st)));
  CHECK(fdstat_type(&st) == FT_DIR);
  CHECK((fdstat_base(&st) & (R_FD_SEEK | R_FD_TELL | R_FD_READ | R_FD_ADVISE)) == 0);
  CHECK((fdstat_base(&st) & (R_PATH_OPEN | R_FD_READDIR)) == (R_PATH_OPEN | R_FD_READDIR));
  CHECK(fdstat_inh(&st) == fdstat_inh(&dir));
  uint64_t where;
  CHECK_ERRNO(raw_fd_seek(fd, 0, 1, P(&where)), E_BADF);
  raw_fd_close(fd);
  CHECK_OK(raw_path_remove_directory(SB, S("rdir")));

  // Read-only rights: no writes (EBADF, as POSIX), no seeking without FD_SEEK.
  fd = open_at(SB, "r.txt", 0, R_FD_READ | R_FD_TELL, 0);
  CHECK(fd >= 0);
  char buf[16];
  iov_t iov = {P(buf), 4};
  i32 n;
  uint64_t pos;
  CHECK_ERRNO(raw_fd_write(fd, P(&iov), 1, P(&n)), E_BADF);
  CHECK_ERRNO(raw_fd_pwrite(fd, P(&iov), 1, 0, P(&n)), E_BADF);
  CHECK_OK(raw_fd_read(fd, P(&iov), 1, P(&n)));
  CHECK(n == 4 && memcmp(buf, "0123", 4) == 0);
  CHECK_ERRNO(raw_fd_seek(fd, 1, 0, P(&pos)), E_NOTCAPABLE);
  CHECK_OK(raw_fd_seek(fd, 0, 1, P(&pos)));  // a tell needs only FD_TELL
  CHECK(pos == 4);
  CHECK_OK(raw_fd_tell(fd, P(&pos)));
  CHECK(pos == 4);
  CHECK_ERRNO(raw_fd_tell(fd, BAD_PTR), E_FAULT);
  CHECK_ERRNO(raw_fd_filestat_get(fd, P(buf)), E_NOTCAPABLE);
  CHECK_ERRNO(raw_fd_filestat_set_size(fd, 0), E_NOTCAPABLE);
  CHECK_ERRNO(raw_fd_allocate(fd, 0, 10), E_NOTCAPABLE);
  CHECK_ERRNO(raw_fd_sync(fd), E_NOTCAPABLE);
  CHECK_ERRNO(raw_fd_datasync(fd), E_NOTCAPABLE);
  CHECK_ERRNO(raw_fd_advise(fd, 0, 0, 0), E_NOTCAPABLE);
  CHECK_ERRNO(raw_fd_fdstat_set_rights(fd, R_FD_READ | R_FD_WRITE, 0), E_NOTCAPABLE);
  CHECK_OK(raw_fd_fdstat_set_rights(fd, 0, 0));
  CHECK_ERRNO(raw_fd_read(fd, P(&iov), 1, P(&n)), E_BADF);
  CHECK_ERRNO(raw_fd_tell(fd, P(&pos)), E_NOTCAPABLE);
  raw_fd_close(fd);

  // A directory handing down only FD_READ, and allowing only opens.
  int d = -1;
  CHECK_OK(
      raw_path_open(SB, 0, S("."), OFLAG_DIRECTORY, (i64)R_PATH_OPEN, (i64)R_FD_READ, 0, P(&d)));
  CHECK_ERRNO(raw_path_open(d, 0, S("new.txt"), OFLAG_CREAT, (i64)R_ALL, 0, 0, P(&fd)),
              E_NOTCAPABLE);
  CHECK_ERRNO(raw_path_open(d, 0, S("r.txt"), OFLAG_TRUNC, (i64)R_ALL, 0, 0, P(&fd)), E_NOTCAPABLE);
  CHECK_ERRNO(raw_path_create_directory(d, S("x")), E_NOTCAPABLE);
  CHECK_ERRNO(raw_path_unlink_file(d, S("r.txt")), E_NOTCAPABLE);
  CHECK_OK(raw_path_open(d, 0, S("r.txt"), 0, (i64)R_ALL, (i64)R_ALL, 0, P(&fd)));
  CHECK_OK(raw_fd_fdstat_get(fd, P(&st)));
  CHECK(fdstat_base(&st) == R_FD_READ && fdstat_inh(&st) == R_FD_READ);
  CHECK_ERRNO(raw_fd_write(fd, P(&iov), 1, P(&n)), E_BADF);
  raw_fd_close(fd);
  raw_fd_close(d);

  // fdflags: APPEND and NONBLOCK can change, the sync flags only at open.
  fd = open_at(SB, "r.txt", 0, R_FILE, FDFLAG_SYNC);
  CHECK(fd >= 0);
  CHECK_OK(raw_fd_fdstat_get(fd, P(&st)));
  CHECK(fdstat_flags(&st) == FDFLAG_SYNC);
  CHECK_ERRNO(raw_fd_fdstat_set_flags(fd, 0), E_INVAL);
  int dsync = open_at(SB, "r.txt", 0, R_FILE, 2 /* DSYNC */);
  CHECK(dsync >= 0);
  CHECK_OK(raw_fd_fdstat_get(dsync, P(&st)));
  CHECK(fdstat_flags(&st) == 2);
  raw_fd_close(dsync);
  int rsync = open_at(SB, "r.txt", 0, R_FD_READ, 8 /* RSYNC */ | FDFLAG_NONBLOCK);
  CHECK(rsync >= 0);
  CHECK_OK(raw_fd_fdstat_get(rsync, P(&st)));
  CHECK(fdstat_flags(&st) == (8 | FDFLAG_NONBLOCK));
  CHECK_OK(raw_fd_read(rsync, P(&iov), 1, P(&n)));  // files never say EAGAIN
  raw_fd_close(rsync);
  CHECK_OK(raw_fd_fdstat_set_flags(fd, FDFLAG_SYNC | FDFLAG_APPEND | FDFLAG_NONBLOCK));
  iov_t tail = {P("AB"), 2};
  CHECK_OK(raw_fd_pwrite(fd, P(&tail), 1, 0, P(&n)));  // Linux appends even here
  CHECK_OK(raw_fd_write(fd, P(&tail), 1, P(&n)));
  CHECK_OK(raw_fd_fdstat_set_flags(fd, FDFLAG_SYNC));
  CHECK_OK(raw_fd_seek(fd, 0, 0, P(&pos)));
  CHECK_OK(raw_fd_write(fd, P(&tail), 1, P(&n)));
  raw_fd_close(fd);
  CHECK(file_is("/sandbox/r.txt", "AB23456789ABAB"));

  // Flag validation.
  CHECK_ERRNO(raw_path_open(SB, 0, S("d1"), OFLAG_DIRECTORY | OFLAG_CREAT, 0, 0, 0, P(&fd)),
              E_INVAL);
  CHECK_ERRNO(raw_path_open(SB, 0, S("r.txt"), OFLAG_DIRECTORY | OFLAG_TRUNC, 0, 0, 0, P(&fd)),
              E_INVAL);
  CHECK_ERRNO(raw_path_open(SB, 0, S("r.txt"), 0x10, 0, 0, 0, P(&fd)), E_INVAL);
  CHECK_ERRNO(raw_path_open(SB, 2, S("r.txt"), 0, 0, 0, 0, P(&fd)), E_INVAL);
  CHECK_ERRNO(raw_path_open(SB, 0, S("r.txt"), 0, 0, 0, 0x20, P(&fd)), E_INVAL);
  // Bad paths and pointers; a failed open creates nothing.
  CHECK_ERRNO(raw_path_open(SB, 0, P("r.txt\0"), 6, 0, 0, 0, 0, P(&fd)), E_INVAL);
  CHECK_ERRNO(raw_path_open(SB, 0, S("bad\xff"), OFLAG_CREAT, 0, 0, 0, P(&fd)), E_ILSEQ);
  CHECK_ERRNO(raw_path_open(SB, 0, BAD_PTR, 4, 0, 0, 0, 0, P(&fd)), E_FAULT);
  CHECK_ERRNO(raw_path_open(SB, 0, P("x"), 0x7FFFFFFF, 0, 0, 0, 0, P(&fd)), E_FAULT);
  static char long_path[5000];
  memset(long_path, 'a', sizeof(long_path));
  CHECK_ERRNO(raw_path_open(SB, 0, P(long_path), sizeof(long_path), 0, 0, 0, 0, P(&fd)),
              E_NAMETOOLONG);
  CHECK_ERRNO(raw_path_open(SB, 0, S("probe"), OFLAG_CREAT, (i64)R_ALL, 0, 0, BAD_PTR), E_FAULT);
  CHECK(access("/sandbox/probe", F_OK) < 0);
  CHECK_ERRNO(raw_path_open(SB, 0, P(""), 0, 0, 0, 0, 0, P(&fd)), E_NOENT);
  CHECK_ERRNO(raw_path_open(77, 0, S("r.txt"), 0, 0, 0, 0, P(&fd)), E_BADF);
  // Opening beneath a file, and a directory for writing.
  fd = open_at(SB, "r.txt", 0, R_FILE, 0);
  CHECK_ERRNO(raw_path_open(fd, 0, S("x"), OFLAG_CREAT, 0, 0, 0, P(&d)), E_NOTDIR);
  CHECK_ERRNO(raw_path_create_directory(fd, S("x")), E_NOTDIR);
  raw_fd_close(fd);
  CHECK_ERRNO(
      raw_path_open(SB, 0, S("."), OFLAG_DIRECTORY, (i64)(R_FD_READ | R_FD_WRITE), 0, 0, P(&fd)),
      E_ISDIR);
  CHECK_OK(raw_path_open(SB, 0, S("."), OFLAG_DIRECTORY, 0, 0, 0, P(&fd)));
  raw_fd_close(fd);
  CHECK(unlink("/sandbox/r.txt") == 0);
}

static void directory_descriptors(void) {
  CHECK_OK(raw_path_create_directory(SB, S("sub")));
  int d = open_dir(SB, "sub");
  CHECK(d >= 0);
  char buf[64];
  iov_t iov = {P(buf), sizeof(buf)};
  i32 n;
  uint64_t pos;
  // As wasmtime: file operations on a directory are EBADF.
  CHECK_ERRNO(raw_fd_read(d, P(&iov), 1, P(&n)), E_BADF);
  CHECK_ERRNO(raw_fd_pread(d, P(&iov), 1, 0, P(&n)), E_BADF);
  CHECK_ERRNO(raw_fd_write(d, P(&iov), 1, P(&n)), E_BADF);
  CHECK_ERRNO(raw_fd_pwrite(d, P(&iov), 1, 0, P(&n)), E_BADF);
  CHECK_ERRNO(raw_fd_seek(d, 0, 0, P(&pos)), E_BADF);
  CHECK_ERRNO(raw_fd_tell(d, P(&pos)), E_BADF);
  CHECK_ERRNO(raw_fd_advise(d, 0, 0, 4), E_BADF);
  CHECK_ERRNO(raw_fd_allocate(d, 0, 1), E_BADF);
  CHECK_ERRNO(raw_fd_datasync(d), E_BADF);
  CHECK_ERRNO(raw_fd_sync(d), E_BADF);
  CHECK_ERRNO(raw_fd_fdstat_set_flags(d, FDFLAG_NONBLOCK), E_BADF);
  CHECK_ERRNO(raw_fd_filestat_set_size(d, 0), E_BADF);
  filestat_t fs;
  CHECK_OK(raw_fd_filestat_get(d, P(&fs)));
  CHECK(filestat_type(&fs) == FT_DIR);
  CHECK_OK(raw_fd_filestat_set_times(d, 0, 3000000000000ull, FST_MTIM));
  CHECK_OK(raw_fd_filestat_get(d, P(&fs)));
  CHECK(filestat_u64(&fs, FILESTAT_MTIM) == 3000000000000ull);
  // Paths relative to the new directory descriptor.
  int f = open_at(d, "inner.txt", OFLAG_CREAT, R_FILE, 0);
  CHECK(f >= 0);
  raw_fd_close(f);
  struct stat st;
  CHECK(stat("/sandbox/sub/inner.txt", &st) == 0);
  CHECK_OK(raw_path_unlink_file(d, S("inner.txt")));

  // Renumbering and closing, preopens included.
  f = open_dir(SB, "sub");
  CHECK(f >= 0);
  CHECK_OK(raw_fd_renumber(d, f));
  CHECK_ERRNO(raw_fd_close(d), E_BADF);
  CHECK_OK(raw_fd_filestat_get(f, P(&fs)));
  CHECK(filestat_type(&fs) == FT_DIR);
  CHECK_ERRNO(raw_fd_renumber(f, 1000), E_BADF);
  CHECK_OK(raw_fd_close(f));
  CHECK_OK(raw_path_remove_directory(SB, S("sub")));
}

static void path_errors(void) {
  CHECK_OK(raw_path_create_directory(SB, S("e")));
  CHECK_OK(raw_path_create_directory(SB, S("e/dir")));
  write_file("/sandbox/e/file", "f");
  write_file("/sandbox/e/dir/x", "x");
  CHECK_ERRNO(raw_path_create_directory(SB, S("e/dir")), E_EXIST);
  CHECK_ERRNO(raw_path_create_directory(SB, S("e/nope/deeper")), E_NOENT);
  CHECK_ERRNO(raw_path_unlink_file(SB, S("e/dir")), E_ISDIR);
  CHECK_ERRNO(raw_path_unlink_file(SB, S("e/dir/")), E_ISDIR);
  CHECK_ERRNO(raw_path_unlink_file(SB, S("e/file/")), E_NOTDIR);
  CHECK_ERRNO(raw_path_unlink_file(SB, S("e/none")), E_NOENT);
  CHECK_ERRNO(raw_path_remove_directory(SB, S("e/file")), E_NOTDIR);
  CHECK_ERRNO(raw_path_remove_directory(SB, S("e/dir")), E_NOTEMPTY);
  CHECK_ERRNO(raw_path_remove_directory(SB, S("e/.")), E_INVAL);
  CHECK_ERRNO(raw_path_create_directory(SB, S("e/dir/..")), E_EXIST);

  // rename
  CHECK_ERRNO(raw_path_rename(SB, S("e/file"), SB, S("e/dir")), E_ISDIR);
  CHECK_OK(raw_path_create_directory(SB, S("e/empty")));
  CHECK_ERRNO(raw_path_rename(SB, S("e/empty"), SB, S("e/dir")), E_NOTEMPTY);
  CHECK_OK(raw_path_rename(SB, S("e/empty/"), SB, S("e/moved/")));
  CHECK_OK(raw_path_rename(SB, S("e/dir"), SB, S("e/moved")));  // onto an empty dir
  CHECK_ERRNO(raw_path_rename(SB, S("e/none"), SB, S("e/x")), E_NOENT);
  CHECK_OK(raw_path_rename(SB, S("e/moved/x"), SB, S("e/file")));  // replaces it
  CHECK(file_is("/sandbox/e/file", "x"));

  // link
  CHECK_ERRNO(raw_path_link(SB, 0, S("e/file"), SB, S("e/file")), E_EXIST);
  CHECK_ERRNO(raw_path_link(SB, 0, S("e/moved"), SB, S("e/dirlink")), E_PERM);
  CHECK_ERRNO(raw_path_link(SB, LOOKUP_FOLLOW, S("e/file"), SB, S("e/l2")), E_INVAL);
  CHECK_ERRNO(raw_path_link(SB, 0, S("e/file/"), SB, S("e/l2")), E_NOTDIR);
  CHECK_ERRNO(raw_path_link(SB, 0, S("e/moved/"), SB, S("e/l2")), E_PERM);
  CHECK_ERRNO(raw_path_link(SB, 0, S("e/file"), SB, S("e/l2/")), E_NOENT);
  CHECK_OK(raw_path_link(SB, 0, S("e/file"), SB, S("e/moved/l2")));
  filestat_t fs;
  CHECK_OK(raw_path_filestat_get(SB, 0, S("e/file"), P(&fs)));
  CHECK(filestat_u64(&fs, FILESTAT_NLINK) == 2);

  // symlinks: creation, loops, dangling ones, readlink
  CHECK_OK(raw_path_symlink(S("file"), SB, S("e/sym")));
  CHECK_ERRNO(raw_path_symlink(S("file"), SB, S("e/sym")), E_EXIST);
  CHECK_ERRNO(raw_path_symlink(S("file"), SB, S("e/moved")), E_EXIST);
  CHECK_ERRNO(raw_path_symlink(S("nowhere"), SB, S("e/dangling/")), E_NOENT);
  CHECK_OK(raw_path_symlink(S("loop"), SB, S("e/loop")));
  CHECK_ERRNO(raw_errno_of_open(SB, LOOKUP_FOLLOW, "e/loop", 0, R_FILE), E_LOOP);
  CHECK_ERRNO(raw_errno_of_open(SB, 0, "e/sym", 0, R_FILE), E_LOOP);  // O_NOFOLLOW
  CHECK_ERRNO(raw_errno_of_open(SB, 0, "e/sym", OFLAG_DIRECTORY, R_FD_READ), E_NOTDIR);
  CHECK_OK(raw_errno_of_open(SB, LOOKUP_FOLLOW, "e/sym", 0, R_FILE));
  CHECK_OK(raw_path_symlink(S("created"), SB, S("e/dangling")));
  CHECK_ERRNO(raw_errno_of_open(SB, LOOKUP_FOLLOW, "e/dangling", 0, R_FILE), E_NOENT);
  CHECK_ERRNO(raw_errno_of_open(SB, 0, "e/dangling", 0, R_FILE), E_LOOP);
  // O_CREAT through a dangling symlink creates its target (inside).
  CHECK_OK(raw_errno_of_open(SB, LOOKUP_FOLLOW, "e/dangling", OFLAG_CREAT, R_FILE));
  CHECK(access("/sandbox/e/created", F_OK) == 0);
  CHECK_ERRNO(raw_errno_of_open(SB, LOOKUP_FOLLOW, "e/dangling", OFLAG_CREAT | OFLAG_EXCL, R_FILE),
              E_EXIST);

  char buf[16] = {0};
  i32 used = -1;
  CHECK_OK(raw_path_readlink(SB, S("e/sym"), P(buf), sizeof(buf), P(&used)));
  CHECK(used == 4 && memcmp(buf, "file", 4) == 0);
  memset(buf, 0, sizeof(buf));
  CHECK_OK(raw_path_readlink(SB, S("e/dangling"), P(buf), 3, P(&used)));
  CHECK(used == 3 && memcmp(buf, "cre\0", 4) == 0);  // cut short, as readlink(2)
  CHECK_ERRNO(raw_path_readlink(SB, S("e/file"), P(buf), sizeof(buf), P(&used)), E_INVAL);
  CHECK_ERRNO(raw_path_readlink(SB, S("e/none"), P(buf), sizeof(buf), P(&used)), E_NOENT);
  CHECK_ERRNO(raw_path_readlink(SB, S("e/sym"), BAD_PTR, 16, P(&used)), E_FAULT);
  CHECK_ERRNO(raw_path_readlink(SB, S("e/sym"), P(buf), 16, BAD_PTR), E_FAULT);

  // stat with and without following
  CHECK_OK(raw_path_filestat_get(SB, 0, S("e/sym"), P(&fs)));
  CHECK(filestat_type(&fs) == FT_SYMLINK && filestat_u64(&fs, FILESTAT_SIZE) == 4);
  CHECK_OK(raw_path_filestat_get(SB, LOOKUP_FOLLOW, S("e/sym"), P(&fs)));
  CHECK(filestat_type(&fs) == FT_REG && filestat_u64(&fs, FILESTAT_SIZE) == 1);
  CHECK_ERRNO(raw_path_filestat_get(SB, 0, S("e/sym/"), P(&fs)), E_NOTDIR);
  CHECK_ERRNO(raw_path_filestat_get(SB, 2, S("e/sym"), P(&fs)), E_INVAL);
  CHECK_ERRNO(raw_path_filestat_get(SB, 0, S("e/sym"), BAD_PTR), E_FAULT);
  CHECK_ERRNO(raw_path_filestat_get(SB, 0, S("e/none"), P(&fs)), E_NOENT);

  // set-times, on the link itself or on its target
  CHECK_OK(raw_path_filestat_set_times(SB, LOOKUP_FOLLOW, S("e/sym"), 0, 5000000000ull, FST_MTIM));
  CHECK_OK(raw_path_filestat_get(SB, 0, S("e/file"), P(&fs)));
  CHECK(filestat_u64(&fs, FILESTAT_MTIM) == 5000000000ull);
  CHECK_OK(raw_path_filestat_set_times(SB, 0, S("e/sym"), 7000000000ull, 6000000000ull,
                                       FST_ATIM | FST_MTIM));
  CHECK_OK(raw_path_filestat_get(SB, 0, S("e/sym"), P(&fs)));
  CHECK(filestat_u64(&fs, FILESTAT_MTIM) == 6000000000ull &&
        filestat_u64(&fs, FILESTAT_ATIM) == 7000000000ull);
  CHECK_OK(raw_path_filestat_get(SB, 0, S("e/file"), P(&fs)));
  CHECK(filestat_u64(&fs, FILESTAT_MTIM) == 5000000000ull);
  CHECK_OK(raw_path_filestat_set_times(SB, 0, S("e/file"), 0, 0, FST_ATIM_NOW | FST_MTIM_NOW));
  CHECK_OK(raw_path_filestat_get(SB, 0, S("e/file"), P(&fs)));
  CHECK(filestat_u64(&fs, FILESTAT_MTIM) > 1600000000ull * 1000000000ull);
  CHECK_ERRNO(raw_path_filestat_set_times(SB, 0, S("e/file"), 0, 0, FST_MTIM | FST_MTIM_NOW),
              E_INVAL);
  CHECK_ERRNO(raw_path_filestat_set_times(SB, 0, S("e/file"), 0, 0, FST_ATIM | FST_ATIM_NOW),
              E_INVAL);
  CHECK_ERRNO(raw_path_filestat_set_times(SB, 0, S("e/file"), 0, 0, 0x10), E_INVAL);
  CHECK_ERRNO(raw_path_filestat_set_times(SB, 0, S("e/none"), 0, 0, FST_MTIM_NOW), E_NOENT);
  int fd = open_at(SB, "e/file", 0, R_FILE, 0);
  CHECK_ERRNO(raw_fd_filestat_set_times(fd, 0, 0, FST_MTIM | FST_MTIM_NOW), E_INVAL);
  CHECK_OK(raw_fd_filestat_set_size(fd, 3));
  CHECK_OK(raw_fd_filestat_get(fd, P(&fs)));
  CHECK(filestat_u64(&fs, FILESTAT_SIZE) == 3);
  CHECK_OK(raw_fd_allocate(fd, 10, 90));
  CHECK_OK(raw_fd_filestat_get(fd, P(&fs)));
  CHECK(filestat_u64(&fs, FILESTAT_SIZE) == 100);
  CHECK_ERRNO(raw_fd_filestat_set_size(fd, -1), E_INVAL);
  CHECK_ERRNO(raw_fd_filestat_get(fd, BAD_PTR), E_FAULT);

  // poll_oneoff on a regular file: ready at once, with what is left.
  uint8_t sub[48] = {0}, ev[32] = {0};
  uint32_t fd32 = (uint32_t)fd;
  sub[8] = 1;
  memcpy(sub + 16, &fd32, 4);
  i32 n = -1;
  uint64_t pos;
  CHECK_OK(raw_fd_seek(fd, 40, 0, P(&pos)));
  CHECK_OK(raw_poll_oneoff(P(sub), P(ev), 1, P(&n)));
  uint64_t nbytes;
  memcpy(&nbytes, ev + 16, 8);
  CHECK(n == 1 && ev[10] == 1 && ev[8] == 0 && nbytes == 60);
  raw_fd_close(fd);

  // Clean up with libc's recursive-friendly calls.
  CHECK(unlink("/sandbox/e/sym") == 0 && unlink("/sandbox/e/loop") == 0);
  CHECK(unlink("/sandbox/e/dangling") == 0 && unlink("/sandbox/e/created") == 0);
  CHECK(unlink("/sandbox/e/moved/l2") == 0 && unlink("/sandbox/e/file") == 0);
  CHECK(rmdir("/sandbox/e/moved") == 0 && rmdir("/sandbox/e") == 0);
}

// The links a guest makes must point inside its preopen: absolute targets
// and ".." climbs above the preopen are refused with EPERM (as wasmtime
// refuses absolute ones), counted from where the link really is, whatever
// path led there. Expects in/f.
static void guest_made_links(void) {
  char buf[64];
  i32 used;
  CHECK_ERRNO(raw_path_symlink(S("/etc/passwd"), SB, S("in/abs")), E_PERM);
  CHECK_ERRNO(raw_path_symlink(S("/"), SB, S("root")), E_PERM);
  CHECK_ERRNO(raw_path_symlink(S("../../outside/secret.txt"), SB, S("in/esc")), E_PERM);
  CHECK_ERRNO(raw_path_symlink(S(".."), SB, S("up")), E_PERM);
  CHECK_ERRNO(raw_path_symlink(S("in/../../outside"), SB, S("up")), E_PERM);
  CHECK_ERRNO(raw_path_symlink(S("in/./..//../../outside"), SB, S("in/up")), E_PERM);
  CHECK_ERRNO(raw_path_readlink(SB, S("in/esc"), P(buf), sizeof(buf), P(&used)), E_NOENT);
  CHECK_ERRNO(raw_path_readlink(SB, S("up"), P(buf), sizeof(buf), P(&used)), E_NOENT);
  // Inside, however they are spelled; dangling is fine.
  CHECK_OK(raw_path_symlink(S(".."), SB, S("in/parent")));
  CHECK_OK(raw_path_symlink(S("x/../../in/./f"), SB, S("in/roundabout")));
  CHECK_OK(raw_path_symlink(S("not/yet/there"), SB, S("in/dangling")));
  CHECK_OK(raw_errno_of_open(SB, LOOKUP_FOLLOW, "in/parent/in/f", 0, R_FILE));
  // self -> "." puts self/l at the top, one ".." from leaving.
  CHECK_OK(raw_path_symlink(S("."), SB, S("self")));
  CHECK_ERRNO(raw_path_symlink(S("../outside"), SB, S("self/l")), E_PERM);
  CHECK_ERRNO(raw_path_symlink(S("../../outside"), SB, S("in/parent/in/l")), E_PERM);
  CHECK_OK(raw_path_symlink(S("../in/f"), SB, S("in/parent/in/l")));
  // From a directory fd below the preopen, ".." may climb up to the preopen.
  int d = open_dir(SB, "in");
  CHECK(d >= 0);
  CHECK_OK(raw_path_symlink(S("../in/f"), d, S("via_fd")));
  CHECK_ERRNO(raw_path_symlink(S("../../x"), d, S("via_fd_out")), E_PERM);
  raw_fd_close(d);
  CHECK(file_is("/sandbox/in/via_fd", "inside"));
  static const char* const kLinks[] = {"in/parent", "in/roundabout", "in/dangling",
                                       "self",      "in/l",          "in/via_fd"};
  for (size_t i = 0; i < sizeof(kLinks) / sizeof(kLinks[0]); ++i) {
    CHECK_OK(raw_path_unlink_file(SB, S(kLinks[i])));
  }
}

static void escapes(void) {
  CHECK_OK(raw_path_create_directory(SB, S("in")));
  write_file("/sandbox/in/f", "inside");
  // ".." and absolute paths: EPERM, as wasmtime.
  CHECK_ERRNO(raw_errno_of_open(SB, LOOKUP_FOLLOW, "../outside/secret.txt", 0, R_FILE), E_PERM);
  CHECK_ERRNO(raw_errno_of_open(SB, LOOKUP_FOLLOW, "/etc/passwd", 0, R_FILE), E_PERM);
  CHECK_ERRNO(raw_errno_of_open(SB, LOOKUP_FOLLOW, "in/../../outside/secret.txt", 0, R_FILE),
              E_PERM);
  CHECK_ERRNO(raw_errno_of_open(SB, LOOKUP_FOLLOW, "..", OFLAG_DIRECTORY, R_FD_READ), E_PERM);
  CHECK_ERRNO(raw_errno_of_open(SB, LOOKUP_FOLLOW, "in/../..", OFLAG_DIRECTORY, R_FD_READ), E_PERM);
  CHECK_OK(raw_errno_of_open(SB, LOOKUP_FOLLOW, "in/.//../in/./f", 0, R_FILE));
  CHECK_OK(raw_errno_of_open(SB, 0, "in/..", OFLAG_DIRECTORY, R_FD_READ));
  CHECK_ERRNO(raw_errno_of_open(SB, LOOKUP_FOLLOW, "../outside/new", OFLAG_CREAT, R_FILE), E_PERM);
  i32 fd = -1;
  int d = open_dir(SB, "in");
  CHECK_ERRNO(raw_errno_of_open(d, LOOKUP_FOLLOW, "../in/f", 0, R_FILE), E_PERM);  // above `d`
  raw_fd_close(d);

  // Symlinks leading out, made by the host (absolute, relative); the guest
  // cannot make them (below).
  CHECK_ERRNO(raw_errno_of_open(SB, LOOKUP_FOLLOW, "abs_link", OFLAG_DIRECTORY, R_FD_READ), E_PERM);
  CHECK_ERRNO(raw_errno_of_open(SB, LOOKUP_FOLLOW, "abs_link/passwd", 0, R_FILE), E_PERM);
  CHECK_ERRNO(raw_errno_of_open(SB, 0, "abs_link/passwd", 0, R_FILE), E_PERM);
  CHECK_ERRNO(raw_errno_of_open(SB, 0, "abs_link", 0, R_FILE), E_LOOP);
  CHECK_ERRNO(raw_errno_of_open(SB, LOOKUP_FOLLOW, "out_link/secret.txt", 0, R_FILE), E_PERM);
  CHECK_ERRNO(raw_errno_of_open(SB, LOOKUP_FOLLOW, "out_link/new", OFLAG_CREAT, R_FILE), E_PERM);
  guest_made_links();
  // The host's esc -> ../outside/secret.txt, directly and through a
  // guest-made link that points inside, at it.
  CHECK_OK(raw_path_symlink(S("../esc"), SB, S("in/chain")));
  CHECK_OK(raw_path_symlink(S("../in/f"), SB, S("in/ok")));
  CHECK_ERRNO(raw_errno_of_open(SB, LOOKUP_FOLLOW, "esc", 0, R_FILE), E_PERM);
  CHECK_ERRNO(raw_errno_of_open(SB, LOOKUP_FOLLOW, "in/chain", 0, R_FILE), E_PERM);
  CHECK_ERRNO(raw_errno_of_open(SB, LOOKUP_FOLLOW, "esc", OFLAG_CREAT | OFLAG_TRUNC, R_FILE),
              E_PERM);
  CHECK_OK(raw_errno_of_open(SB, LOOKUP_FOLLOW, "in/ok", 0, R_FILE));
  char buf[64] = {0};
  i32 used;
  CHECK_OK(raw_path_readlink(SB, S("esc"), P(buf), sizeof(buf), P(&used)));  // the link itself
  CHECK(used == 21);

  filestat_t fs;
  CHECK_ERRNO(raw_path_filestat_get(SB, LOOKUP_FOLLOW, S("esc"), P(&fs)), E_PERM);
  CHECK_OK(raw_path_filestat_get(SB, 0, S("esc"), P(&fs)));
  CHECK(filestat_type(&fs) == FT_SYMLINK);
  CHECK_ERRNO(raw_path_filestat_get(SB, LOOKUP_FOLLOW, S("abs_link"), P(&fs)), E_PERM);
  CHECK_ERRNO(raw_path_filestat_get(SB, 0, S("../outside"), P(&fs)), E_PERM);
  CHECK_ERRNO(raw_path_filestat_get(SB, 0, S("out_link/secret.txt"), P(&fs)), E_PERM);
  CHECK_ERRNO(raw_path_filestat_set_times(SB, LOOKUP_FOLLOW, S("esc"), 0, 0, FST_MTIM), E_PERM);
  CHECK_ERRNO(raw_path_filestat_set_times(SB, 0, S("../outside/secret.txt"), 0, 0, FST_MTIM),
              E_PERM);
  CHECK_ERRNO(raw_path_readlink(SB, S("../outside/x"), P(buf), sizeof(buf), P(&used)), E_PERM);
  CHECK_ERRNO(raw_path_create_directory(SB, S("../evil")), E_PERM);
  CHECK_ERRNO(raw_path_create_directory(SB, S("out_link/evil")), E_PERM);
  CHECK_ERRNO(raw_path_create_directory(SB, S("/evil")), E_PERM);
  CHECK_ERRNO(raw_path_remove_directory(SB, S("..")), E_PERM);
  CHECK_ERRNO(raw_path_remove_directory(SB, S("in/../..")), E_PERM);
  CHECK_ERRNO(raw_path_unlink_file(SB, S("../outside/secret.txt")), E_PERM);
  CHECK_ERRNO(raw_path_unlink_file(SB, S("out_link/secret.txt")), E_PERM);
  CHECK_ERRNO(raw_path_rename(SB, S("out_link/secret.txt"), SB, S("stolen")), E_PERM);
  CHECK_ERRNO(raw_path_rename(SB, S("in/f"), SB, S("../outside/planted")), E_PERM);
  CHECK_ERRNO(raw_path_link(SB, 0, S("out_link/secret.txt"), SB, S("stolen")), E_PERM);
  CHECK_ERRNO(raw_path_link(SB, 0, S("in/f"), SB, S("../outside/planted")), E_PERM);
  CHECK_ERRNO(raw_path_symlink(S("x"), SB, S("../outside/planted")), E_PERM);
  // The host's escaping link can be removed like any file.
  CHECK_OK(raw_path_unlink_file(SB, S("esc")));

  // Through libc: absolute paths outside every preopen never reach the host.
  CHECK(fopen("/etc/passwd", "r") == NULL);
  CHECK(fopen("/sandbox/../outside/secret.txt", "r") == NULL);
  CHECK(fopen("/sandbox/out_link/secret.txt", "r") == NULL);
  CHECK(fopen("/sandbox/abs_link/passwd", "r") == NULL);
  CHECK(opendir("/sandbox/..") == NULL);

  CHECK(unlink("/sandbox/in/chain") == 0 && unlink("/sandbox/in/ok") == 0);
  CHECK(unlink("/sandbox/in/f") == 0 && rmdir("/sandbox/in") == 0);
  (void)fd;
}

static void read_only(void) {
  CHECK(file_is("/ro/test.txt", "read only test file\n"));
  int fd = open("/ro/test.txt", O_RDONLY);
  CHECK(fd >= 0);
  struct stat st;
  CHECK(fstat(fd, &st) == 0 && st.st_size == 20);
  // Read-only descriptors refuse changes: EPERM as wasmtime.
  CHECK_ERRNO(raw_fd_filestat_set_times(fd, 0, 0, FST_MTIM_NOW), E_PERM);
  char c;
  CHECK(read(fd, &c, 1) == 1 && c == 'r');
  errno = 0;
  CHECK(write(fd, "x", 1) < 0 && errno == EBADF);
  close(fd);

  errno = 0;
  CHECK(open("/ro/test.txt", O_WRONLY) < 0 && errno == EPERM);
  errno = 0;
  CHECK(open("/ro/test.txt", O_RDWR) < 0 && errno == EPERM);
  errno = 0;
  CHECK(open("/ro/new.txt", O_WRONLY | O_CREAT, 0644) < 0 && errno == EPERM);
  CHECK_ERRNO(raw_errno_of_open(RO, 0, "test.txt", OFLAG_TRUNC, R_FD_READ), E_PERM);
  CHECK_ERRNO(raw_errno_of_open(RO, 0, "new.txt", OFLAG_CREAT, R_FD_READ), E_PERM);
  CHECK_ERRNO(raw_errno_of_open(RO, 0, "test.txt", 0, R_FD_READ | R_FD_ALLOCATE), E_PERM);
  CHECK_ERRNO(raw_path_create_directory(RO, S("newdir")), E_PERM);
  CHECK_ERRNO(raw_path_remove_directory(RO, S("d")), E_PERM);
  CHECK_ERRNO(raw_path_unlink_file(RO, S("test.txt")), E_PERM);
  CHECK_ERRNO(raw_path_rename(RO, S("test.txt"), RO, S("moved.txt")), E_PERM);
  CHECK_ERRNO(raw_path_rename(RO, S("test.txt"), SB, S("stolen.txt")), E_PERM);
  write_file("/sandbox/planted.txt", "p");
  CHECK_ERRNO(raw_path_rename(SB, S("planted.txt"), RO, S("planted.txt")), E_PERM);
  CHECK_ERRNO(raw_path_link(RO, 0, S("test.txt"), SB, S("alias.txt")), E_PERM);
  CHECK_ERRNO(raw_path_link(SB, 0, S("planted.txt"), RO, S("alias.txt")), E_PERM);
  CHECK_ERRNO(raw_path_symlink(S("test.txt"), RO, S("sym")), E_PERM);
  CHECK_ERRNO(raw_path_filestat_set_times(RO, 0, S("test.txt"), 0, 0, FST_MTIM_NOW), E_PERM);
  CHECK(unlink("/sandbox/planted.txt") == 0);

  // ... and so does every descriptor opened beneath them.
  int d = open_dir(RO, "d");
  CHECK(d >= 0);
  CHECK_ERRNO(raw_path_create_directory(d, S("x")), E_PERM);
  CHECK_ERRNO(raw_path_unlink_file(d, S("inner.txt")), E_PERM);
  CHECK_ERRNO(raw_fd_filestat_set_times(d, 0, 0, FST_MTIM_NOW), E_PERM);
  CHECK_ERRNO(raw_errno_of_open(d, 0, "inner.txt", 0, R_FD_READ | R_FD_WRITE), E_PERM);
  CHECK_OK(raw_errno_of_open(d, 0, "inner.txt", 0, R_FD_READ));
  raw_fd_close(d);

  // Reading and listing work.
  DIR* dir = opendir("/ro");
  CHECK(dir != NULL);
  int n = 0;
  while (dir && readdir(dir)) ++n;
  if (dir) closedir(dir);
  CHECK(n == 4);
  CHECK(stat("/ro/d/inner.txt", &st) == 0 && S_ISREG(st.st_mode));
}

static int fd_limit(void) {
  // The host allows 8 descriptors: stdio and two preopens leave 3.
  int fds[8];
  int opened = 0;
  int last = 0;
  for (int i = 0; i < 8; ++i) {
    int fd = open_at(SB, ".", OFLAG_DIRECTORY, R_FD_READDIR, 0);
    if (fd < 0) {
      last = -fd;
      break;
    }
    fds[opened++] = fd;
  }
  CHECK(opened == 3);
  CHECK(last == E_MFILE);
  CHECK_OK(raw_fd_close(fds[0]));
  CHECK(open_at(SB, ".", OFLAG_DIRECTORY, R_FD_READDIR, 0) >= 0);
  return finish("fdlimit");
}

// The host made /sandbox/fifo. Nobody has it open: opening it to write
// fails at once (ENXIO) instead of blocking, opening it to read succeeds
// at once, and reading sees EOF.
static int fifo_without_writer(void) {
  errno = 0;
  CHECK(open("/sandbox/fifo", O_WRONLY) < 0 && errno == ENXIO);
  int fd = open("/sandbox/fifo", O_RDONLY);
  CHECK(fd >= 0);
  char c;
  CHECK(read(fd, &c, 1) == 0);
  uint64_t pos;
  CHECK_ERRNO(raw_fd_seek(fd, 0, 0, P(&pos)), E_SPIPE);
  close(fd);
  return finish("fifo");
}

// The host holds /sandbox/fifo open and never writes: the read blocks
// until the host interrupts the call.
static int fifo_blocking_read(void) {
  int fd = open("/sandbox/fifo", O_RDONLY);
  printf("opened %d\n", fd >= 0);
  fflush(stdout);
  char c;
  read(fd, &c, 1);
  return 5;
}

int main(int argc, char** argv) {
  if (argc > 1 && strcmp(argv[1], "fdlimit") == 0) return fd_limit();
  if (argc > 1 && strcmp(argv[1], "fifo") == 0) return fifo_without_writer();
  if (argc > 1 && strcmp(argv[1], "fifo_block") == 0) return fifo_blocking_read();
  preopens();
  libc_files();
  readdir_many();
  rights_and_flags();
  directory_descriptors();
  path_errors();
  escapes();
  read_only();
  return finish("fs");
}
