// WASI without files: args, environ, clocks, random, stdio, poll_oneoff,
// sockets, process functions, the descriptor table and bad pointers.
// argv[1] picks what to do; "basics" runs all checks.
#include <errno.h>
#include <stdbool.h>
#include <time.h>
#include <unistd.h>

#include "wasi_raw.h"

extern char** environ;

static uint64_t now_ns(int clock) {
  uint64_t t = 0;
  raw_clock_time_get(clock, 1, P(&t));
  return t;
}

static void args_and_env(int argc, char** argv) {
  CHECK(argc == 4);
  CHECK(strcmp(argv[2],
               "\xce\xb1-\xce\xb2"
               "eta") == 0);
  CHECK(strcmp(argv[3], "") == 0);
  CHECK(getenv("KEEL_A") != NULL && strcmp(getenv("KEEL_A"), "1") == 0);
  CHECK(getenv("EMPTY") != NULL && strcmp(getenv("EMPTY"), "") == 0);
  CHECK(getenv("HOME") == NULL);  // nothing of the host's environment leaks in
  int n = 0;
  for (char** e = environ; *e; ++e) ++n;
  CHECK(n == 2);

  i32 count = 0, size = 0;
  CHECK_OK(raw_args_sizes_get(P(&count), P(&size)));
  CHECK(count == 4);
  CHECK(size == (i32)(strlen("wasi_basics") + strlen("basics") + strlen(argv[2]) + 4));
  CHECK_ERRNO(raw_args_sizes_get(BAD_PTR, P(&size)), E_FAULT);
  CHECK_ERRNO(raw_args_sizes_get(P(&count), BAD_PTR), E_FAULT);
  char buf[128];
  i32 ptrs[8];
  CHECK_ERRNO(raw_args_get(BAD_PTR, P(buf)), E_FAULT);
  CHECK_ERRNO(raw_args_get(P(ptrs), BAD_PTR), E_FAULT);
  CHECK_OK(raw_args_get(P(ptrs), P(buf)));
  CHECK(strcmp((char*)(uintptr_t)ptrs[1], "basics") == 0);

  CHECK_OK(raw_environ_sizes_get(P(&count), P(&size)));
  CHECK(count == 2);
  CHECK(size == (i32)(strlen("KEEL_A=1") + strlen("EMPTY=") + 2));
  CHECK_ERRNO(raw_environ_sizes_get(BAD_PTR, P(&size)), E_FAULT);
  CHECK_ERRNO(raw_environ_get(P(ptrs), BAD_PTR), E_FAULT);
  CHECK_ERRNO(raw_environ_get(BAD_PTR, P(buf)), E_FAULT);
}

static void clocks(void) {
  for (int id = 0; id < 4; ++id) {
    uint64_t res = 0, t = 0;
    CHECK_OK(raw_clock_res_get(id, P(&res)));
    CHECK(res > 0 && res <= 1000000);
    CHECK_OK(raw_clock_time_get(id, 0, P(&t)));
    CHECK(t > 0);
  }
  CHECK(now_ns(0) > 1600000000ull * 1000000000ull);  // realtime is wall time
  uint64_t a = now_ns(1), b = now_ns(1);
  CHECK(b >= a);
  uint64_t cpu0 = now_ns(2), thread0 = now_ns(3);
  volatile uint64_t spin = 0;
  for (int i = 0; i < 20000000; ++i) spin += (uint64_t)i;
  CHECK(spin > 0);
  CHECK(now_ns(2) > cpu0);
  CHECK(now_ns(3) > thread0);
  uint64_t t;
  CHECK_ERRNO(raw_clock_time_get(4, 0, P(&t)), E_INVAL);
  CHECK_ERRNO(raw_clock_res_get(4, P(&t)), E_INVAL);
  CHECK_ERRNO(raw_clock_time_get(1, 0, BAD_PTR), E_FAULT);
  CHECK_ERRNO(raw_clock_res_get(0, BAD_PTR), E_FAULT);
  struct timespec ts;
  CHECK(clock_gettime(CLOCK_MONOTONIC, &ts) == 0);
  CHECK(clock_getres(CLOCK_REALTIME, &ts) == 0);
}

