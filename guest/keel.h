/*
 * keel.h — guest SDK for C programs compiled to wasm32-wasi and run by keel.
 *
 * Single header, C11. Build a guest as a reactor:
 *
 *   clang --target=wasm32-wasi -O2 -mexec-model=reactor -Iguest my.c -o my.wasm
 *
 * A minimal guest:
 *
 *   #include <ctype.h>
 *   #include "keel.h"
 *
 *   KEEL_CABI_REALLOC()            // exactly once per module
 *
 *   static int upper(const uint8_t* in, size_t len, keel_output* out) {
 *     keel_buf b = KEEL_BUF_INIT;
 *     for (size_t i = 0; i < len; ++i) keel_buf_putc(&b, toupper(in[i]));
 *     keel_output_buf(out, &b);
 *     return 0;
 *   }
 *   KEEL_BYTES_FN(upper, upper)    // exports `upper` and `cabi_post_upper`
 *
 *   KEEL_EXPORT(add) int32_t add(int32_t a, int32_t b) { return a + b; }
 *
 * Byte calling convention (see DESIGN.md, "Byte calling convention"):
 *   1. the host calls `cabi_realloc(0, 0, align, len)` and copies the input
 *      into the returned buffer;
 *   2. the host calls `name(ptr, len)`; it returns a pointer to an 8-byte
 *      little-endian pair `(data_ptr: u32, data_len: u32)`;
 *   3. the host copies `data_len` bytes from `data_ptr`;
 *   4. the host calls `cabi_post_name(pair_ptr)`; the SDK frees the input
 *      buffer and the output. Only then may the instance run another call.
 *
 * Errors: a byte function reports failure with keel_fail()/keel_failf(),
 * which write the message (plus a newline) to stderr (fd 2) and trap with
 * `unreachable`. The host resolves the call as a Trap, attaches the captured
 * stderr, and replaces the instance (a trapped instance is never reused).
 * Returning a non-zero value from a byte function does the same with a
 * generic message. There is no in-band error channel on purpose: an output
 * is always a success.
 *
 * Ownership: the input buffer belongs to the guest from cabi_realloc on and
 * stays valid until post-return, so an output may borrow from it (zero-copy
 * echo). Outputs are either borrowed (keel_output_set: static data or the
 * input) or owned (keel_output_copy/take/buf: freed in post-return).
 *
 * Calls never overlap on one instance, so the per-call state is a single
 * static record. If a host skips post-return, the next call frees the
 * previous call's buffers first, so memory does not leak across calls.
 */
#ifndef KEEL_GUEST_KEEL_H_
#define KEEL_GUEST_KEEL_H_

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* keel.h is also valid C++ (keel.hpp builds on it). */
#ifdef __cplusplus
#define KEEL__ALIGNAS(n) alignas(n)
#define KEEL__ALIGNOF(t) alignof(t)
#else
#define KEEL__ALIGNAS(n) _Alignas(n)
#define KEEL__ALIGNOF(t) _Alignof(t)
#endif

/* ------------------------------------------------------------------ */
/* Attributes                                                           */
/* ------------------------------------------------------------------ */

/* Exports the following function under `name` (an identifier). */
#define KEEL_EXPORT(name) __attribute__((export_name(#name)))

