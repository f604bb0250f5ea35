/*
 * template — renders a Mustache-style template (a documented subset).
 *
 * Export `render` (byte function). Input: a JSON object
 *
 *   {"template": "Hello {{name}}!", "vars": {"name": "world"}}
 *
 * where "vars" (any JSON value, default {}) is the root context. Output:
 * the rendered text ("Hello world!").
 *
 * Tags:
 *   {{name}}            value, HTML-escaped (& < > " ' -> entities)
 *   {{{name}}} {{&name}} value, raw
 *   {{#name}}..{{/name}} section: once per item if the value is an array
 *                       (the item becomes the innermost context), once with
 *                       the value as context if it is truthy, else skipped
 *   {{^name}}..{{/name}} inverted section: rendered once if the value is
 *                       falsy or missing
 *   {{! comment }}      ignored
 * Names: `.` is the current context; `a.b.c` looks up `a` in the innermost
 * context that has it, then descends. Whitespace around names is allowed.
 * Falsy: missing, null, false, "" and []. Values render as: strings as
 * their text, numbers as written, true/false as words, null/missing as
 * nothing, arrays/objects as canonical JSON.
 *
 * Not supported (an error): partials {{>x}}, delimiter changes {{=..=}}.
 * Not implemented: the spec's removal of "standalone" tag lines — section
 * tags alone on a line leave that line's newline in the output.
 *
 * Errors (invalid JSON, missing "template", unclosed tag or section,
 * mismatched {{/name}}, sections nested deeper than 64) fail the call via
 * keel_fail: the message goes to stderr and the call traps.
 */
#include "json.h"
#include "keel.h"

KEEL_CABI_REALLOC()

#define MAX_SECTION_DEPTH 64

typedef enum node_kind {
  NODE_TEXT,
  NODE_ESCAPED,
  NODE_RAW,
  NODE_SECTION,
  NODE_INVERTED,
} node_kind;

typedef struct node {
  node_kind kind;
  const char* s; /* text, or the tag name */
  size_t n;
  struct node* kids; /* sections only */
  size_t nkids;
} node;

typedef struct node_list {
  node* items;
  size_t count, cap;
} node_list;

typedef struct tpl_parser {
  const char* begin;
  const char* p;
  const char* end;
} tpl_parser;

static void node_list_push(node_list* l, node n) {
  if (l->count == l->cap) {
    l->cap = l->cap ? l->cap * 2 : 8;
    l->items = (node*)keel_xrealloc(l->items, l->cap * sizeof *l->items);
  }
  l->items[l->count++] = n;
}

static void nodes_free(node* items, size_t count) {
  for (size_t i = 0; i < count; ++i) nodes_free(items[i].kids, items[i].nkids);
  free(items);
}

static const char* find(const char* p, const char* end, const char* needle) {
  size_t n = strlen(needle);
  for (; (size_t)(end - p) >= n; ++p)
    if (memcmp(p, needle, n) == 0) return p;
  return NULL;
}

static int is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static _Noreturn void tpl_fail(const tpl_parser* tp, const char* at,
                               const char* msg) {
  keel_failf("template error at byte %zu: %s", (size_t)(at - tp->begin), msg);
}

/* Parses nodes until end of input (close == NULL) or until the tag
 * {{/close}} (consumed). */
static node_list parse_block(tpl_parser* tp, const char* close, size_t close_n,
                             const char* open_at, int depth) {
  node_list out = {NULL, 0, 0};
  for (;;) {
    const char* tag = find(tp->p, tp->end, "{{");
    const char* text_end = tag ? tag : tp->end;
    if (text_end > tp->p)
      node_list_push(&out, (node){NODE_TEXT, tp->p, (size_t)(text_end - tp->p),
                                  NULL, 0});
    if (tag == NULL) {
      if (close) tpl_fail(tp, open_at, "unclosed section");
      tp->p = tp->end;
      return out;
    }
    const char* q = tag + 2;
    char sigil = q < tp->end ? *q : 0;
    const char* closer = "}}";
    if (sigil == '{') closer = "}}}";
    if (sigil == '{' || sigil == '&' || sigil == '#' || sigil == '^' ||
        sigil == '/' || sigil == '!')
      ++q;
    else
      sigil = 0;
    const char* tag_end = find(q, tp->end, closer);
    if (tag_end == NULL) tpl_fail(tp, tag, "unclosed tag");
    tp->p = tag_end + strlen(closer);
    if (sigil == '!') continue;
    if (sigil == 0 && q < tp->end && (*q == '>' || *q == '='))
      tpl_fail(tp, tag, "partials and delimiter changes are not supported");
    /* Trim the name. */
    const char* name = q;
    const char* name_end = tag_end;
    while (name < name_end && is_space(*name)) ++name;
    while (name_end > name && is_space(name_end[-1])) --name_end;
    size_t n = (size_t)(name_end - name);
    if (n == 0) tpl_fail(tp, tag, "empty tag name");
    for (const char* c = name; c < name_end; ++c)
      if (is_space(*c)) tpl_fail(tp, tag, "space in tag name");
    switch (sigil) {
      case 0:
        node_list_push(&out, (node){NODE_ESCAPED, name, n, NULL, 0});
        break;
      case '{':
      case '&':
        node_list_push(&out, (node){NODE_RAW, name, n, NULL, 0});
        break;
      case '#':
      case '^': {
        if (depth >= MAX_SECTION_DEPTH) tpl_fail(tp, tag, "sections nested too deep");
        node_list kids = parse_block(tp, name, n, tag, depth + 1);
        node_list_push(&out, (node){sigil == '#' ? NODE_SECTION : NODE_INVERTED,
                                    name, n, kids.items, kids.count});
        break;
      }
      case '/':
        if (close == NULL || n != close_n || memcmp(name, close, n) != 0)
          tpl_fail(tp, tag, "closing tag does not match the open section");
        return out;
    }
  }
}

