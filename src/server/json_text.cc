#include "server/json_text.h"

#include <boost/json/basic_parser_impl.hpp>
#include <boost/json/value_stack.hpp>

namespace keel::server {

namespace json = boost::json;

void KeyTracker::OpenObject() {
  if (depth_ == open_.size()) open_.emplace_back();
  ++depth_;
}

void KeyTracker::CloseObject() {
  if (depth_ == 0) return;
  open_[--depth_].clear();
}

bool KeyTracker::EndKey(std::string_view last_part) {
  key_.append(last_part.data(), last_part.size());
  last_key_.swap(key_);
  key_.clear();
  if (depth_ == 0) return true;
  return open_[depth_ - 1].insert(last_key_).second;
}

namespace {

// Builds the document like Boost.JSON's own parser, refusing repeated keys.
class StrictHandler {
 public:
  static constexpr std::size_t max_array_size = static_cast<std::size_t>(-1);
  static constexpr std::size_t max_object_size = static_cast<std::size_t>(-1);
  static constexpr std::size_t max_string_size = static_cast<std::size_t>(-1);
  static constexpr std::size_t max_key_size = static_cast<std::size_t>(-1);

  StrictHandler() { stack.reset(); }

  json::value_stack stack;
  bool has_duplicate = false;  // parsing stopped at a repeated key...
  std::string duplicate;       // ...this one

  bool on_document_begin(json::error_code&) { return true; }
  bool on_document_end(json::error_code&) { return true; }
  bool on_array_begin(json::error_code&) { return true; }
  bool on_array_end(std::size_t n, json::error_code&) {
    stack.push_array(n);
    return true;
  }
  bool on_object_begin(json::error_code&) {
    keys_.OpenObject();
    return true;
  }
  bool on_object_end(std::size_t n, json::error_code&) {
    keys_.CloseObject();
    stack.push_object(n);
    return true;
  }
  bool on_string_part(json::string_view s, std::size_t, json::error_code&) {
    stack.push_chars(s);
    return true;
  }
  bool on_string(json::string_view s, std::size_t, json::error_code&) {
    stack.push_string(s);
    return true;
  }
  bool on_key_part(json::string_view s, std::size_t, json::error_code&) {
    keys_.AddKeyPart(s);
    stack.push_chars(s);
    return true;
  }
  bool on_key(json::string_view s, std::size_t, json::error_code& ec) {
    if (!keys_.EndKey(s)) {
      has_duplicate = true;
      duplicate = keys_.last_key();
      ec = json::make_error_code(json::error::syntax);
      return false;
    }
    stack.push_key(s);
    return true;
  }
  bool on_number_part(json::string_view, json::error_code&) { return true; }
  bool on_int64(int64_t i, json::string_view, json::error_code&) {
    stack.push_int64(i);
    return true;
  }
  bool on_uint64(uint64_t u, json::string_view, json::error_code&) {
    stack.push_uint64(u);
    return true;
  }
  bool on_double(double d, json::string_view, json::error_code&) {
    stack.push_double(d);
    return true;
  }
  bool on_bool(bool b, json::error_code&) {
    stack.push_bool(b);
    return true;
  }
  bool on_null(json::error_code&) {
    stack.push_null();
    return true;
  }
  bool on_comment_part(json::string_view, json::error_code&) { return true; }
  bool on_comment(json::string_view, json::error_code&) { return true; }

 private:
  KeyTracker keys_;
};

}  // namespace

Result<json::value> ParseJson(std::string_view text) {
  json::basic_parser<StrictHandler> parser(json::parse_options{});
  json::error_code ec;
  size_t used = parser.write_some(false, text.data(), text.size(), ec);
  if (!ec && used != text.size()) ec = json::make_error_code(json::error::extra_data);
  if (ec) {
    const StrictHandler& handler = parser.handler();
    if (handler.has_duplicate) {
      return MakeError(ErrorCode::kInvalidArgument, "malformed JSON body: the key \"" +
                                                        ToValidUtf8(handler.duplicate) +
                                                        "\" appears twice in one object");
    }
    return MakeError(ErrorCode::kInvalidArgument, "malformed JSON body: " + ec.message());
  }
  return parser.handler().stack.release();
}

std::string ToValidUtf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    size_t n = DecodeUtf8(text, i).length;
    if (n == 0) {
      out += "\xEF\xBF\xBD";  // U+FFFD
      ++i;
      continue;
    }
    out.append(text.data() + i, n);
    i += n;
  }
  return out;
}

}  // namespace keel::server
