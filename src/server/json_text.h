// JSON as the service reads and writes it: objects must not repeat a key
// (RFC 8259 leaves duplicates undefined; parsers disagree on which wins, so
// keel refuses them everywhere), and what it writes is valid UTF-8 even when
// a message quotes bytes a client sent.
#ifndef KEEL_SERVER_JSON_TEXT_H_
#define KEEL_SERVER_JSON_TEXT_H_

#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <boost/json/value.hpp>

#include "base/utf8.h"
#include "keel/status.h"

namespace keel::server {

// The keys of the objects open during a SAX parse, innermost last, to
// refuse a key that repeats within one object.
class KeyTracker {
 public:
  void OpenObject();
  void CloseObject();
  // Appends a part of the current key (keys may arrive in pieces).
  void AddKeyPart(std::string_view part) { key_.append(part.data(), part.size()); }
  // Ends the current key; false if the innermost open object already has it.
  // The key is then left in `last_key()`.
  bool EndKey(std::string_view last_part);
  const std::string& last_key() const { return last_key_; }

 private:
  std::vector<std::set<std::string, std::less<>>> open_;
  size_t depth_ = 0;  // open_[0..depth_) are in use; deeper sets are kept for reuse
  std::string key_;
  std::string last_key_;
};

// Parses `text` as a JSON document, refusing duplicate keys in any object.
// kInvalidArgument naming the problem (with the repeated key).
[[nodiscard]] Result<boost::json::value> ParseJson(std::string_view text);

// `text` with every byte sequence that is not UTF-8 replaced by U+FFFD.
std::string ToValidUtf8(std::string_view text);

}  // namespace keel::server

#endif  // KEEL_SERVER_JSON_TEXT_H_