static void random_and_yield(void) {
  uint8_t a[64] = {0}, b[64] = {0};
  CHECK_OK(raw_random_get(P(a), sizeof(a)));
  CHECK_OK(raw_random_get(P(b), sizeof(b)));
  CHECK(memcmp(a, b, sizeof(a)) != 0);
  CHECK_OK(raw_random_get(P(a), 0));
  CHECK_ERRNO(raw_random_get(BAD_PTR, 16), E_FAULT);
  CHECK_ERRNO(raw_random_get(P(a), 0x7FFFFFFF), E_FAULT);
  static uint8_t big[1 << 20];
  CHECK_OK(raw_random_get(P(big), sizeof(big)));
  CHECK_OK(raw_sched_yield());
  CHECK_ERRNO(raw_proc_raise(6), E_NOTSUP);
}

static void stdio(void) {
  fdstat_t st;
  CHECK_OK(raw_fd_fdstat_get(0, P(&st)));
  CHECK(fdstat_base(&st) & R_FD_READ);
  CHECK(!(fdstat_base(&st) & (R_FD_WRITE | R_FD_SEEK | R_FD_TELL)));
  CHECK_OK(raw_fd_fdstat_get(1, P(&st)));
  CHECK(fdstat_base(&st) & R_FD_WRITE);
  CHECK(!(fdstat_base(&st) & R_FD_READ));
  CHECK(fdstat_type(&st) == 0);  // a capture is not a terminal
  CHECK(!isatty(1));
  CHECK_ERRNO(raw_fd_fdstat_get(1, BAD_PTR), E_FAULT);
  CHECK_ERRNO(raw_fd_fdstat_get(99, P(&st)), E_BADF);

  // stdin is the buffer "hello stdin\n".
  char line[64];
  CHECK(fgets(line, sizeof(line), stdin) != NULL && strcmp(line, "hello stdin\n") == 0);
  CHECK(fgets(line, sizeof(line), stdin) == NULL && feof(stdin));

  uint64_t pos;
  char data[8] = "abc";
  iov_t iov = {P(data), 3};
  i32 n = -1;
  CHECK_ERRNO(raw_fd_seek(1, 0, 0, P(&pos)), E_SPIPE);
  CHECK_ERRNO(raw_fd_tell(0, P(&pos)), E_SPIPE);
  CHECK_ERRNO(raw_fd_write(0, P(&iov), 1, P(&n)), E_BADF);
  CHECK_ERRNO(raw_fd_read(1, P(&iov), 1, P(&n)), E_BADF);
  CHECK_ERRNO(raw_fd_pread(0, P(&iov), 1, 0, P(&n)), E_SPIPE);
  CHECK_ERRNO(raw_fd_pwrite(1, P(&iov), 1, 0, P(&n)), E_SPIPE);
  CHECK_ERRNO(raw_fd_write(99, P(&iov), 1, P(&n)), E_BADF);
  CHECK_ERRNO(raw_fd_write(2, BAD_PTR, 1, P(&n)), E_FAULT);
  iov_t bad = {BAD_PTR, 3};
  CHECK_ERRNO(raw_fd_write(2, P(&bad), 1, P(&n)), E_FAULT);
  iov_t too_long = {P(data), 0x7FFFFFFF};
  CHECK_ERRNO(raw_fd_write(2, P(&too_long), 1, P(&n)), E_FAULT);
  CHECK_ERRNO(raw_fd_write(2, P(&iov), 1, BAD_PTR), E_FAULT);
  CHECK_ERRNO(raw_fd_read(0, P(&bad), 1, P(&n)), E_FAULT);
  CHECK_ERRNO(raw_fd_write(2, P(&iov), 0x20000000, P(&n)), E_FAULT);
  iov_t two[2] = {{P("to-"), 3}, {P("stderr\n"), 7}};
  CHECK_OK(raw_fd_write(2, P(two), 2, P(&n)));
  CHECK(n == 10);

  filestat_t fs;
  CHECK_OK(raw_fd_filestat_get(1, P(&fs)));
  CHECK(filestat_type(&fs) == 0);
  CHECK_ERRNO(raw_fd_filestat_get(1, BAD_PTR), E_FAULT);
  CHECK_ERRNO(raw_fd_sync(1), E_BADF);
  CHECK_ERRNO(raw_fd_datasync(1), E_BADF);
  CHECK_ERRNO(raw_fd_advise(0, 0, 0, 0), E_BADF);
  CHECK_ERRNO(raw_fd_allocate(1, 0, 1), E_BADF);
  CHECK_ERRNO(raw_fd_filestat_set_size(1, 0), E_BADF);
  CHECK_ERRNO(raw_fd_filestat_set_times(1, 0, 0, FST_MTIM_NOW), E_BADF);
  char dirbuf[64];
  CHECK_ERRNO(raw_fd_readdir(1, P(dirbuf), sizeof(dirbuf), 0, P(&n)), E_BADF);

  CHECK_OK(raw_fd_fdstat_set_flags(1, FDFLAG_NONBLOCK));
  CHECK_OK(raw_fd_fdstat_get(1, P(&st)));
  CHECK(fdstat_flags(&st) == FDFLAG_NONBLOCK);
  CHECK_OK(raw_fd_fdstat_set_flags(1, 0));
  CHECK_ERRNO(raw_fd_fdstat_set_flags(1, FDFLAG_SYNC), E_INVAL);
  CHECK_ERRNO(raw_fd_fdstat_set_flags(1, 0x100), E_INVAL);

  // Rights only shrink: stdin without FD_READ cannot be read, nor regain it.
  CHECK_OK(raw_fd_fdstat_set_rights(0, R_POLL_FD_READWRITE, 0));
  CHECK_ERRNO(raw_fd_read(0, P(&iov), 1, P(&n)), E_BADF);
  CHECK_ERRNO(raw_fd_fdstat_set_rights(0, R_FD_READ, 0), E_NOTCAPABLE);
  CHECK_ERRNO(raw_fd_fdstat_set_flags(0, 0), E_NOTCAPABLE);
  CHECK_ERRNO(raw_fd_fdstat_set_rights(42, 0, 0), E_BADF);
}

