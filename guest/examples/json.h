/*
 * json.h — a small, strict JSON (RFC 8259) parser and canonical writer for
 * keel's example guests. Header-only; include it from one .c file.
 *
 * Parsing:
 *   - any value at top level, surrounded by optional whitespace
 *     (space, tab, LF, CR); anything else after it is an error;
 *   - strings: all escapes, including \uXXXX and surrogate pairs; lone
 *     surrogates, raw control characters and invalid UTF-8 are errors;
 *   - numbers are validated against the JSON grammar and kept as their
 *     source text (no float conversion, so nothing is rounded);
 *   - objects: members are sorted by key (bytewise UTF-8, i.e. code point
 *     order) after parsing; a duplicate key is an error;
 *   - nesting deeper than KEEL_JSON_MAX_DEPTH is an error.
 *
 * Canonical form (keel_json_write): no whitespace, keys sorted, strings
 * escaped minimally — `"` and `\` as \" and \\, U+0008/0009/000A/000C/000D
 * as \b \t \n \f \r, other controls below U+0020 as \u00xx (lowercase
 * hex), everything else (including '/' and non-ASCII) as raw UTF-8.
 */
#ifndef KEEL_GUEST_EXAMPLES_JSON_H_
#define KEEL_GUEST_EXAMPLES_JSON_H_

#include "keel.h"

#ifndef KEEL_JSON_MAX_DEPTH
#define KEEL_JSON_MAX_DEPTH 128
#endif

typedef enum keel_json_type {
  KEEL_JSON_NULL,
  KEEL_JSON_FALSE,
  KEEL_JSON_TRUE,
  KEEL_JSON_NUMBER,
  KEEL_JSON_STRING,
  KEEL_JSON_ARRAY,
  KEEL_JSON_OBJECT,
} keel_json_type;

typedef struct keel_json keel_json;

typedef struct keel_json_member {
  char* key; /* decoded UTF-8, NUL-terminated (may also contain NULs) */
  size_t key_len;
  keel_json* value;
} keel_json_member;

struct keel_json {
  keel_json_type type;
  char* text; /* STRING: decoded UTF-8; NUMBER: source text; NUL-terminated */
  size_t len;
  size_t count;              /* ARRAY: items; OBJECT: members */
  keel_json** items;         /* ARRAY */
  keel_json_member* members; /* OBJECT, sorted by key */
};

typedef struct keel_json_error {
  size_t offset; /* byte offset into the input */
  const char* message;
} keel_json_error;

/* ------------------------------------------------------------------ */

static inline void keel_json_free(keel_json* v) {
  if (v == NULL) return;
  free(v->text);
  for (size_t i = 0; v->items && i < v->count; ++i) keel_json_free(v->items[i]);
  for (size_t i = 0; v->members && i < v->count; ++i) {
    free(v->members[i].key);
    keel_json_free(v->members[i].value);
  }
  free(v->items);
  free(v->members);
  free(v);
}

typedef struct keel__json_parser {
  const uint8_t* p;
  const uint8_t* begin;
  const uint8_t* end;
  keel_json_error* err;
} keel__json_parser;

/* Records the first error; returns NULL for convenience. */
static inline void* keel__json_fail(keel__json_parser* ps, const uint8_t* at,
                                    const char* msg) {
  if (ps->err->message == NULL) {
    ps->err->message = msg;
    ps->err->offset = (size_t)(at - ps->begin);
  }
  return NULL;
}

static inline void keel__json_ws(keel__json_parser* ps) {
  while (ps->p < ps->end &&
         (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
    ++ps->p;
}

static inline keel_json* keel__json_new(keel_json_type type) {
  keel_json* v = (keel_json*)keel_xmalloc(sizeof *v);
  memset(v, 0, sizeof *v);
  v->type = type;
  return v;
}

static inline int keel__json_hex4(const uint8_t* p, uint32_t* out) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) {
    uint8_t c = p[i];
    v <<= 4;
    if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
    else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
    else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
    else return 0;
  }
  *out = v;
  return 1;
}

