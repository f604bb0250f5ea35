#include "base/utf8.h"

namespace keel {

Utf8Sequence DecodeUtf8(std::string_view text, size_t i) {
  auto byte = [&](size_t k) { return static_cast<uint8_t>(text[i + k]); };
  const uint8_t lead = byte(0);
  if (lead < 0x80) return {.length = 1, .code_point = lead};
  size_t length;
  uint32_t code_point;
  uint8_t lo = 0x80, hi = 0xbf;  // range of the second byte
  if (lead >= 0xc2 && lead <= 0xdf) {
    length = 2, code_point = lead & 0x1f;
  } else if (lead >= 0xe0 && lead <= 0xef) {
    length = 3, code_point = lead & 0x0f;
    if (lead == 0xe0) lo = 0xa0;  // no overlong forms
    if (lead == 0xed) hi = 0x9f;  // no UTF-16 surrogates
  } else if (lead >= 0xf0 && lead <= 0xf4) {
    length = 4, code_point = lead & 0x07;
    if (lead == 0xf0) lo = 0x90;  // no overlong forms
    if (lead == 0xf4) hi = 0x8f;  // nothing above U+10FFFF
  } else {
    return {};  // a continuation byte, an overlong lead or beyond Unicode
  }
  Utf8Sequence bad;
  for (size_t k = 1; k < length; ++k) {
    if (i + k >= text.size()) return bad;
    const uint8_t b = byte(k);
    if (k == 1 ? (b < lo || b > hi) : (b & 0xc0) != 0x80) return bad;
    code_point = (code_point << 6) | (b & 0x3f);
    bad.ill_formed = k + 1;
  }
  return {.length = length, .code_point = code_point};
}

bool IsValidUtf8(std::string_view text) {
  for (size_t i = 0; i < text.size();) {
    const size_t length = DecodeUtf8(text, i).length;
    if (length == 0) return false;
    i += length;
  }
  return true;
}

}  // namespace keel
