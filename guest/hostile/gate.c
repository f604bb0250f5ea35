/*
 * hostile_gate — lets a test hold a call inside phase one or phase two.
 *
 * Imports: keel_test.gate(i32 id) -> i32, a host function the test
 * controls (it can block until released).
 * Byte function `gated_echo`: calls gate(1) in phase one, then outputs the
 * input unchanged; cabi_post_gated_echo calls gate(2) before freeing.
 * The gate's return values are ignored.
 */
#include "keel.h"

KEEL_CABI_REALLOC()

KEEL_IMPORT(keel_test, gate) int32_t keel_test_gate(int32_t id);

static int gated_echo(const uint8_t* in, size_t len, keel_output* out) {
  keel_test_gate(1);
  keel_output_set(out, in, len);
  return 0;
}

static void gate_post(void) { keel_test_gate(2); }

KEEL_BYTES_FN_WITH_POST(gated_echo, gated_echo, gate_post)
