/* wordcount.c: reads a text file (through a preopened directory), splits it
 * into words (runs of ASCII letters, lowercased), counts them in an
 * open-addressing hash table and prints the ten most frequent. Stresses
 * fd_read in 64 KiB blocks, byte scanning, hashing and malloc.
 * Usage: wordcount FILE */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct { char* word; uint32_t len, hash; uint64_t count; } entry;

static entry* table;
static size_t cap = 1 << 16, used;

static uint32_t fnv1a(const char* s, size_t n) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 16777619u;
  return h;
}

static void grow(void) {
  size_t ncap = cap * 2;
  entry* nt = calloc(ncap, sizeof *nt);
  if (!nt) { fprintf(stderr, "wordcount: out of memory\n"); exit(1); }
  for (size_t i = 0; i < cap; i++) {
    if (!table[i].word) continue;
    size_t j = table[i].hash & (ncap - 1);
    while (nt[j].word) j = (j + 1) & (ncap - 1);
    nt[j] = table[i];
  }
  free(table);
  table = nt;
  cap = ncap;
}

static void add(const char* w, size_t n) {
  uint32_t h = fnv1a(w, n);
  size_t j = h & (cap - 1);
  for (; table[j].word; j = (j + 1) & (cap - 1)) {
    if (table[j].hash == h && table[j].len == n && !memcmp(table[j].word, w, n)) {
      table[j].count++;
      return;
    }
  }
  table[j].word = malloc(n + 1);
  memcpy(table[j].word, w, n);
  table[j].word[n] = 0;
  table[j].len = (uint32_t)n;
  table[j].hash = h;
  table[j].count = 1;
  if (++used * 4 > cap * 3) grow();
}

static int by_count(const void* a, const void* b) {
  const entry *x = a, *y = b;
  if (x->count != y->count) return x->count < y->count ? 1 : -1;
  return strcmp(x->word, y->word);
}

int main(int argc, char** argv) {
  if (argc < 2) { fprintf(stderr, "usage: wordcount FILE\n"); return 2; }
  FILE* f = fopen(argv[1], "rb");
  if (!f) { perror(argv[1]); return 1; }
  table = calloc(cap, sizeof *table);
  static char buf[64 * 1024];
  char word[256];
  size_t wl = 0, nbytes = 0;
  uint64_t total = 0;
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
    nbytes += n;
    for (size_t i = 0; i < n; i++) {
      unsigned char c = (unsigned char)buf[i];
      if ((c | 32) >= 'a' && (c | 32) <= 'z') {
        if (wl < sizeof word) word[wl++] = (char)(c | 32);
      } else if (wl) {
        add(word, wl);
        total++;
        wl = 0;
      }
    }
  }
  if (wl) { add(word, wl); total++; }
  if (ferror(f)) { perror(argv[1]); return 1; }
  fclose(f);

  /* Compact the table and sort it: by count descending, then by word. */
  size_t k = 0;
  for (size_t i = 0; i < cap; i++)
    if (table[i].word) table[k++] = table[i];
  qsort(table, k, sizeof *table, by_count);
  printf("%zu bytes, %llu words, %zu distinct\n", nbytes, (unsigned long long)total, k);
  for (size_t i = 0; i < k && i < 10; i++)
    printf("%10llu %s\n", (unsigned long long)table[i].count, table[i].word);
  return 0;
}
