// Export and import names as keel prints and reads them: `keel inspect`
// lists them, `keel run --invoke NAME` and error messages name them.
// WebAssembly names are any UTF-8, including "" and NUL, so the printed form
// must be unambiguous:
//  - a name of printable ASCII other than space, '"' and '\' prints as
//    itself: add, wasi:cli/run@0.2.0#run;
//  - any other is a WebAssembly text string literal: "" (the empty name),
//    "a\00b" (NUL), "caf\u{e9}", "two words". Escapes: \t \n \r \" \' \\,
//    \hh (a byte, two hex digits) and \u{h...} (a code point).
// ParseName reads either form back, so whatever inspect prints can be passed
// to --invoke.
#ifndef KEEL_BASE_NAMES_H_
#define KEEL_BASE_NAMES_H_

#include <optional>
#include <string>
#include <string_view>

namespace keel {

// The printed form described above.
std::string QuoteName(std::string_view name);

// For error messages: 'add' for plain names, the string literal otherwise.
std::string MessageName(std::string_view name);

// Reads a printed form back: text starting with '"' must be one complete
// string literal (nullopt when malformed or not valid UTF-8); any other text
// is the name itself.
std::optional<std::string> ParseName(std::string_view text);

}  // namespace keel

#endif  // KEEL_BASE_NAMES_H_
