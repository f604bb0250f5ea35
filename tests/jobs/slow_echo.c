/*
 * slow_echo — a job guest for the runner and crash tests.
 *   echo:  input "MS:payload" -> sleeps MS milliseconds (WASI clock poll),
 *          then outputs "payload".
 *   fail:  always traps (retried until the job is dead).
 *   shout: writes its input to stderr as it is (any bytes), then traps.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "keel.h"

KEEL_CABI_REALLOC()

static int slow_echo(const uint8_t* in, size_t len, keel_output* out) {
  const uint8_t* colon = memchr(in, ':', len);
  if (colon == NULL) keel_fail("input must be MS:payload");
  long ms = strtol((const char*)in, NULL, 10);
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
  size_t skip = (size_t)(colon - in) + 1;
  keel_output_set(out, in + skip, len - skip);
  return 0;
}
KEEL_BYTES_FN(echo, slow_echo)

static int always_fail(const uint8_t* in, size_t len, keel_output* out) {
  (void)in;
  (void)len;
  (void)out;
  keel_fail("this job always fails");
  return 1;
}
KEEL_BYTES_FN(fail, always_fail)

static int shout(const uint8_t* in, size_t len, keel_output* out) {
  (void)out;
  fwrite(in, 1, len, stderr);
  fflush(stderr);
  __builtin_trap();
  return 1;
}
KEEL_BYTES_FN(shout, shout)