static void no_files(void) {
  char name[16];
  i32 prestat[2];
  CHECK_ERRNO(raw_fd_prestat_get(3, P(prestat)), E_BADF);
  CHECK_ERRNO(raw_fd_prestat_get(0, P(prestat)), E_BADF);
  CHECK_ERRNO(raw_fd_prestat_dir_name(3, P(name), sizeof(name)), E_BADF);
  CHECK_ERRNO(raw_fd_prestat_dir_name(1, P(name), sizeof(name)), E_NOTDIR);
  CHECK(fopen("/etc/passwd", "r") == NULL);
  CHECK(fopen("x", "w") == NULL);
  i32 fd;
  CHECK_ERRNO(raw_path_open(3, 0, S("x"), OFLAG_CREAT, R_ALL, R_ALL, 0, P(&fd)), E_BADF);
  CHECK_ERRNO(raw_path_open(0, 0, S("x"), 0, R_ALL, R_ALL, 0, P(&fd)), E_BADF);
  CHECK_ERRNO(raw_path_create_directory(1, S("d")), E_BADF);
  CHECK_ERRNO(raw_path_unlink_file(2, S("d")), E_BADF);
  CHECK_ERRNO(raw_path_symlink(S("a"), 5, S("b")), E_BADF);
}

static void sockets(void) {
  i32 fd, n, flags;
  char data[4];
  iov_t iov = {P(data), 4};
  CHECK_ERRNO(raw_sock_accept(1, 0, P(&fd)), E_NOTSOCK);
  CHECK_ERRNO(raw_sock_accept(77, 0, P(&fd)), E_BADF);
  CHECK_ERRNO(raw_sock_recv(0, P(&iov), 1, 0, P(&n), P(&flags)), E_NOTSOCK);
  CHECK_ERRNO(raw_sock_recv(77, P(&iov), 1, 0, P(&n), P(&flags)), E_BADF);
  CHECK_ERRNO(raw_sock_send(1, P(&iov), 1, 0, P(&n)), E_NOTSOCK);
  CHECK_ERRNO(raw_sock_send(77, P(&iov), 1, 0, P(&n)), E_BADF);
  CHECK_ERRNO(raw_sock_shutdown(2, 3), E_NOTSOCK);
  CHECK_ERRNO(raw_sock_shutdown(77, 3), E_BADF);
}

// Subscription and event layouts (48 and 32 bytes).
typedef struct {
  uint64_t userdata;
  uint8_t tag;
  uint8_t pad[7];
  union {
    struct {
      uint32_t id;
      uint32_t pad;
      uint64_t timeout;
      uint64_t precision;
      uint16_t flags;
    } clock;
    struct {
      uint32_t fd;
    } fd;
  } u;
} sub_t;
typedef struct {
  uint64_t userdata;
  uint16_t error;
  uint8_t type;
  uint8_t pad[5];
  uint64_t nbytes;
  uint16_t flags;
} event_t;
_Static_assert(sizeof(sub_t) == 48, "subscription");
_Static_assert(sizeof(event_t) == 32, "event");

