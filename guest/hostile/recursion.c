/*
 * hostile_recursion — unbounded recursion.
 *
 * Exports:
 *   recurse() -> i32           recurses until the engine's stack limit
 *                              (uses only the wasm call stack)
 *   recurse_depth(i32 n) -> i32  recurses n levels, returns n (bounded;
 *                              shows that moderate recursion works)
 *   recurse_shadow() -> i32    recurses with 1 KiB of C stack per frame, so
 *                              the guest's own stack (64 KiB, in linear
 *                              memory) overflows first; built with
 *                              --stack-first, that is an out-of-bounds trap
 *   recurse_bytes (byte fn)    recurse() in phase one of a byte call
 *
 * The volatile store after each recursive call keeps the calls out of tail
 * position, so clang cannot turn the recursion into a loop.
 */
#include "keel.h"

KEEL_CABI_REALLOC()

static volatile uint32_t g_sink;

/* limit == UINT32_MAX means "no limit": the stack overflows long before. */
__attribute__((noinline)) static uint32_t down(uint32_t depth, uint32_t limit) {
  if (depth == limit) return depth;
  uint32_t r = down(depth + 1, limit);
  g_sink = r;
  return r;
}

/* Unbounded on purpose. */
#pragma clang diagnostic ignored "-Winfinite-recursion"
__attribute__((noinline)) static uint32_t down_shadow(uint32_t depth) {
  volatile uint8_t frame[1024]; /* lives in linear memory (address taken) */
  frame[depth & 1023] = (uint8_t)depth;
  uint32_t r = down_shadow(depth + 1);
  g_sink = r + frame[depth & 1023];
  return r;
}

KEEL_EXPORT(recurse) int32_t recurse(void) {
  return (int32_t)down(0, UINT32_MAX);
}

KEEL_EXPORT(recurse_depth) int32_t recurse_depth(int32_t n) {
  return (int32_t)down(0, n > 0 ? (uint32_t)n : 0);
}

KEEL_EXPORT(recurse_shadow) int32_t recurse_shadow(void) {
  return (int32_t)down_shadow(0);
}

static int recurse_bytes(const uint8_t* in, size_t len, keel_output* out) {
  (void)in, (void)len, (void)out;
  return (int)down(0, UINT32_MAX);
}
KEEL_BYTES_FN(recurse_bytes, recurse_bytes)
