/* fib.c: naive doubly recursive Fibonacci. Stresses calls, integer adds and
 * branches; no memory traffic, no WASI calls until the final printf.
 * Usage: fib [n]   (default 40) */
#include <stdio.h>
#include <stdlib.h>

static unsigned fib(unsigned n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }

int main(int argc, char** argv) {
  unsigned n = argc > 1 ? (unsigned)strtoul(argv[1], NULL, 10) : 40;
  unsigned r = fib(n);
  printf("fib(%u) = %u\n", n, r);
  if (n == 40 && r != 102334155u) {
    fprintf(stderr, "fib: wrong result\n");
    return 1;
  }
  return 0;
}
