#include "server/call_args.h"

#include <boost/json/basic_parser_impl.hpp>

namespace keel::server {

namespace json = boost::json;

namespace {

// One element of "args", with the exact text of numbers (Boost.JSON's own
// double conversion is not correctly rounded, so floats are read from the
// text).
struct Token {
  enum class Kind : uint8_t { kNumber, kString, kOther };
  Kind kind = Kind::kOther;
  std::string text;
};

// A SAX handler that keeps only the elements of the top-level "args" array.
class ArgsHandler {
 public:
  static constexpr std::size_t max_array_size = static_cast<std::size_t>(-1);
  static constexpr std::size_t max_object_size = static_cast<std::size_t>(-1);
  static constexpr std::size_t max_string_size = static_cast<std::size_t>(-1);
  static constexpr std::size_t max_key_size = static_cast<std::size_t>(-1);

  std::vector<Token> tokens;
  bool saw_args = false;
  std::string error;  // our own reason, when we stopped the parser

  bool on_document_begin(json::error_code&) { return true; }
  bool on_document_end(json::error_code&) { return true; }
  bool on_array_begin(json::error_code& ec) { return Begin(/*array=*/true, ec); }
  bool on_array_end(std::size_t, json::error_code&) { return End(); }
  bool on_object_begin(json::error_code& ec) { return Begin(/*array=*/false, ec); }
  bool on_object_end(std::size_t, json::error_code&) { return End(); }
  bool on_string_part(json::string_view s, std::size_t, json::error_code&) {
    if (Collecting()) text_.append(s.data(), s.size());
    return true;
  }
  bool on_string(json::string_view s, std::size_t, json::error_code& ec) {
    if (Collecting()) text_.append(s.data(), s.size());
    return Scalar(Token::Kind::kString, ec);
  }
  bool on_key_part(json::string_view s, std::size_t, json::error_code&) {
    if (depth_ == 1) key_.append(s.data(), s.size());
    return true;
  }
  bool on_key(json::string_view s, std::size_t, json::error_code& ec) {
    if (depth_ != 1) return true;
    key_.append(s.data(), s.size());
    args_next_ = key_ == "args";
    key_.clear();
    if (args_next_ && saw_args) return Fail("\"args\" appears twice", ec);
    return true;
  }
  bool on_number_part(json::string_view s, json::error_code&) {
    if (Collecting()) text_.append(s.data(), s.size());
    return true;
  }
  bool on_int64(int64_t, json::string_view s, json::error_code& ec) { return Number(s, ec); }
  bool on_uint64(uint64_t, json::string_view s, json::error_code& ec) { return Number(s, ec); }
  bool on_double(double, json::string_view s, json::error_code& ec) { return Number(s, ec); }
  bool on_bool(bool, json::error_code& ec) { return Scalar(Token::Kind::kOther, ec); }
  bool on_null(json::error_code& ec) { return Scalar(Token::Kind::kOther, ec); }
  bool on_comment_part(json::string_view, json::error_code&) { return true; }
  bool on_comment(json::string_view, json::error_code&) { return true; }

 private:
  // True while reading a direct element of "args".
  bool Collecting() const { return in_args_ && depth_ == args_depth_; }

  bool Fail(std::string why, json::error_code& ec) {
    error = std::move(why);
    ec = json::make_error_code(json::error::syntax);
    return false;
  }

  // Checks where a value starts; `container` values open a level.
  bool Start(bool is_array, bool container, json::error_code& ec) {
    if (depth_ == 0 && !(container && !is_array)) return Fail("the body must be a JSON object", ec);
    if (depth_ == 1 && args_next_) {
      args_next_ = false;
      if (!is_array || !container) return Fail("\"args\" must be an array", ec);
      saw_args = true;
      in_args_ = true;
      args_depth_ = 2;
      return true;
    }
    if (depth_ == 1) args_next_ = false;
    if (Collecting() && container) tokens.push_back({Token::Kind::kOther, {}});
    return true;
  }

  bool Begin(bool is_array, json::error_code& ec) {
    if (!Start(is_array, /*container=*/true, ec)) return false;
    ++depth_;
    return true;
  }

  bool End() {
    --depth_;
    if (in_args_ && depth_ < args_depth_) in_args_ = false;
    return true;
  }

  bool Scalar(Token::Kind kind, json::error_code& ec) {
    if (!Start(/*is_array=*/false, /*container=*/false, ec)) return false;
    if (Collecting()) tokens.push_back({kind, std::move(text_)});
    text_.clear();
    return true;
  }

  bool Number(json::string_view s, json::error_code& ec) {
    if (Collecting()) text_.append(s.data(), s.size());
    return Scalar(Token::Kind::kNumber, ec);
  }

  int depth_ = 0;
  bool args_next_ = false;
  bool in_args_ = false;
  int args_depth_ = 0;
  std::string key_;
  std::string text_;
};

bool IsIntegerText(std::string_view text) {
  return text.find_first_of(".eE") == std::string_view::npos;
}

Result<Value> ToValue(const Token& token, ValType type, size_t index) {
  auto wrong = [&](std::string_view what) {
    return MakeError(ErrorCode::kInvalidArgument, "argument " + std::to_string(index) + " (" +
                                                      std::string(ToString(type)) + "): " +
                                                      std::string(what));
  };
  bool integer = type == ValType::kI32 || type == ValType::kI64;
  switch (token.kind) {
    case Token::Kind::kOther:
      return wrong("expected a number or a string");
    case Token::Kind::kNumber:
      if (integer && !IsIntegerText(token.text)) return wrong("'" + token.text + "' is not an integer");
      break;
    case Token::Kind::kString:
      break;
  }
  auto value = ParseValue(type, token.text);
  if (!value) return wrong("'" + token.text + "' is not a value of this type");
  return *value;
}

void AppendQuoted(std::string& out, std::string_view text) {
  out += '"';
  out += text;
  out += '"';
}

}  // namespace

Result<std::vector<Value>> ParseCallArgs(std::string_view text, const FuncType& type) {
  std::vector<Token> tokens;
  if (!text.empty()) {
    json::basic_parser<ArgsHandler> parser(json::parse_options{});
    json::error_code ec;
    size_t used = parser.write_some(false, text.data(), text.size(), ec);
    if (!ec && used != text.size()) ec = json::make_error_code(json::error::extra_data);
    if (ec) {
      const std::string& why = parser.handler().error;
      return MakeError(ErrorCode::kInvalidArgument,
                       why.empty() ? "malformed JSON body: " + ec.message() : why);
    }
    tokens = std::move(parser.handler().tokens);
  }
  if (tokens.size() != type.params.size()) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "expected " + std::to_string(type.params.size()) + " arguments " + type.ToString() +
                         ", got " + std::to_string(tokens.size()));
  }
  std::vector<Value> values;
  values.reserve(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    auto value = ToValue(tokens[i], type.params[i], i);
    if (!value) return MakeError(value.error());
    values.push_back(*value);
  }
  return values;
}

std::string FormatResults(const std::vector<Value>& values) {
  std::string out = "[";
  for (size_t i = 0; i < values.size(); ++i) {
    if (i) out += ',';
    const Value& v = values[i];
    std::string text = v.ToString();
    bool finite_float = (v.type() == ValType::kF32 || v.type() == ValType::kF64) &&
                        text.find_first_of("ni") == std::string::npos;
    if (v.type() == ValType::kI32 || finite_float) {
      out += text;
    } else {
      AppendQuoted(out, text);
    }
  }
  out += ']';
  return out;
}

}  // namespace keel::server
