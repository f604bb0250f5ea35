/*
 * hostile_bad_realloc — `cabi_realloc` returns an out-of-bounds pointer
 * (0xfffffff0; ptr + len also wraps around 2^32 for len >= 16). The host
 * must bounds-check before copying the input and fail the call.
 *
 * Exports: cabi_realloc (lying), echo (byte fn that would echo its input),
 * cabi_post_echo (no-op), add(i32, i32) -> i32.
 */
#include "keel.h"

KEEL_EXPORT(cabi_realloc)
int32_t cabi_realloc(int32_t old, int32_t old_size, int32_t align,
                     int32_t new_size) {
  (void)old, (void)old_size, (void)align, (void)new_size;
  return (int32_t)0xfffffff0u;
}

static _Alignas(8) uint32_t g_pair[2];

KEEL_EXPORT(echo) int32_t echo(int32_t ptr, int32_t len) {
  g_pair[0] = (uint32_t)ptr;
  g_pair[1] = (uint32_t)len;
  return (int32_t)(uintptr_t)g_pair;
}
KEEL_EXPORT(cabi_post_echo) void cabi_post_echo(int32_t pair) { (void)pair; }

KEEL_EXPORT(add) int32_t add(int32_t a, int32_t b) {
  return (int32_t)((uint32_t)a + (uint32_t)b);
}