static sub_t clock_sub(uint64_t userdata, uint32_t id, uint64_t timeout, uint16_t flags) {
  sub_t s;
  memset(&s, 0, sizeof(s));
  s.userdata = userdata;
  s.tag = 0;
  s.u.clock.id = id;
  s.u.clock.timeout = timeout;
  s.u.clock.flags = flags;
  return s;
}

static sub_t fd_sub(uint64_t userdata, uint8_t tag, uint32_t fd) {
  sub_t s;
  memset(&s, 0, sizeof(s));
  s.userdata = userdata;
  s.tag = tag;
  s.u.fd.fd = fd;
  return s;
}

static void poll(void) {
  sub_t subs[4];
  event_t ev[4];
  i32 n = -1;
  CHECK_ERRNO(raw_poll_oneoff(P(subs), P(ev), 0, P(&n)), E_INVAL);

  // Relative monotonic sleep.
  subs[0] = clock_sub(7, 1, 30 * 1000000ull, 0);
  uint64_t t0 = now_ns(1);
  CHECK_OK(raw_poll_oneoff(P(subs), P(ev), 1, P(&n)));
  CHECK(now_ns(1) - t0 >= 30 * 1000000ull);
  CHECK(n == 1 && ev[0].userdata == 7 && ev[0].type == 0 && ev[0].error == 0);

  // Absolute monotonic and realtime deadlines.
  subs[0] = clock_sub(8, 1, now_ns(1) + 20 * 1000000ull, 1);
  t0 = now_ns(1);
  CHECK_OK(raw_poll_oneoff(P(subs), P(ev), 1, P(&n)));
  CHECK(now_ns(1) - t0 >= 19 * 1000000ull && n == 1 && ev[0].userdata == 8);
  subs[0] = clock_sub(9, 0, now_ns(0) + 20 * 1000000ull, 1);
  t0 = now_ns(1);
  CHECK_OK(raw_poll_oneoff(P(subs), P(ev), 1, P(&n)));
  CHECK(now_ns(1) - t0 >= 15 * 1000000ull && n == 1 && ev[0].userdata == 9);
  subs[0] = clock_sub(10, 0, 10 * 1000000ull, 0);
  CHECK_OK(raw_poll_oneoff(P(subs), P(ev), 1, P(&n)));
  CHECK(n == 1 && ev[0].userdata == 10);

  // The earliest of two clocks wins.
  subs[0] = clock_sub(1, 1, 5 * 1000000000ull, 0);
  subs[1] = clock_sub(2, 1, 10 * 1000000ull, 0);
  t0 = now_ns(1);
  CHECK_OK(raw_poll_oneoff(P(subs), P(ev), 2, P(&n)));
  CHECK(now_ns(1) - t0 < 2000000000ull);
  CHECK(n == 1 && ev[0].userdata == 2);

  // Ready descriptors end the wait at once: stdin (the buffer, at EOF
  // now) and stdout; a closed fd and a CPU clock report their errors.
  subs[0] = clock_sub(1, 1, 5 * 1000000000ull, 0);
  subs[1] = fd_sub(2, 1, 0);
  subs[2] = fd_sub(3, 2, 1);
  subs[3] = fd_sub(4, 1, 55);
  t0 = now_ns(1);
  CHECK_OK(raw_poll_oneoff(P(subs), P(ev), 4, P(&n)));
  CHECK(now_ns(1) - t0 < 2000000000ull);
  CHECK(n == 3);
  CHECK(ev[0].userdata == 2 && ev[0].type == 1 && ev[0].error == 0 && ev[0].flags == 1);
  CHECK(ev[1].userdata == 3 && ev[1].type == 2 && ev[1].error == 0);
  CHECK(ev[2].userdata == 4 && ev[2].error == E_BADF);
  subs[0] = clock_sub(5, 2, 1000, 0);
  CHECK_OK(raw_poll_oneoff(P(subs), P(ev), 1, P(&n)));
  CHECK(n == 1 && ev[0].userdata == 5 && ev[0].error == E_INVAL);
  subs[0] = fd_sub(6, 2, 0);  // stdin is not writable
  CHECK_OK(raw_poll_oneoff(P(subs), P(ev), 1, P(&n)));
  CHECK(n == 1 && ev[0].error == E_BADF);
  subs[0] = clock_sub(5, 1, 0, 0);
  CHECK_OK(raw_poll_oneoff(P(subs), P(ev), 1, P(&n)));
  CHECK(n == 1 && ev[0].userdata == 5);

  subs[0] = clock_sub(5, 1, 0, 0);
  subs[0].tag = 9;
  CHECK_ERRNO(raw_poll_oneoff(P(subs), P(ev), 1, P(&n)), E_INVAL);
  subs[0] = clock_sub(5, 1, 0, 0);
  CHECK_ERRNO(raw_poll_oneoff(BAD_PTR, P(ev), 1, P(&n)), E_FAULT);
  CHECK_ERRNO(raw_poll_oneoff(P(subs), BAD_PTR, 1, P(&n)), E_FAULT);
  CHECK_ERRNO(raw_poll_oneoff(P(subs), P(ev), 1, BAD_PTR), E_FAULT);
  CHECK_ERRNO(raw_poll_oneoff(P(subs), P(ev), 0x10000000, P(&n)), E_FAULT);
  static sub_t many_subs[70000];
  static event_t many_events[70000];
  CHECK_ERRNO(raw_poll_oneoff(P(many_subs), P(many_events), 70000, P(&n)), E_NOMEM);

  // libc's sleeps go through poll_oneoff too.
  t0 = now_ns(1);
  struct timespec req = {0, 15 * 1000000};
  CHECK(nanosleep(&req, NULL) == 0);
  CHECK(now_ns(1) - t0 >= 15 * 1000000ull);
}

