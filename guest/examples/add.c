/*
 * add — the smallest useful guest, for tests and benchmarks.
 *
 * Exports:
 *   add(i32 a, i32 b) -> i32     a + b (wrapping)
 *   fib(i32 n) -> i32            naive recursive Fibonacci (CPU-bound work)
 *   echo (byte function)         output = input, zero-copy (the output
 *                                borrows the input buffer until post-return)
 */
#include "keel.h"

KEEL_CABI_REALLOC()

KEEL_EXPORT(add) int32_t add(int32_t a, int32_t b) {
  return (int32_t)((uint32_t)a + (uint32_t)b);
}

KEEL_EXPORT(fib) int32_t fib(int32_t n) {
  return n < 2 ? n : (int32_t)((uint32_t)fib(n - 1) + (uint32_t)fib(n - 2));
}

static int echo(const uint8_t* in, size_t len, keel_output* out) {
  keel_output_set(out, in, len);
  return 0;
}
KEEL_BYTES_FN(echo, echo)