static inline void keel__json_put_utf8(keel_buf* b, uint32_t cp) {
  if (cp < 0x80) {
    keel_buf_putc(b, (int)cp);
  } else if (cp < 0x800) {
    keel_buf_putc(b, (int)(0xC0 | (cp >> 6)));
    keel_buf_putc(b, (int)(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    keel_buf_putc(b, (int)(0xE0 | (cp >> 12)));
    keel_buf_putc(b, (int)(0x80 | ((cp >> 6) & 0x3F)));
    keel_buf_putc(b, (int)(0x80 | (cp & 0x3F)));
  } else {
    keel_buf_putc(b, (int)(0xF0 | (cp >> 18)));
    keel_buf_putc(b, (int)(0x80 | ((cp >> 12) & 0x3F)));
    keel_buf_putc(b, (int)(0x80 | ((cp >> 6) & 0x3F)));
    keel_buf_putc(b, (int)(0x80 | (cp & 0x3F)));
  }
}

/* Length of the valid UTF-8 sequence at p (1..4), or 0 if invalid
 * (overlong forms, surrogates and code points above U+10FFFF are invalid). */
static inline size_t keel_utf8_seq_len(const uint8_t* p, const uint8_t* end) {
  uint8_t c = p[0];
  size_t n;
  uint32_t cp, min;
  if (c < 0x80) return 1;
  if ((c & 0xE0) == 0xC0) n = 2, cp = c & 0x1F, min = 0x80;
  else if ((c & 0xF0) == 0xE0) n = 3, cp = c & 0x0F, min = 0x800;
  else if ((c & 0xF8) == 0xF0) n = 4, cp = c & 0x07, min = 0x10000;
  else return 0;
  if ((size_t)(end - p) < n) return 0;
  for (size_t i = 1; i < n; ++i) {
    if ((p[i] & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (p[i] & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return n;
}

/* Parses a string; ps->p is at the opening quote. On success the decoded
 * bytes are in `b` (which the caller owns either way). */
static inline int keel__json_string(keel__json_parser* ps, keel_buf* b) {
  const uint8_t* start = ps->p++;
  for (;;) {
    if (ps->p >= ps->end)
      return keel__json_fail(ps, start, "unterminated string"), 0;
    uint8_t c = *ps->p;
    if (c == '"') {
      ++ps->p;
      if (b->data == NULL) keel_buf_reserve(b, 0); /* "" gets a buffer too */
      return 1;
    }
    if (c < 0x20)
      return keel__json_fail(ps, ps->p, "control character in string"), 0;
    if (c != '\\') {
      /* Copy a run of plain bytes at once, validating UTF-8. */
      const uint8_t* run = ps->p;
      while (ps->p < ps->end && *ps->p != '"' && *ps->p != '\\' &&
             *ps->p >= 0x20) {
        size_t n = keel_utf8_seq_len(ps->p, ps->end);
        if (n == 0) return keel__json_fail(ps, ps->p, "invalid UTF-8"), 0;
        ps->p += n;
      }
      keel_buf_append(b, run, (size_t)(ps->p - run));
      continue;
    }
    const uint8_t* esc = ps->p++;
    if (ps->p >= ps->end)
      return keel__json_fail(ps, esc, "unterminated string"), 0;
    switch (*ps->p++) {
      case '"': keel_buf_putc(b, '"'); break;
      case '\\': keel_buf_putc(b, '\\'); break;
      case '/': keel_buf_putc(b, '/'); break;
      case 'b': keel_buf_putc(b, '\b'); break;
      case 'f': keel_buf_putc(b, '\f'); break;
      case 'n': keel_buf_putc(b, '\n'); break;
      case 'r': keel_buf_putc(b, '\r'); break;
      case 't': keel_buf_putc(b, '\t'); break;
      case 'u': {
        uint32_t cp;
        if (ps->end - ps->p < 4 || !keel__json_hex4(ps->p, &cp))
          return keel__json_fail(ps, esc, "bad \\u escape"), 0;
        ps->p += 4;
        if (cp >= 0xDC00 && cp <= 0xDFFF)
          return keel__json_fail(ps, esc, "lone low surrogate"), 0;
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          uint32_t lo;
          if (ps->end - ps->p < 6 || ps->p[0] != '\\' || ps->p[1] != 'u' ||
              !keel__json_hex4(ps->p + 2, &lo) || lo < 0xDC00 || lo > 0xDFFF)
            return keel__json_fail(ps, esc, "lone high surrogate"), 0;
          ps->p += 6;
          cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        }
        keel__json_put_utf8(b, cp);
        break;
      }
      default:
        return keel__json_fail(ps, esc, "bad escape"), 0;
    }
  }
}

static inline int keel__json_digits(keel__json_parser* ps) {
  const uint8_t* s = ps->p;
  while (ps->p < ps->end && *ps->p >= '0' && *ps->p <= '9') ++ps->p;
  return ps->p > s;
}

/* number = [ "-" ] ( "0" / 1-9 *DIGIT ) [ "." 1*DIGIT ] [ e [+-] 1*DIGIT ] */
static inline keel_json* keel__json_number(keel__json_parser* ps) {
  const uint8_t* s = ps->p;
  if (ps->p < ps->end && *ps->p == '-') ++ps->p;
  if (ps->p < ps->end && *ps->p == '0') {
    ++ps->p;
  } else if (!(ps->p < ps->end && *ps->p >= '1' && *ps->p <= '9') ||
             !keel__json_digits(ps)) {
    return keel__json_fail(ps, s, "bad number");
  }
  if (ps->p < ps->end && *ps->p == '.') {
    ++ps->p;
    if (!keel__json_digits(ps)) return keel__json_fail(ps, s, "bad number");
  }
  if (ps->p < ps->end && (*ps->p == 'e' || *ps->p == 'E')) {
    ++ps->p;
    if (ps->p < ps->end && (*ps->p == '+' || *ps->p == '-')) ++ps->p;
    if (!keel__json_digits(ps)) return keel__json_fail(ps, s, "bad number");
  }
  keel_json* v = keel__json_new(KEEL_JSON_NUMBER);
  v->len = (size_t)(ps->p - s);
  v->text = (char*)keel_xmalloc(v->len + 1);
  memcpy(v->text, s, v->len);
  v->text[v->len] = '\0';
  return v;
}

static inline int keel__json_key_cmp(const char* a, size_t an, const char* b,
                                     size_t bn) {
  int c = memcmp(a, b, an < bn ? an : bn);
  if (c != 0) return c;
  return an < bn ? -1 : an > bn;
}

static inline int keel__json_member_cmp(const void* x, const void* y) {
  const keel_json_member* a = (const keel_json_member*)x;
  const keel_json_member* b = (const keel_json_member*)y;
  return keel__json_key_cmp(a->key, a->key_len, b->key, b->key_len);
}

static inline keel_json* keel__json_value(keel__json_parser* ps, int depth);

static inline keel_json* keel__json_array(keel__json_parser* ps, int depth) {
  keel_json* v = keel__json_new(KEEL_JSON_ARRAY);
  size_t cap = 0;
  ++ps->p; /* '[' */
  keel__json_ws(ps);
  if (ps->p < ps->end && *ps->p == ']') {
    ++ps->p;
    return v;
  }
  for (;;) {
    keel_json* item = keel__json_value(ps, depth + 1);
    if (item == NULL) break;
    if (v->count == cap) {
      cap = cap ? cap * 2 : 4;
      v->items = (keel_json**)keel_xrealloc(v->items, cap * sizeof *v->items);
    }
    v->items[v->count++] = item;
    keel__json_ws(ps);
    if (ps->p < ps->end && *ps->p == ',') {
      ++ps->p;
      continue;
    }
    if (ps->p < ps->end && *ps->p == ']') {
      ++ps->p;
      return v;
    }
    keel__json_fail(ps, ps->p, "expected ',' or ']'");
    break;
  }
  keel_json_free(v);
  return NULL;
}

static inline keel_json* keel__json_object(keel__json_parser* ps, int depth) {
  keel_json* v = keel__json_new(KEEL_JSON_OBJECT);
  size_t cap = 0;
  const uint8_t* start = ps->p++; /* '{' */
  keel__json_ws(ps);
  if (ps->p < ps->end && *ps->p == '}') {
    ++ps->p;
    return v;
  }
  for (;;) {
    if (ps->p >= ps->end || *ps->p != '"') {
      keel__json_fail(ps, ps->p, "expected string key");
      break;
    }
    keel_buf key = KEEL_BUF_INIT;
    if (!keel__json_string(ps, &key)) {
      keel_buf_free(&key);
      break;
    }
    keel__json_ws(ps);
    if (ps->p >= ps->end || *ps->p != ':') {
      keel_buf_free(&key);
      keel__json_fail(ps, ps->p, "expected ':'");
      break;
    }
    ++ps->p;
    keel_json* value = keel__json_value(ps, depth + 1);
    if (value == NULL) {
      keel_buf_free(&key);
      break;
    }
    if (v->count == cap) {
      cap = cap ? cap * 2 : 4;
      v->members = (keel_json_member*)keel_xrealloc(v->members,
                                                    cap * sizeof *v->members);
    }
    v->members[v->count].key = key.data;
    v->members[v->count].key_len = key.len;
    v->members[v->count].value = value;
    ++v->count;
    keel__json_ws(ps);
    if (ps->p < ps->end && *ps->p == ',') {
      ++ps->p;
      keel__json_ws(ps);
      continue;
    }
    if (ps->p < ps->end && *ps->p == '}') {
      ++ps->p;
      qsort(v->members, v->count, sizeof *v->members, keel__json_member_cmp);
      for (size_t i = 1; i < v->count; ++i) {
        if (keel__json_member_cmp(&v->members[i - 1], &v->members[i]) == 0) {
          keel__json_fail(ps, start, "duplicate key in object");
          keel_json_free(v);
          return NULL;
        }
      }
      return v;
    }
    keel__json_fail(ps, ps->p, "expected ',' or '}'");
    break;
  }
  keel_json_free(v);
  return NULL;
}

static inline int keel__json_literal(keel__json_parser* ps, const char* word) {
  size_t n = strlen(word);
  if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, word, n) != 0) return 0;
  ps->p += n;
  return 1;
}

static inline keel_json* keel__json_value(keel__json_parser* ps, int depth) {
  if (depth > KEEL_JSON_MAX_DEPTH)
    return keel__json_fail(ps, ps->p, "nesting too deep");
  keel__json_ws(ps);
  if (ps->p >= ps->end) return keel__json_fail(ps, ps->p, "unexpected end");
  switch (*ps->p) {
    case '{':
      return keel__json_object(ps, depth);
    case '[':
      return keel__json_array(ps, depth);
    case '"': {
      keel_buf b = KEEL_BUF_INIT;
      if (!keel__json_string(ps, &b)) {
        keel_buf_free(&b);
        return NULL;
      }
      keel_json* v = keel__json_new(KEEL_JSON_STRING);
      v->text = b.data;
      v->len = b.len;
      return v;
    }
    case 't':
      if (keel__json_literal(ps, "true")) return keel__json_new(KEEL_JSON_TRUE);
      break;
    case 'f':
      if (keel__json_literal(ps, "false"))
        return keel__json_new(KEEL_JSON_FALSE);
      break;
    case 'n':
      if (keel__json_literal(ps, "null")) return keel__json_new(KEEL_JSON_NULL);
      break;
    default:
      if (*ps->p == '-' || (*ps->p >= '0' && *ps->p <= '9'))
        return keel__json_number(ps);
      break;
  }
  return keel__json_fail(ps, ps->p, "unexpected character");
}

/* Parses one JSON document. Returns NULL and fills `err` on error. The
 * result is freed with keel_json_free. */
static inline keel_json* keel_json_parse(const void* text, size_t len,
                                         keel_json_error* err) {
  keel__json_parser ps = {(const uint8_t*)text, (const uint8_t*)text,
                          (const uint8_t*)text + len, err};
  err->message = NULL;
  err->offset = 0;
  keel_json* v = keel__json_value(&ps, 1);
  if (v == NULL) return NULL;
  keel__json_ws(&ps);
  if (ps.p != ps.end) {
    keel_json_free(v);
    return keel__json_fail(&ps, ps.p, "trailing characters after value");
  }
  return v;
}

/* Object member lookup by key (binary search); NULL if absent or `obj` is
 * not an object. */
static inline const keel_json* keel_json_get_n(const keel_json* obj,
                                               const char* key, size_t n) {
  if (obj == NULL || obj->type != KEEL_JSON_OBJECT) return NULL;
  size_t lo = 0, hi = obj->count;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    const keel_json_member* m = &obj->members[mid];
    int c = keel__json_key_cmp(m->key, m->key_len, key, n);
    if (c == 0) return m->value;
    if (c < 0) lo = mid + 1;
    else hi = mid;
  }
  return NULL;
}

static inline const keel_json* keel_json_get(const keel_json* obj,
                                             const char* key) {
  return keel_json_get_n(obj, key, strlen(key));
}

/* Appends `s` as a JSON string literal in canonical form. */
static inline void keel_json_write_string(keel_buf* b, const char* s,
                                          size_t n) {
  keel_buf_putc(b, '"');
  const char* run = s;
  for (size_t i = 0; i < n; ++i) {
    uint8_t c = (uint8_t)s[i];
    const char* esc = NULL;
    char hex[7];
    switch (c) {
      case '"': esc = "\\\""; break;
      case '\\': esc = "\\\\"; break;
      case '\b': esc = "\\b"; break;
      case '\f': esc = "\\f"; break;
      case '\n': esc = "\\n"; break;
      case '\r': esc = "\\r"; break;
      case '\t': esc = "\\t"; break;
      default:
        if (c < 0x20) {
          snprintf(hex, sizeof hex, "\\u%04x", c);
          esc = hex;
        }
    }
    if (esc == NULL) continue;
    keel_buf_append(b, run, (size_t)(s + i - run));
    keel_buf_append_str(b, esc);
    run = s + i + 1;
  }
  keel_buf_append(b, run, (size_t)(s + n - run));
  keel_buf_putc(b, '"');
}

/* Appends `v` in canonical form (see the top of this file). */
static inline void keel_json_write(keel_buf* b, const keel_json* v) {
  switch (v->type) {
    case KEEL_JSON_NULL: keel_buf_append_str(b, "null"); break;
    case KEEL_JSON_FALSE: keel_buf_append_str(b, "false"); break;
    case KEEL_JSON_TRUE: keel_buf_append_str(b, "true"); break;
    case KEEL_JSON_NUMBER: keel_buf_append(b, v->text, v->len); break;
    case KEEL_JSON_STRING: keel_json_write_string(b, v->text, v->len); break;
    case KEEL_JSON_ARRAY:
      keel_buf_putc(b, '[');
      for (size_t i = 0; i < v->count; ++i) {
        if (i) keel_buf_putc(b, ',');
        keel_json_write(b, v->items[i]);
      }
      keel_buf_putc(b, ']');
      break;
    case KEEL_JSON_OBJECT:
      keel_buf_putc(b, '{');
      for (size_t i = 0; i < v->count; ++i) {
        if (i) keel_buf_putc(b, ',');
        keel_json_write_string(b, v->members[i].key, v->members[i].key_len);
        keel_buf_putc(b, ':');
        keel_json_write(b, v->members[i].value);
      }
      keel_buf_putc(b, '}');
      break;
  }
}

#endif /* KEEL_GUEST_EXAMPLES_JSON_H_ */