static void renumber_and_close(void) {
  // fd 0 becomes what fd 2 was: writes to it land in the stderr capture.
  CHECK_ERRNO(raw_fd_renumber(2, 50), E_BADF);
  CHECK_ERRNO(raw_fd_renumber(50, 2), E_BADF);
  CHECK_OK(raw_fd_renumber(2, 2));
  CHECK_OK(raw_fd_renumber(2, 0));
  iov_t iov = {P("via-renumber\n"), 13};
  i32 n;
  CHECK_ERRNO(raw_fd_write(2, P(&iov), 1, P(&n)), E_BADF);
  CHECK_OK(raw_fd_write(0, P(&iov), 1, P(&n)));
  CHECK_OK(raw_fd_close(0));
  CHECK_ERRNO(raw_fd_close(0), E_BADF);
  CHECK_ERRNO(raw_fd_write(0, P(&iov), 1, P(&n)), E_BADF);
}

int main(int argc, char** argv) {
  const char* mode = argc > 1 ? argv[1] : "";
  if (strcmp(mode, "exit") == 0) {
    printf("bye\n");
    exit(atoi(argv[2]));
  }
  if (strcmp(mode, "raw_exit") == 0) raw_proc_exit(atoi(argv[2]));
  if (strcmp(mode, "sleep") == 0) {
    printf("sleeping\n");
    fflush(stdout);
    sleep(60);
    return 3;
  }
  if (strcmp(mode, "cat") == 0) {
    // Copies stdin to stdout until EOF.
    char buf[256];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), stdin)) > 0) fwrite(buf, 1, n, stdout);
    return ferror(stdin) ? 2 : 0;
  }
  if (strcmp(mode, "poll_stdin") == 0) {
    // stdin is a pipe the host has written "ping" to: poll says readable.
    sub_t s = fd_sub(1, 1, 0);
    event_t e;
    i32 n;
    CHECK_OK(raw_poll_oneoff(P(&s), P(&e), 1, P(&n)));
    CHECK(n == 1 && e.type == 1 && e.error == 0 && e.nbytes == 4);
    char buf[8];
    iov_t iov = {P(buf), sizeof(buf)};
    CHECK_OK(raw_fd_read(0, P(&iov), 1, P(&n)));
    CHECK(n == 4 && memcmp(buf, "ping", 4) == 0);
    // Non-blocking: nothing more yet.
    CHECK_OK(raw_fd_fdstat_set_flags(0, FDFLAG_NONBLOCK));
    CHECK_ERRNO(raw_fd_read(0, P(&iov), 1, P(&n)), E_AGAIN);
    return finish("poll_stdin");
  }
  if (strcmp(mode, "write_until_error") == 0) {
    // stdout is a pipe nobody reads: EPIPE, and the host survives.
    char buf[1024];
    memset(buf, 'x', sizeof(buf));
    iov_t iov = {P(buf), sizeof(buf)};
    i32 n;
    for (int i = 0; i < 100000; ++i) {
      int e = raw_fd_write(1, P(&iov), 1, P(&n));
      if (e != 0) return e;
    }
    return 0;
  }
  if (strcmp(mode, "capture") == 0) {
    for (int i = 0; i < 100; ++i) printf("0123456789");
    return 0;
  }
  args_and_env(argc, argv);
  clocks();
  random_and_yield();
  stdio();
  no_files();
  sockets();
  poll();
  renumber_and_close();
  return finish("basics");
}
