/*
 * hello — a WASI command (has _start) that shows what the host gave it.
 *
 * Prints to stdout:
 *   hello from keel
 *   argc=N
 *   argv[i]=...            one line per argument
 *   env NAME=value         one line per environment variable
 *   stdin: N bytes         then the bytes read from stdin (until EOF), if any
 * and "hello: done" to stderr. Exit code: N if an argument is "exit=N"
 * (0..255), else 0. Stdin that is closed or not provided reads as empty.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern char** environ;

int main(int argc, char** argv) {
  int code = 0;
  printf("hello from keel\nargc=%d\n", argc);
  for (int i = 0; i < argc; ++i) {
    printf("argv[%d]=%s\n", i, argv[i]);
    if (strncmp(argv[i], "exit=", 5) == 0) code = atoi(argv[i] + 5) & 255;
  }
  for (char** e = environ; e && *e; ++e) printf("env %s\n", *e);

  /* Read all of stdin with read(2) so a host without stdin (EBADF) or
   * with an empty one is handled the same way. */
  char* data = NULL;
  size_t len = 0, cap = 0;
  for (;;) {
    if (len == cap) {
      cap = cap ? cap * 2 : 4096;
      char* p = realloc(data, cap);
      if (p == NULL) break;
      data = p;
    }
    ssize_t n = read(0, data + len, cap - len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    len += (size_t)n;
  }
  if (len > 0) {
    printf("stdin: %zu bytes\n", len);
    fwrite(data, 1, len, stdout);
    if (data[len - 1] != '\n') putchar('\n');
  }
  free(data);
  fflush(stdout);
  fprintf(stderr, "hello: done\n");
  return code;
}
