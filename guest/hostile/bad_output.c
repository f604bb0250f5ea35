/*
 * hostile_bad_output — byte functions whose returned pair lies. The host
 * must bounds-check everything it reads and fail the call (never crash,
 * never read outside the guest's memory).
 *
 * Byte functions (all take any input):
 *   pair_oob       returns a pair pointer far outside memory (0xfffffff8)
 *   pair_straddle  returns a pair pointer 4 bytes before the end of
 *                  memory: the pair itself straddles the end
 *   data_oob       pair (ptr = end of memory - 4, len = 16): the data
 *                  straddles the end
 *   data_wrap      pair (ptr = 0xfffffff0, len = 0x20): ptr + len wraps
 *                  around 2^32 to 0x10 when computed in 32 bits
 *   huge_len       pair (ptr = 1024, len = 0xffffffff)
 *   echo           a correct byte function, for comparison
 * Every function has a cabi_post_<name> that only counts its calls:
 *   post_calls() -> i32   how many post-returns ran on this instance
 * The input buffer is freed in phase one, so nothing leaks either way.
 */
#include "keel.h"

KEEL_CABI_REALLOC()

static _Alignas(8) uint32_t g_pair[2];
static int32_t g_post_calls;

static uint32_t memory_end(void) {
  return (uint32_t)(__builtin_wasm_memory_size(0) * 65536u);
}

/* Returns `pair_addr` after storing (ptr, len) in g_pair. */
static int32_t lie(int32_t in_ptr, uint32_t ptr, uint32_t len) {
  free((void*)(uintptr_t)(uint32_t)in_ptr);
  g_pair[0] = ptr;
  g_pair[1] = len;
  return (int32_t)(uintptr_t)g_pair;
}

#define LYING_FN(name, expr)                                            \
  KEEL_EXPORT(name) int32_t name(int32_t ptr, int32_t len) {            \
    (void)len;                                                          \
    return (expr);                                                      \
  }                                                                     \
  KEEL_EXPORT(cabi_post_##name) void cabi_post_##name(int32_t pair) {   \
    (void)pair;                                                         \
    ++g_post_calls;                                                     \
  }

LYING_FN(pair_oob, (lie(ptr, 0, 0), (int32_t)0xfffffff8u))
LYING_FN(pair_straddle, (lie(ptr, 0, 0), (int32_t)(memory_end() - 4)))
LYING_FN(data_oob, lie(ptr, memory_end() - 4, 16))
LYING_FN(data_wrap, lie(ptr, 0xfffffff0u, 0x20))
LYING_FN(huge_len, lie(ptr, 1024, 0xffffffffu))

/* A correct function: copies the input into a static buffer. */
static uint8_t g_echo[4096];
KEEL_EXPORT(echo) int32_t echo(int32_t ptr, int32_t len) {
  uint32_t n = (uint32_t)len < sizeof g_echo ? (uint32_t)len : sizeof g_echo;
  memcpy(g_echo, (const void*)(uintptr_t)(uint32_t)ptr, n);
  return lie(ptr, (uint32_t)(uintptr_t)g_echo, n);
}
KEEL_EXPORT(cabi_post_echo) void cabi_post_echo(int32_t pair) {
  (void)pair;
  ++g_post_calls;
}

KEEL_EXPORT(post_calls) int32_t post_calls(void) { return g_post_calls; }
