/*
 * json_transform — canonicalizes a JSON document.
 *
 * Export `transform` (byte function): input = one JSON document (UTF-8);
 * output = the same document re-serialized in canonical form: object keys
 * sorted (bytewise UTF-8), no insignificant whitespace, minimal string
 * escaping, numbers exactly as written. See json.h for the precise rules.
 *
 * Invalid JSON (syntax, invalid UTF-8, lone surrogates, duplicate keys,
 * nesting deeper than 128) fails the call through the SDK error path: the
 * message "invalid JSON at byte N: reason" goes to stderr and the call traps.
 */
#include "json.h"
#include "keel.h"

KEEL_CABI_REALLOC()

static int transform(const uint8_t* in, size_t len, keel_output* out) {
  keel_json_error err;
  keel_json* doc = keel_json_parse(in, len, &err);
  if (doc == NULL)
    keel_failf("invalid JSON at byte %zu: %s", err.offset, err.message);
  keel_buf b = KEEL_BUF_INIT;
  keel_buf_reserve(&b, len); /* canonical form is rarely longer */
  keel_json_write(&b, doc);
  keel_json_free(doc);
  keel_output_buf(out, &b);
  return 0;
}
KEEL_BYTES_FN(transform, transform)
