/*
 * The guest of examples/embed, a reactor for wasm32-wasi written with
 * keel's C SDK (keel.h, installed in share/keel/guest).
 *
 * Imports (the host defines them, see main.cc):
 *   host.scale(i32 x, i64 factor) -> i32
 *   host.wait(i32 token) -> i32        blocks until the host lets it go
 * Exports:
 *   scaled_sum(i32 n) -> i32           sum of host.scale(i, 3) for i < n
 *   held(i32 token) -> i32             host.wait(token) + 1
 *   spin()                             never returns (for deadlines)
 */
#include "keel.h"

KEEL_IMPORT(host, scale) int32_t host_scale(int32_t x, int64_t factor);
KEEL_IMPORT(host, wait) int32_t host_wait(int32_t token);

KEEL_EXPORT(scaled_sum) int32_t scaled_sum(int32_t n) {
  int32_t sum = 0;
  for (int32_t i = 0; i < n; ++i) sum += host_scale(i, 3);
  return sum;
}

KEEL_EXPORT(held) int32_t held(int32_t token) { return host_wait(token) + 1; }

KEEL_EXPORT(spin) void spin(void) {
  volatile int32_t forever = 1;
  while (forever) {
  }
}
