/*
 * The guest of examples/embed, a reactor for wasm32-wasi written with
 * keel's C SDK (keel.h, installed in share/keel/guest) and wasi-libc.
 *
 * Imports (the host defines them, see main.cc), besides WASI:
 *   host.scale(i32 x, i64 factor) -> i32
 *   host.wait(i32 token) -> i32        blocks until the host lets it go
 * Exports:
 *   scaled_sum(i32 n) -> i32           sum of host.scale(i, 3) for i < n
 *   report() -> i32                    reads /data/notes.txt, prints a line
 *                                      about it to stdout; its word count
 *   held(i32 token) -> i32             host.wait(token) + token
 *   spin()                             never returns (for deadlines)
 */
#include <ctype.h>
#include <stdio.h>

#include "keel.h"

KEEL_IMPORT(host, scale) int32_t host_scale(int32_t x, int64_t factor);
KEEL_IMPORT(host, wait) int32_t host_wait(int32_t token);

KEEL_EXPORT(scaled_sum) int32_t scaled_sum(int32_t n) {
  int32_t sum = 0;
  for (int32_t i = 0; i < n; ++i) sum += host_scale(i, 3);
  return sum;
}

KEEL_EXPORT(report) int32_t report(void) {
  FILE* f = fopen("/data/notes.txt", "r");
  if (!f) {
    perror("/data/notes.txt");
    return -1;
  }
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
  printf("notes.txt: %d lines, %d words\n", lines, words);
  fflush(stdout);
  return words;
}

KEEL_EXPORT(held) int32_t held(int32_t token) { return host_wait(token) + token; }

KEEL_EXPORT(spin) void spin(void) {
  volatile int32_t forever = 1;
  while (forever) {
  }
}
