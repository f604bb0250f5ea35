/*
 * wordfreq — counts words in UTF-8 text.
 *
 * Export `count` (byte function): input = UTF-8 text; output = one line
 * "word count\n" for each of the 100 most frequent words, sorted by count
 * (descending), then by word (bytewise ascending). Empty input, or input
 * with no words, gives an empty output.
 *
 * A word is a maximal run of word characters:
 *   - ASCII letters and digits (letters folded to lowercase);
 *   - an apostrophe (' or U+2019) between two word characters ("don't");
 *   - non-ASCII code points, kept as they are (no Unicode case folding),
 *     except separators: U+0080..U+00BF (Latin-1 controls, punctuation and
 *     symbols such as NBSP, «, »), U+2000..U+206F (general punctuation:
 *     dashes, curly quotes, spaces), U+3000..U+303F (CJK punctuation),
 *     the fullwidth punctuation of U+FF01..U+FF65 and U+FEFF.
 * Everything else, including invalid UTF-8 bytes, separates words.
 */
#include "keel.h"

KEEL_CABI_REALLOC()

#define TOP_N 100

typedef struct entry {
  const uint8_t* word; /* points into the normalized copy of the input */
  uint32_t len;
  uint32_t hash;
  uint32_t count;
} entry;

typedef struct table {
  entry* slots; /* open addressing, linear probing; word == NULL if empty */
  size_t cap;   /* power of two */
  size_t used;
} table;

static uint32_t fnv1a(const uint8_t* p, size_t n) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 16777619u;
  return h;
}

static void table_grow(table* t) {
  size_t cap = t->cap ? t->cap * 2 : 1024;
  entry* slots = (entry*)keel_xmalloc(cap * sizeof *slots);
  memset(slots, 0, cap * sizeof *slots);
  for (size_t i = 0; i < t->cap; ++i) {
    if (t->slots[i].word == NULL) continue;
    size_t j = t->slots[i].hash & (cap - 1);
    while (slots[j].word) j = (j + 1) & (cap - 1);
    slots[j] = t->slots[i];
  }
  free(t->slots);
  t->slots = slots;
  t->cap = cap;
}

static void table_add(table* t, const uint8_t* w, size_t n) {
  if ((t->used + 1) * 4 > t->cap * 3) table_grow(t); /* load <= 3/4 */
  uint32_t h = fnv1a(w, n);
  size_t j = h & (t->cap - 1);
  for (;; j = (j + 1) & (t->cap - 1)) {
    entry* e = &t->slots[j];
    if (e->word == NULL) {
      e->word = w;
      e->len = (uint32_t)n;
      e->hash = h;
      e->count = 1;
      ++t->used;
      return;
    }
    if (e->hash == h && e->len == n && memcmp(e->word, w, n) == 0) {
      ++e->count;
      return;
    }
  }
}

/* Decodes one UTF-8 sequence at p; returns its length (0 if invalid). */
static size_t utf8_decode(const uint8_t* p, const uint8_t* end, uint32_t* cp) {
  uint8_t c = p[0];
  size_t n;
  uint32_t v, min;
  if (c < 0x80) {
    *cp = c;
    return 1;
  }
  if ((c & 0xE0) == 0xC0) n = 2, v = c & 0x1F, min = 0x80;
  else if ((c & 0xF0) == 0xE0) n = 3, v = c & 0x0F, min = 0x800;
  else if ((c & 0xF8) == 0xF0) n = 4, v = c & 0x07, min = 0x10000;
  else return 0;
  if ((size_t)(end - p) < n) return 0;
  for (size_t i = 1; i < n; ++i) {
    if ((p[i] & 0xC0) != 0x80) return 0;
    v = (v << 6) | (p[i] & 0x3F);
  }
  if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
  *cp = v;
  return n;
}

static int is_word_cp(uint32_t cp) {
  if (cp < 0x80)
    return (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') ||
           (cp >= '0' && cp <= '9');
  if (cp <= 0xBF) return 0;
  if (cp >= 0x2000 && cp <= 0x206F) return 0;
  if (cp >= 0x3000 && cp <= 0x303F) return 0;
  if ((cp >= 0xFF01 && cp <= 0xFF0F) || (cp >= 0xFF1A && cp <= 0xFF20) ||
      (cp >= 0xFF3B && cp <= 0xFF40) || (cp >= 0xFF5B && cp <= 0xFF65))
    return 0; /* fullwidth punctuation */
  return cp != 0xFEFF;
}

static int entry_order(const void* x, const void* y) {
  const entry* a = (const entry*)x;
  const entry* b = (const entry*)y;
  if (a->count != b->count) return a->count > b->count ? -1 : 1;
  int c = memcmp(a->word, b->word, a->len < b->len ? a->len : b->len);
  if (c != 0) return c;
  return a->len < b->len ? -1 : a->len > b->len;
}

static int count(const uint8_t* in, size_t len, keel_output* out) {
  /* Words are stored lowercased in `norm` (ASCII apostrophe for U+2019);
   * the table points into it, so no per-word allocation. */
  uint8_t* norm = (uint8_t*)keel_xmalloc(len);
  size_t norm_len = 0;
  table t = {NULL, 0, 0};
  const uint8_t* p = in;
  const uint8_t* end = in + len;
  size_t word_start = 0;
  int in_word = 0;
  while (p < end) {
    uint32_t cp;
    size_t n = utf8_decode(p, end, &cp);
    int apostrophe = n && (cp == '\'' || cp == 0x2019);
    if (n && is_word_cp(cp)) {
      if (!in_word) word_start = norm_len;
      in_word = 1;
      if (cp >= 'A' && cp <= 'Z') cp += 'a' - 'A';
      if (cp < 0x80) norm[norm_len++] = (uint8_t)cp;
      else for (size_t i = 0; i < n; ++i) norm[norm_len++] = p[i];
      p += n;
      continue;
    }
    if (apostrophe && in_word && p + n < end) {
      /* Keep it only if a word character follows. */
      uint32_t next;
      size_t m = utf8_decode(p + n, end, &next);
      if (m && is_word_cp(next)) {
        norm[norm_len++] = '\'';
        p += n;
        continue;
      }
    }
    if (in_word) table_add(&t, norm + word_start, norm_len - word_start);
    in_word = 0;
    p += n ? n : 1;
  }
  if (in_word) table_add(&t, norm + word_start, norm_len - word_start);

  /* Compact the used slots and sort them. */
  size_t k = 0;
  for (size_t i = 0; i < t.cap; ++i)
    if (t.slots[i].word) t.slots[k++] = t.slots[i];
  qsort(t.slots, k, sizeof *t.slots, entry_order);

  keel_buf b = KEEL_BUF_INIT;
  for (size_t i = 0; i < k && i < TOP_N; ++i) {
    keel_buf_append(&b, t.slots[i].word, t.slots[i].len);
    keel_buf_appendf(&b, " %u\n", (unsigned)t.slots[i].count);
  }
  free(t.slots);
  free(norm);
  keel_output_buf(out, &b);
  return 0;
}
KEEL_BYTES_FN(count, count)
