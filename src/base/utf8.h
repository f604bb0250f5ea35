// UTF-8 as RFC 3629 defines it: no overlong forms, no UTF-16 surrogates,
// nothing above U+10FFFF. One decoder for every place keel checks or
// repairs text (names, module bytes, JSON, stored job text).
#ifndef KEEL_BASE_UTF8_H_
#define KEEL_BASE_UTF8_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace keel {

struct Utf8Sequence {
  // Bytes of the well-formed sequence (1-4); 0 when none starts there.
  size_t length = 0;
  uint32_t code_point = 0;  // when length > 0
  // When length is 0: the bytes of the maximal ill-formed subsequence
  // (Unicode 15, section 3.9), which a repair replaces with one U+FFFD;
  // at least 1.
  size_t ill_formed = 1;
};

// The sequence starting at text[i]; i < text.size().
Utf8Sequence DecodeUtf8(std::string_view text, size_t i);

bool IsValidUtf8(std::string_view text);

}  // namespace keel

#endif  // KEEL_BASE_UTF8_H_