/* Declares the following function as an import `module.name`. */
#define KEEL_IMPORT(module, name) \
  __attribute__((import_module(#module), import_name(#name)))

/* ------------------------------------------------------------------ */
/* Errors                                                               */
/* ------------------------------------------------------------------ */

static inline void keel__write_all(int fd, const char* s, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, s, n);
    if (w <= 0) return; /* stderr not writable: nothing better to do */
    s += w;
    n -= (size_t)w;
  }
}

/* Writes `msg` and a newline to stderr, then traps. Never returns. */
static inline _Noreturn void keel_fail(const char* msg) {
  keel__write_all(2, msg, strlen(msg));
  keel__write_all(2, "\n", 1);
  __builtin_trap();
}

/* printf-style keel_fail. Formats into a fixed buffer so that it still
 * works when the heap is exhausted (long messages are truncated). */
static inline _Noreturn __attribute__((format(printf, 1, 2))) void keel_failf(
    const char* fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  keel_fail(msg);
}

/* malloc/realloc that trap (via keel_fail) instead of returning NULL. */
static inline void* keel_xrealloc(void* p, size_t n) {
  void* q = realloc(p, n ? n : 1);
  if (q == NULL) keel_failf("out of memory (requested %zu bytes)", n);
  return q;
}
static inline void* keel_xmalloc(size_t n) { return keel_xrealloc(NULL, n); }

/* ------------------------------------------------------------------ */
/* Growable byte buffer                                                 */
/* ------------------------------------------------------------------ */

/* A growable buffer. `data` is NUL-terminated whenever it is non-NULL
 * (the terminator is not counted in `len`), so text can be used with the
 * C string functions. Zero-initialise with KEEL_BUF_INIT. */
typedef struct keel_buf {
  char* data;
  size_t len;
  size_t cap;
} keel_buf;

#define KEEL_BUF_INIT {NULL, 0, 0}

/* Ensures room for `extra` more bytes (plus the terminator). */
static inline void keel_buf_reserve(keel_buf* b, size_t extra) {
  if (extra > SIZE_MAX - b->len - 1) keel_fail("keel_buf: size overflow");
  size_t need = b->len + extra + 1;
  if (need <= b->cap) return;
  size_t cap = b->cap ? b->cap : 64;
  while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
  b->data = (char*)keel_xrealloc(b->data, cap);
  b->cap = cap;
}

static inline void keel_buf_append(keel_buf* b, const void* data, size_t n) {
  keel_buf_reserve(b, n);
  if (n) memcpy(b->data + b->len, data, n);
  b->len += n;
  b->data[b->len] = '\0';
}

static inline void keel_buf_append_str(keel_buf* b, const char* s) {
  keel_buf_append(b, s, strlen(s));
}

static inline void keel_buf_putc(keel_buf* b, int c) {
  keel_buf_reserve(b, 1);
  b->data[b->len++] = (char)c;
  b->data[b->len] = '\0';
}

static inline __attribute__((format(printf, 2, 3))) void keel_buf_appendf(
    keel_buf* b, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char small[128];
  int n = vsnprintf(small, sizeof small, fmt, ap);
  va_end(ap);
  if (n < 0) keel_fail("keel_buf_appendf: bad format");
  if ((size_t)n < sizeof small) {
    keel_buf_append(b, small, (size_t)n);
    return;
  }
  keel_buf_reserve(b, (size_t)n);
  va_start(ap, fmt);
  vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
}

static inline void keel_buf_free(keel_buf* b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

/* ------------------------------------------------------------------ */
/* Outputs of byte functions                                            */
/* ------------------------------------------------------------------ */

/* What a byte function returns. Set it with one of the keel_output_*
 * functions; setting it again releases the previous owned data. An output
 * left untouched is empty. */
typedef struct keel_output {
  const uint8_t* data;
  size_t len;
  void* owned; /* freed in post-return; NULL for borrowed data */
} keel_output;

static inline void keel_output_clear(keel_output* out) {
  free(out->owned);
  out->data = NULL;
  out->len = 0;
  out->owned = NULL;
}

/* Borrowed output: `data` must stay valid until post-return (static data,
 * or a range of the input buffer). */
static inline void keel_output_set(keel_output* out, const void* data,
                                   size_t len) {
  keel_output_clear(out);
  out->data = (const uint8_t*)data;
  out->len = len;
}

/* Output from a NUL-terminated string with static storage. */
static inline void keel_output_set_str(keel_output* out, const char* s) {
  keel_output_set(out, s, strlen(s));
}

/* Takes ownership of `data`, which must come from malloc/realloc (and
 * must not be the input buffer: the SDK frees that one itself). */
static inline void keel_output_take(keel_output* out, void* data, size_t len) {
  keel_output_clear(out);
  out->data = (const uint8_t*)data;
  out->len = len;
  out->owned = data;
}

/* Copies `len` bytes into a fresh owned allocation. */
static inline void keel_output_copy(keel_output* out, const void* data,
                                    size_t len) {
  void* p = keel_xmalloc(len);
  if (len) memcpy(p, data, len);
  keel_output_take(out, p, len);
}

/* Moves a keel_buf into the output; `b` is left empty and reusable. */
static inline void keel_output_buf(keel_output* out, keel_buf* b) {
  keel_output_take(out, b->data, b->len);
  b->data = NULL;
  b->len = b->cap = 0;
}

/* ------------------------------------------------------------------ */
/* Byte functions                                                       */
/* ------------------------------------------------------------------ */

/* A byte function implementation. Returns 0 on success; any other value
 * fails the call (message on stderr, then a trap). */
typedef int (*keel_bytes_impl)(const uint8_t* in, size_t in_len,
                               keel_output* out);

/* Per-module call state, defined by KEEL_CABI_REALLOC(). A link error
 * "undefined symbol: keel_guest_state" means that macro is missing. */
typedef struct keel_call_state {
  KEEL__ALIGNAS(8) uint32_t ret[2]; /* the (ptr, len) pair handed to the host */
  void* input;                 /* input buffer, freed in post-return */
  void* owned;                 /* owned output, freed in post-return */
  int active;                  /* a call returned and awaits post-return */
} keel_call_state;

extern keel_call_state keel_guest_state;

static inline void keel__release(keel_call_state* s) {
  free(s->input);
  free(s->owned);
  s->input = NULL;
  s->owned = NULL;
  s->ret[0] = s->ret[1] = 0;
  s->active = 0;
}

/* Phase one: adopts the input, runs `impl`, publishes the pair. */
static inline int32_t keel__call(const char* name, keel_bytes_impl impl,
                                 int32_t ptr, int32_t len) {
  keel_call_state* s = &keel_guest_state;
  if (s->active) keel__release(s); /* the host skipped post-return */
  s->input = (void*)(uintptr_t)(uint32_t)ptr;
  s->active = 1;
  keel_output out = {NULL, 0, NULL};
  int rc = impl((const uint8_t*)s->input, (size_t)(uint32_t)len, &out);
  if (rc != 0) keel_failf("%s: failed with code %d", name, rc);
  s->owned = out.owned;
  s->ret[0] = (uint32_t)(uintptr_t)out.data;
  s->ret[1] = (uint32_t)out.len;
  return (int32_t)(uintptr_t)s->ret;
}

/* Phase two: runs the optional hook, then frees input and output. */
static inline void keel__post(const char* name, int32_t pair,
                              void (*hook)(void)) {
  keel_call_state* s = &keel_guest_state;
  if ((uintptr_t)(uint32_t)pair != (uintptr_t)s->ret)
    keel_failf("cabi_post_%s: %#x is not the pointer the call returned", name,
               (unsigned)pair);
  if (hook) hook();
  keel__release(s);
}

/* Defines the exports `name(ptr, len) -> pair_ptr` and
 * `cabi_post_name(pair_ptr)` around `impl` (a keel_bytes_impl). */
#define KEEL_BYTES_FN(name, impl) KEEL__BYTES_FN(name, impl, NULL)

/* Same, and post-return first calls `void post_hook(void)` (for guests
 * that need to act in phase two, e.g. tests that block or trap there). */
#define KEEL_BYTES_FN_WITH_POST(name, impl, post_hook) \
  KEEL__BYTES_FN(name, impl, post_hook)

#define KEEL__BYTES_FN(name, impl, hook)                                  \
  KEEL_EXPORT(name) int32_t keel_export_##name(int32_t ptr, int32_t len) { \
    return keel__call(#name, impl, ptr, len);                             \
  }                                                                       \
  KEEL_EXPORT(cabi_post_##name) void keel_post_##name(int32_t pair) {     \
    keel__post(#name, pair, hook);                                        \
  }

/* ------------------------------------------------------------------ */
/* cabi_realloc                                                         */
/* ------------------------------------------------------------------ */

/* Canonical-ABI realloc: (old_ptr, old_size, align, new_size) -> ptr.
 * Never returns NULL or an unaligned pointer: on failure it traps, since a
 * host writing through a NULL result would corrupt low memory. A zero-size
 * request gets a real (1-byte) allocation so that it can be freed. */
static inline void* keel__cabi_realloc(void* old, size_t old_size,
                                       size_t align, size_t new_size) {
  if (align == 0 || (align & (align - 1)) != 0)
    keel_failf("cabi_realloc: bad alignment %zu", align);
  if (new_size == 0) new_size = 1;
  void* p;
  if (align <= KEEL__ALIGNOF(max_align_t)) {
    p = realloc(old, new_size);
  } else {
    size_t rounded = (new_size + align - 1) & ~(align - 1);
    p = rounded < new_size ? NULL : aligned_alloc(align, rounded);
    if (p && old) {
      memcpy(p, old, old_size < new_size ? old_size : new_size);
      free(old);
    }
  }
  if (p == NULL) keel_failf("cabi_realloc: out of memory (%zu bytes)", new_size);
  return p;
}

/* Emits the `cabi_realloc` export and the call state. Use exactly once per
 * module, at file scope. */
#define KEEL_CABI_REALLOC()                                                   \
  keel_call_state keel_guest_state;                                           \
  KEEL_EXPORT(cabi_realloc)                                                   \
  int32_t keel_export_cabi_realloc(int32_t old, int32_t old_size,             \
                                   int32_t align, int32_t new_size) {         \
    return (int32_t)(uintptr_t)keel__cabi_realloc(                            \
        (void*)(uintptr_t)(uint32_t)old, (size_t)(uint32_t)old_size,          \
        (size_t)(uint32_t)align, (size_t)(uint32_t)new_size);                 \
  }

#endif /* KEEL_GUEST_KEEL_H_ */
