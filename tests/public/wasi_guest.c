/*
 * A WASI reactor for tests/public/wasi_test.cc: stdio, environment and a
 * preopened directory, reached through wasi-libc as ordinary C does.
 *
 *   report() -> i32        reads /data/input.txt, prints "lines=L words=W"
 *                          to stdout and "report done" to stderr; -1 if the
 *                          file cannot be opened
 *   echo_stdin() -> i32    copies stdin to stdout; the bytes copied
 *   greeting() -> i32      prints $GREETING (or "(none)"); its length
 *   write_data() -> i32    creates /data/out.txt: 0, or errno (EPERM under
 *                          a read-only preopen)
 *   shout(i32 n) -> i32    prints n 'x' to stdout
 *   open_keep() -> i32     opens /data/input.txt and leaves it open: the fd
 *   is_open(i32 fd) -> i32 1 if fd is an open descriptor, else 0
 *   count() -> i32         calls of count() on this instance so far
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define EXPORT(name) __attribute__((export_name(#name)))

EXPORT(report) int32_t report(void) {
  FILE* f = fopen("/data/input.txt", "r");
  if (!f) return -1;
  int lines = 0, words = 0, in_word = 0, c;
  while ((c = fgetc(f)) != EOF) {
    if (c == '\n') lines++;
    if (isspace(c)) {
      in_word = 0;
    } else if (!in_word) {
      in_word = 1;
      words++;
    }
  }
  fclose(f);
  printf("lines=%d words=%d\n", lines, words);
  fflush(stdout);
  fprintf(stderr, "report done\n");
  return words;
}

EXPORT(echo_stdin) int32_t echo_stdin(void) {
  char buf[256];
  int32_t total = 0;
  clearerr(stdin);
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) {
    fwrite(buf, 1, n, stdout);
    total += (int32_t)n;
  }
  fflush(stdout);
  return total;
}

EXPORT(greeting) int32_t greeting(void) {
  const char* g = getenv("GREETING");
  printf("%s\n", g ? g : "(none)");
  fflush(stdout);
  return g ? (int32_t)strlen(g) : -1;
}

EXPORT(write_data) int32_t write_data(void) {
  FILE* f = fopen("/data/out.txt", "w");
  if (!f) return errno;
  fclose(f);
  return 0;
}

EXPORT(eperm) int32_t eperm(void) { return EPERM; }

EXPORT(open_keep) int32_t open_keep(void) { return open("/data/input.txt", O_RDONLY); }

EXPORT(is_open) int32_t is_open(int32_t fd) { return lseek(fd, 0, SEEK_CUR) >= 0 ? 1 : 0; }

static int32_t calls;
EXPORT(count) int32_t count(void) { return ++calls; }

EXPORT(shout) int32_t shout(int32_t n) {
  for (int32_t i = 0; i < n; ++i) putchar('x');
  fflush(stdout);
  return n;
}
