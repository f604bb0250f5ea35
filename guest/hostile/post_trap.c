/*
 * hostile_post_trap — traps in phase two (post-return), and the SDK error
 * path in phase one.
 *
 * Byte functions:
 *   echo_then_trap  phase one echoes the input; cabi_post_echo_then_trap
 *                   executes `unreachable`. The call must fail (a trap in
 *                   phase two fails the call) and the instance be replaced.
 *   fail            phase one calls keel_fail: writes
 *                   "fail: deliberate failure" to stderr, then traps.
 *   echo            a correct echo, for comparison.
 */
#include "keel.h"

KEEL_CABI_REALLOC()

static int echo(const uint8_t* in, size_t len, keel_output* out) {
  keel_output_set(out, in, len);
  return 0;
}
KEEL_BYTES_FN(echo, echo)

static void trap(void) { __builtin_trap(); }
KEEL_BYTES_FN_WITH_POST(echo_then_trap, echo, trap)

static int fail(const uint8_t* in, size_t len, keel_output* out) {
  (void)in, (void)len, (void)out;
  keel_fail("fail: deliberate failure");
}
KEEL_BYTES_FN(fail, fail)
