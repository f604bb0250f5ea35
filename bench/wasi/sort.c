/* sort.c: qsort (wasi-libc's, which is musl's smoothsort) of pseudo-random
 * ints, then a verification pass and an order-sensitive checksum. Stresses
 * indirect calls (the comparator), memory traffic and a large malloc
 * (memory.grow).
 * Usage: sort [count]   (default 1000000) */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static int cmp(const void* a, const void* b) {
  int32_t x = *(const int32_t*)a, y = *(const int32_t*)b;
  return (x > y) - (x < y);
}

int main(int argc, char** argv) {
  size_t n = argc > 1 ? strtoul(argv[1], NULL, 10) : 1000000;
  int32_t* v = malloc(n * sizeof *v);
  if (!v) { fprintf(stderr, "sort: out of memory\n"); return 1; }
  uint32_t s = 12345;
  for (size_t i = 0; i < n; i++) {
    s = s * 1664525u + 1013904223u;             /* LCG, high bits used */
    v[i] = (int32_t)(s ^ (s >> 16));
  }
  qsort(v, n, sizeof *v, cmp);
  uint64_t sum = 0;
  for (size_t i = 0; i < n; i++) {
    if (i && v[i - 1] > v[i]) { fprintf(stderr, "sort: not sorted at %zu\n", i); return 1; }
    sum = sum * 31 + (uint32_t)v[i];
  }
  printf("sorted %zu ints: min %d median %d max %d checksum %016llx\n", n, v[0],
         v[n / 2], v[n - 1], (unsigned long long)sum);
  free(v);
  return 0;
}