/* ------------------------------------------------------------------ */

typedef struct render_ctx {
  const keel_json* stack[MAX_SECTION_DEPTH + 1];
  size_t depth;
  keel_buf* out;
} render_ctx;

/* Resolves a (possibly dotted) name against the context stack. */
static const keel_json* lookup(const render_ctx* rc, const char* name,
                               size_t n) {
  if (n == 1 && name[0] == '.') return rc->stack[rc->depth - 1];
  const char* dot = memchr(name, '.', n);
  size_t first = dot ? (size_t)(dot - name) : n;
  const keel_json* v = NULL;
  for (size_t i = rc->depth; i-- > 0 && v == NULL;)
    v = keel_json_get_n(rc->stack[i], name, first);
  /* Descend through the remaining parts. */
  while (v && dot) {
    const char* part = dot + 1;
    dot = memchr(part, '.', (size_t)(name + n - part));
    size_t len = dot ? (size_t)(dot - part) : (size_t)(name + n - part);
    v = keel_json_get_n(v, part, len);
  }
  return v;
}

static int truthy(const keel_json* v) {
  if (v == NULL) return 0;
  switch (v->type) {
    case KEEL_JSON_NULL:
    case KEEL_JSON_FALSE:
      return 0;
    case KEEL_JSON_STRING:
    case KEEL_JSON_ARRAY:
      return v->type == KEEL_JSON_STRING ? v->len > 0 : v->count > 0;
    default:
      return 1;
  }
}

static void append_escaped(keel_buf* b, const char* s, size_t n) {
  const char* run = s;
  for (size_t i = 0; i < n; ++i) {
    const char* e;
    switch (s[i]) {
      case '&': e = "&amp;"; break;
      case '<': e = "&lt;"; break;
      case '>': e = "&gt;"; break;
      case '"': e = "&quot;"; break;
      case '\'': e = "&#39;"; break;
      default: continue;
    }
    keel_buf_append(b, run, (size_t)(s + i - run));
    keel_buf_append_str(b, e);
    run = s + i + 1;
  }
  keel_buf_append(b, run, (size_t)(s + n - run));
}

static void append_value(keel_buf* b, const keel_json* v, int escape) {
  if (v == NULL) return;
  keel_buf tmp = KEEL_BUF_INIT;
  const char* s = NULL;
  size_t n = 0;
  switch (v->type) {
    case KEEL_JSON_NULL: return;
    case KEEL_JSON_FALSE: s = "false", n = 5; break;
    case KEEL_JSON_TRUE: s = "true", n = 4; break;
    case KEEL_JSON_NUMBER:
    case KEEL_JSON_STRING: s = v->text, n = v->len; break;
    case KEEL_JSON_ARRAY:
    case KEEL_JSON_OBJECT:
      keel_json_write(&tmp, v);
      s = tmp.data, n = tmp.len;
      break;
  }
  if (escape) append_escaped(b, s, n);
  else keel_buf_append(b, s, n);
  keel_buf_free(&tmp);
}

static void render_nodes(render_ctx* rc, const node* nodes, size_t count) {
  for (size_t i = 0; i < count; ++i) {
    const node* nd = &nodes[i];
    switch (nd->kind) {
      case NODE_TEXT:
        keel_buf_append(rc->out, nd->s, nd->n);
        break;
      case NODE_ESCAPED:
      case NODE_RAW:
        append_value(rc->out, lookup(rc, nd->s, nd->n), nd->kind == NODE_ESCAPED);
        break;
      case NODE_INVERTED:
        if (!truthy(lookup(rc, nd->s, nd->n))) render_nodes(rc, nd->kids, nd->nkids);
        break;
      case NODE_SECTION: {
        const keel_json* v = lookup(rc, nd->s, nd->n);
        if (!truthy(v)) break;
        /* Depth is bounded: parse_block limits section nesting. */
        if (v->type == KEEL_JSON_ARRAY) {
          for (size_t k = 0; k < v->count; ++k) {
            rc->stack[rc->depth++] = v->items[k];
            render_nodes(rc, nd->kids, nd->nkids);
            --rc->depth;
          }
        } else {
          rc->stack[rc->depth++] = v;
          render_nodes(rc, nd->kids, nd->nkids);
          --rc->depth;
        }
        break;
      }
    }
  }
}

static int render(const uint8_t* in, size_t len, keel_output* out) {
  keel_json_error err;
  keel_json* doc = keel_json_parse(in, len, &err);
  if (doc == NULL)
    keel_failf("invalid JSON at byte %zu: %s", err.offset, err.message);
  const keel_json* tpl = keel_json_get(doc, "template");
  if (tpl == NULL || tpl->type != KEEL_JSON_STRING)
    keel_fail("input must be an object with a string member \"template\"");
  static const keel_json kEmptyObject = {KEEL_JSON_OBJECT, NULL, 0, 0, NULL, NULL};
  const keel_json* vars = keel_json_get(doc, "vars");
  if (vars == NULL) vars = &kEmptyObject;

  tpl_parser tp = {tpl->text, tpl->text, tpl->text + tpl->len};
  node_list nodes = parse_block(&tp, NULL, 0, NULL, 0);

  keel_buf b = KEEL_BUF_INIT;
  render_ctx rc;
  rc.stack[0] = vars;
  rc.depth = 1;
  rc.out = &b;
  render_nodes(&rc, nodes.items, nodes.count);

  nodes_free(nodes.items, nodes.count);
  keel_json_free(doc);
  keel_output_buf(out, &b);
  return 0;
}
KEEL_BYTES_FN(render, render)
