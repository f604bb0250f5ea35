/* empty.c: does nothing. Measures the fixed cost of starting a runtime,
 * compiling a tiny WASI module and running _start, so the other rows can be
 * read as startup + throughput. */
int main(void) { return 0; }
