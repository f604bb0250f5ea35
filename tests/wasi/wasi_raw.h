// Test helpers for WASI guests: every wasi_snapshot_preview1 import with its
// exact wasm signature (pointers and lengths as plain i32, so that tests can
// pass bad ones), WASI constants, and CHECK macros that report each failure
// on stderr and make the program exit 1.
#ifndef KEEL_TESTS_WASI_WASI_RAW_H_
#define KEEL_TESTS_WASI_WASI_RAW_H_

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WASI_IMPORT(name) \
  __attribute__((import_module("wasi_snapshot_preview1"), import_name(#name)))

typedef int32_t i32;
typedef int64_t i64;

i32 raw_args_get(i32 argv, i32 buf) WASI_IMPORT(args_get);
i32 raw_args_sizes_get(i32 argc, i32 size) WASI_IMPORT(args_sizes_get);
i32 raw_environ_get(i32 env, i32 buf) WASI_IMPORT(environ_get);
i32 raw_environ_sizes_get(i32 count, i32 size) WASI_IMPORT(environ_sizes_get);
i32 raw_clock_res_get(i32 id, i32 out) WASI_IMPORT(clock_res_get);
i32 raw_clock_time_get(i32 id, i64 precision, i32 out) WASI_IMPORT(clock_time_get);
i32 raw_fd_advise(i32 fd, i64 offset, i64 len, i32 advice) WASI_IMPORT(fd_advise);
i32 raw_fd_allocate(i32 fd, i64 offset, i64 len) WASI_IMPORT(fd_allocate);
i32 raw_fd_close(i32 fd) WASI_IMPORT(fd_close);
i32 raw_fd_datasync(i32 fd) WASI_IMPORT(fd_datasync);
i32 raw_fd_fdstat_get(i32 fd, i32 out) WASI_IMPORT(fd_fdstat_get);
i32 raw_fd_fdstat_set_flags(i32 fd, i32 flags) WASI_IMPORT(fd_fdstat_set_flags);
i32 raw_fd_fdstat_set_rights(i32 fd, i64 base, i64 inheriting) WASI_IMPORT(fd_fdstat_set_rights);
i32 raw_fd_filestat_get(i32 fd, i32 out) WASI_IMPORT(fd_filestat_get);
i32 raw_fd_filestat_set_size(i32 fd, i64 size) WASI_IMPORT(fd_filestat_set_size);
i32 raw_fd_filestat_set_times(i32 fd, i64 atim, i64 mtim, i32 fst)
    WASI_IMPORT(fd_filestat_set_times);
i32 raw_fd_pread(i32 fd, i32 iovs, i32 n, i64 offset, i32 out) WASI_IMPORT(fd_pread);
i32 raw_fd_prestat_get(i32 fd, i32 out) WASI_IMPORT(fd_prestat_get);
i32 raw_fd_prestat_dir_name(i32 fd, i32 buf, i32 len) WASI_IMPORT(fd_prestat_dir_name);
i32 raw_fd_pwrite(i32 fd, i32 iovs, i32 n, i64 offset, i32 out) WASI_IMPORT(fd_pwrite);
i32 raw_fd_read(i32 fd, i32 iovs, i32 n, i32 out) WASI_IMPORT(fd_read);
i32 raw_fd_readdir(i32 fd, i32 buf, i32 len, i64 cookie, i32 out) WASI_IMPORT(fd_readdir);
i32 raw_fd_renumber(i32 fd, i32 to) WASI_IMPORT(fd_renumber);
i32 raw_fd_seek(i32 fd, i64 offset, i32 whence, i32 out) WASI_IMPORT(fd_seek);
i32 raw_fd_sync(i32 fd) WASI_IMPORT(fd_sync);
i32 raw_fd_tell(i32 fd, i32 out) WASI_IMPORT(fd_tell);
i32 raw_fd_write(i32 fd, i32 iovs, i32 n, i32 out) WASI_IMPORT(fd_write);
i32 raw_path_create_directory(i32 fd, i32 path, i32 len) WASI_IMPORT(path_create_directory);
i32 raw_path_filestat_get(i32 fd, i32 flags, i32 path, i32 len, i32 out)
    WASI_IMPORT(path_filestat_get);
i32 raw_path_filestat_set_times(i32 fd, i32 flags, i32 path, i32 len, i64 atim, i64 mtim, i32 fst)
    WASI_IMPORT(path_filestat_set_times);
i32 raw_path_link(i32 old_fd, i32 old_flags, i32 old_path, i32 old_len, i32 new_fd, i32 new_path,
                  i32 new_len) WASI_IMPORT(path_link);
i32 raw_path_open(i32 fd, i32 dirflags, i32 path, i32 len, i32 oflags, i64 base, i64 inheriting,
                  i32 fdflags, i32 out) WASI_IMPORT(path_open);
i32 raw_path_readlink(i32 fd, i32 path, i32 len, i32 buf, i32 buf_len, i32 out)
    WASI_IMPORT(path_readlink);
i32 raw_path_remove_directory(i32 fd, i32 path, i32 len) WASI_IMPORT(path_remove_directory);
i32 raw_path_rename(i32 fd, i32 old_path, i32 old_len, i32 new_fd, i32 new_path, i32 new_len)
    WASI_IMPORT(path_rename);
i32 raw_path_symlink(i32 old_path, i32 old_len, i32 fd, i32 new_path, i32 new_len)
    WASI_IMPORT(path_symlink);
i32 raw_path_unlink_file(i32 fd, i32 path, i32 len) WASI_IMPORT(path_unlink_file);
i32 raw_poll_oneoff(i32 in, i32 out, i32 n, i32 nevents) WASI_IMPORT(poll_oneoff);
_Noreturn void raw_proc_exit(i32 code) WASI_IMPORT(proc_exit);
i32 raw_proc_raise(i32 sig) WASI_IMPORT(proc_raise);
i32 raw_sched_yield(void) WASI_IMPORT(sched_yield);
i32 raw_random_get(i32 buf, i32 len) WASI_IMPORT(random_get);
i32 raw_sock_accept(i32 fd, i32 flags, i32 out) WASI_IMPORT(sock_accept);
i32 raw_sock_recv(i32 fd, i32 iovs, i32 n, i32 flags, i32 nread, i32 oflags) WASI_IMPORT(sock_recv);
i32 raw_sock_send(i32 fd, i32 iovs, i32 n, i32 flags, i32 nwritten) WASI_IMPORT(sock_send);
i32 raw_sock_shutdown(i32 fd, i32 how) WASI_IMPORT(sock_shutdown);

// A guest pointer as an i32, and a string as (pointer, length).
#define P(x) ((i32)(uintptr_t)(x))
#define S(s) P(s), (i32)strlen(s)
// Far beyond any memory these programs have.
#define BAD_PTR ((i32)0xFFFFFF00)

// WASI errno values.
enum {
  E_SUCCESS = 0,
  E_AGAIN = 6,
  E_BADF = 8,
  E_EXIST = 20,
  E_FAULT = 21,
  E_ILSEQ = 25,
  E_INVAL = 28,
  E_ISDIR = 31,
  E_LOOP = 32,
  E_MFILE = 33,
  E_NAMETOOLONG = 37,
  E_NOENT = 44,
  E_NOMEM = 48,
  E_NOTDIR = 54,
  E_NOTEMPTY = 55,
  E_NOTSOCK = 57,
  E_NOTSUP = 58,
  E_PERM = 63,
  E_PIPE = 64,
  E_SPIPE = 70,
  E_NOTCAPABLE = 76,
};

// Rights, flags and types.
#define R_FD_DATASYNC (1ull << 0)
#define R_FD_READ (1ull << 1)
#define R_FD_SEEK (1ull << 2)
#define R_FD_FDSTAT_SET_FLAGS (1ull << 3)
#define R_FD_SYNC (1ull << 4)
#define R_FD_TELL (1ull << 5)
#define R_FD_WRITE (1ull << 6)
#define R_FD_ADVISE (1ull << 7)
#define R_FD_ALLOCATE (1ull << 8)
#define R_PATH_CREATE_DIRECTORY (1ull << 9)
#define R_PATH_CREATE_FILE (1ull << 10)
#define R_PATH_OPEN (1ull << 13)
#define R_FD_READDIR (1ull << 14)
#define R_PATH_FILESTAT_GET (1ull << 18)
#define R_FD_FILESTAT_GET (1ull << 21)
#define R_FD_FILESTAT_SET_SIZE (1ull << 22)
#define R_FD_FILESTAT_SET_TIMES (1ull << 23)
#define R_PATH_UNLINK_FILE (1ull << 26)
#define R_POLL_FD_READWRITE (1ull << 27)
#define R_ALL ((1ull << 30) - 1)
#define R_FILE                                                                             \
  (R_FD_DATASYNC | R_FD_READ | R_FD_SEEK | R_FD_FDSTAT_SET_FLAGS | R_FD_SYNC | R_FD_TELL | \
   R_FD_WRITE | R_FD_ADVISE | R_FD_ALLOCATE | R_FD_FILESTAT_GET | R_FD_FILESTAT_SET_SIZE | \
   R_FD_FILESTAT_SET_TIMES | R_POLL_FD_READWRITE)

#define FDFLAG_APPEND 1
#define FDFLAG_NONBLOCK 4
#define FDFLAG_SYNC 16
#define OFLAG_CREAT 1
#define OFLAG_DIRECTORY 2
#define OFLAG_EXCL 4
#define OFLAG_TRUNC 8
#define LOOKUP_FOLLOW 1
#define FST_ATIM 1
#define FST_ATIM_NOW 2
#define FST_MTIM 4
#define FST_MTIM_NOW 8
#define FT_CHAR 2
#define FT_DIR 3
#define FT_REG 4
#define FT_SYMLINK 7

// WASI layouts, read by offset.
typedef struct {
  uint8_t b[24];
} fdstat_t;
typedef struct {
  uint8_t b[64];
} filestat_t;
static inline uint8_t fdstat_type(const fdstat_t* s) { return s->b[0]; }
static inline uint16_t fdstat_flags(const fdstat_t* s) {
  uint16_t v;
  memcpy(&v, s->b + 2, 2);
  return v;
}
static inline uint64_t fdstat_base(const fdstat_t* s) {
  uint64_t v;
  memcpy(&v, s->b + 8, 8);
  return v;
}
static inline uint64_t fdstat_inh(const fdstat_t* s) {
  uint64_t v;
  memcpy(&v, s->b + 16, 8);
  return v;
}
static inline uint8_t filestat_type(const filestat_t* s) { return s->b[16]; }
static inline uint64_t filestat_u64(const filestat_t* s, int off) {
  uint64_t v;
  memcpy(&v, s->b + off, 8);
  return v;
}
#define FILESTAT_INO 8
#define FILESTAT_NLINK 24
#define FILESTAT_SIZE 32
#define FILESTAT_ATIM 40
#define FILESTAT_MTIM 48

typedef struct {
  i32 buf;
  i32 len;
} iov_t;

static int g_failures = 0;
static int g_checks = 0;

#define CHECK(cond)                                                                              \
  do {                                                                                           \
    ++g_checks;                                                                                  \
    if (!(cond)) {                                                                               \
      ++g_failures;                                                                              \
      fprintf(stderr, "%s:%d: CHECK failed: %s (errno %d)\n", __FILE__, __LINE__, #cond, errno); \
    }                                                                                            \
  } while (0)

// Checks a WASI call's errno.
#define CHECK_ERRNO(call, expected)                                                           \
  do {                                                                                        \
    ++g_checks;                                                                               \
    int got_ = (call);                                                                        \
    if (got_ != (expected)) {                                                                 \
      ++g_failures;                                                                           \
      fprintf(stderr, "%s:%d: %s returned %d, expected %d (%s)\n", __FILE__, __LINE__, #call, \
              got_, (int)(expected), #expected);                                              \
    }                                                                                         \
  } while (0)

#define CHECK_OK(call) CHECK_ERRNO(call, E_SUCCESS)

// Prints the verdict the host test looks for and exits accordingly.
static inline int finish(const char* name) {
  fflush(stderr);
  printf("%s: %d checks, %d failed\n", name, g_checks, g_failures);
  fflush(stdout);
  return g_failures == 0 ? 0 : 1;
}

// Opens `path` beneath `dir` with raw path_open; -errno on failure.
static inline int open_at(int dir, const char* path, int oflags, uint64_t base, int fdflags) {
  int fd = -1;
  int e = raw_path_open(dir, LOOKUP_FOLLOW, S(path), oflags, (i64)base, (i64)base, fdflags, P(&fd));
  return e == 0 ? fd : -e;
}

#endif  // KEEL_TESTS_WASI_WASI_RAW_H_
