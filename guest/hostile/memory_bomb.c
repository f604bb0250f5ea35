/*
 * hostile_memory_bomb — guests that want too much memory.
 *
 * Exports:
 *   bomb() -> i32             mallocs 1 MiB blocks (touching every page)
 *                             until malloc returns NULL, frees them all and
 *                             returns how many MiB it got. The memory stays
 *                             grown; the instance stays usable.
 *   grow(i32 pages) -> i32    raw memory.grow: previous size in pages, or -1
 *   leak(i32 mib) -> i32      mallocs `mib` MiB and never frees them;
 *                             returns the memory size in MiB afterwards
 *                             (instances that grow call after call)
 *   huge_output (byte fn)     tries to return a 3 GiB output: allocates it
 *                             and fills it, or, when the allocation fails
 *                             (the usual case), fails the call with
 *                             "huge_output: cannot allocate 3 GiB" and traps
 */
#include "keel.h"

KEEL_CABI_REALLOC()

#define MIB (1024u * 1024u)

KEEL_EXPORT(bomb) int32_t bomb(void) {
  void* head = NULL; /* blocks form a list through their first word */
  int32_t got = 0;
  for (;;) {
    char* block = malloc(MIB);
    if (block == NULL) break;
    for (size_t i = 0; i < MIB; i += 4096) block[i] = 1;
    *(void**)block = head;
    head = block;
    ++got;
  }
  while (head) {
    void* next = *(void**)head;
    free(head);
    head = next;
  }
  return got;
}

KEEL_EXPORT(grow) int32_t grow(int32_t pages) {
  return (int32_t)__builtin_wasm_memory_grow(0, (size_t)(uint32_t)pages);
}

/* Leaked blocks stay reachable from here, so the compiler cannot drop
 * the allocations as dead. */
static void* volatile g_leaked;

KEEL_EXPORT(leak) int32_t leak(int32_t mib) {
  for (int32_t i = 0; i < mib; ++i) {
    char* block = malloc(MIB);
    if (block == NULL) break;
    for (size_t j = 0; j < MIB; j += 4096) block[j] = 1;
    *(void**)block = g_leaked;
    g_leaked = block;
  }
  return (int32_t)(__builtin_wasm_memory_size(0) / 16); /* 16 pages/MiB */
}

static int huge_output(const uint8_t* in, size_t len, keel_output* out) {
  (void)in, (void)len;
  size_t n = (size_t)3 * 1024 * MIB;
  void* p = malloc(n);
  if (p == NULL) keel_fail("huge_output: cannot allocate 3 GiB");
  memset(p, 'x', n);
  keel_output_take(out, p, n);
  return 0;
}
KEEL_BYTES_FN(huge_output, huge_output)
