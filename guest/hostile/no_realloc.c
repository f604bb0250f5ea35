/*
 * hostile_no_realloc — a module with a byte-shaped export but no
 * `cabi_realloc`. The host must refuse byte calls on it cleanly (it has
 * no way to pass input). Numeric calls work.
 *
 * Exports: echo(ptr, len) -> pair_ptr (echoes the given range), add(i32,
 * i32) -> i32. No cabi_realloc, no cabi_post_echo.
 */
#include "keel.h"

static _Alignas(8) uint32_t g_pair[2];

KEEL_EXPORT(echo) int32_t echo(int32_t ptr, int32_t len) {
  g_pair[0] = (uint32_t)ptr;
  g_pair[1] = (uint32_t)len;
  return (int32_t)(uintptr_t)g_pair;
}

KEEL_EXPORT(add) int32_t add(int32_t a, int32_t b) {
  return (int32_t)((uint32_t)a + (uint32_t)b);
}
