/*
 * hostile_loop — guests that never finish on their own. Tests use them to
 * check deadlines and interrupts in both phases of a call.
 *
 * Exports:
 *   spin()                  loops forever (numeric export, no result)
 *   spin_bytes (byte fn)    loops forever in phase one
 *   spin_in_post (byte fn)  phase one echoes the input; its post-return
 *                           (cabi_post_spin_in_post) loops forever
 *   busy_ms(i32 ms) -> i32  busy-waits `ms` milliseconds of the WASI
 *                           monotonic clock, then returns `ms` (a call that
 *                           runs for a known time and then completes)
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime under -std=c11 */
#include <time.h>

#include "keel.h"

KEEL_CABI_REALLOC()

/* The volatile counter keeps each iteration observable, so the loop can
 * be neither removed nor assumed to terminate. */
static volatile uint32_t g_counter;

static _Noreturn void spin_forever(void) {
  for (;;) ++g_counter;
}

KEEL_EXPORT(spin) void spin(void) { spin_forever(); }

static int spin_bytes(const uint8_t* in, size_t len, keel_output* out) {
  (void)in, (void)len, (void)out;
  spin_forever();
}
KEEL_BYTES_FN(spin_bytes, spin_bytes)

static int echo(const uint8_t* in, size_t len, keel_output* out) {
  keel_output_set(out, in, len);
  return 0;
}
KEEL_BYTES_FN_WITH_POST(spin_in_post, echo, spin_forever)

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

KEEL_EXPORT(busy_ms) int32_t busy_ms(int32_t ms) {
  uint64_t end = now_ns() + (uint64_t)(ms > 0 ? ms : 0) * 1000000u;
  while (now_ns() < end) ++g_counter;
  return ms;
}
