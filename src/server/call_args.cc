#include "server/call_args.h"

#include <optional>

#include <boost/json/basic_parser_impl.hpp>

#include "server/json_text.h"

namespace keel::server {

namespace json = boost::json;

namespace {

// The longest argument text read: decimal spellings of every double fit
// (the exact expansion of the smallest subnormal has 767 digits).
constexpr size_t kMaxArgumentText = 1024;

bool IsIntegerText(std::string_view text) { return text.find_first_of(".eE") == std::string_view::npos; }

// A SAX handler that converts the elements of the top-level "args" array
// to values as they arrive, so that the body is read once, nothing but the
// values is kept, and a call with too many arguments stops at the first one
// too many. Numbers are read from their text (Boost.JSON's own double
// conversion is not correctly rounded).
class ArgsHandler {
 public:
  static constexpr std::size_t max_array_size = static_cast<std::size_t>(-1);
  static constexpr std::size_t max_object_size = static_cast<std::size_t>(-1);
  static constexpr std::size_t max_string_size = static_cast<std::size_t>(-1);
  static constexpr std::size_t max_key_size = static_cast<std::size_t>(-1);

  explicit ArgsHandler(const FuncType& type) : type_(type) { values.reserve(type.params.size()); }

  std::vector<Value> values;
  std::string error;  // our own reason, when we stopped the parser

  bool on_document_begin(json::error_code&) { return true; }
  bool on_document_end(json::error_code&) { return true; }
  bool on_array_begin(json::error_code& ec) { return Begin(/*array=*/true, ec); }
  bool on_array_end(std::size_t, json::error_code&) { return End(/*array=*/true); }
  bool on_object_begin(json::error_code& ec) { return Begin(/*array=*/false, ec); }
  bool on_object_end(std::size_t, json::error_code&) { return End(/*array=*/false); }
  bool on_string_part(json::string_view s, std::size_t, json::error_code& ec) { return Collect(s, ec); }
  bool on_string(json::string_view s, std::size_t, json::error_code& ec) {
    return Collect(s, ec) && Scalar(Kind::kString, ec);
  }
  bool on_key_part(json::string_view s, std::size_t, json::error_code&) {
    keys_.AddKeyPart(s);
    return true;
  }
  bool on_key(json::string_view s, std::size_t, json::error_code& ec) {
    if (!keys_.EndKey(s)) return Fail("the key \"" + ToValidUtf8(keys_.last_key()) + "\" appears twice", ec);
    if (depth_ == 1) args_next_ = keys_.last_key() == "args";
    return true;
  }
  bool on_number_part(json::string_view s, json::error_code& ec) { return Collect(s, ec); }
  bool on_int64(int64_t, json::string_view s, json::error_code& ec) { return Number(s, ec); }
  bool on_uint64(uint64_t, json::string_view s, json::error_code& ec) { return Number(s, ec); }
  bool on_double(double, json::string_view s, json::error_code& ec) { return Number(s, ec); }
  bool on_bool(bool, json::error_code& ec) { return Scalar(Kind::kOther, ec); }
  bool on_null(json::error_code& ec) { return Scalar(Kind::kOther, ec); }
  bool on_comment_part(json::string_view, json::error_code&) { return true; }
  bool on_comment(json::string_view, json::error_code&) { return true; }

 private:
  enum class Kind : uint8_t { kNumber, kString, kOther };

  // True while reading a direct element of "args".
  bool Collecting() const { return in_args_ && depth_ == 2; }

  bool Fail(std::string why, json::error_code& ec) {
    error = std::move(why);
    ec = json::make_error_code(json::error::syntax);
    return false;
  }

  bool Collect(json::string_view s, json::error_code& ec) {
    if (!Collecting()) return true;
    if (text_.size() + s.size() > kMaxArgumentText) {
      return Fail("argument " + std::to_string(values.size()) + " is longer than " +
                      std::to_string(kMaxArgumentText) + " characters",
                  ec);
    }
    text_.append(s.data(), s.size());
    return true;
  }

  // Checks where a value starts: the document is an object, "args" an
  // array, and its elements scalars.
  bool Start(bool container, bool is_array, json::error_code& ec) {
    if (depth_ == 0) {
      if (!container || is_array) return Fail("the body must be a JSON object", ec);
      return true;
    }
    if (depth_ == 1 && args_next_) {
      args_next_ = false;
      if (!container || !is_array) return Fail("\"args\" must be an array", ec);
      in_args_ = true;
      return true;
    }
    if (depth_ == 1) args_next_ = false;
    if (Collecting() && container) return Element(Kind::kOther, ec);
    return true;
  }

  bool Begin(bool is_array, json::error_code& ec) {
    if (!Start(/*container=*/true, is_array, ec)) return false;
    if (!is_array) keys_.OpenObject();
    ++depth_;
    return true;
  }

  bool End(bool is_array) {
    if (!is_array) keys_.CloseObject();
    --depth_;
    if (depth_ < 2) in_args_ = false;
    return true;
  }

  bool Scalar(Kind kind, json::error_code& ec) {
    if (!Start(/*container=*/false, /*is_array=*/false, ec)) return false;
    if (!Collecting()) return true;
    bool ok = Element(kind, ec);
    text_.clear();
    return ok;
  }

  bool Number(json::string_view s, json::error_code& ec) { return Collect(s, ec) && Scalar(Kind::kNumber, ec); }

  // One element of "args": the next argument.
  bool Element(Kind kind, json::error_code& ec) {
    size_t index = values.size();
    if (index == type_.params.size()) {
      return Fail("expected " + std::to_string(type_.params.size()) + " arguments " + type_.ToString() +
                      ", got more",
                  ec);
    }
    ValType param = type_.params[index];
    auto wrong = [&](std::string_view what) {
      return Fail("argument " + std::to_string(index) + " (" + std::string(ToString(param)) + "): " +
                      std::string(what),
                  ec);
    };
    bool integer = param == ValType::kI32 || param == ValType::kI64;
    if (kind == Kind::kOther) return wrong("expected a number or a string");
    if (kind == Kind::kNumber && integer && !IsIntegerText(text_)) {
      return wrong("'" + text_ + "' is not an integer");
    }
    auto value = ParseValue(param, text_);
    if (!value) return wrong("'" + ToValidUtf8(text_) + "' is not a value of this type");
    values.push_back(*value);
    return true;
  }

  const FuncType& type_;
  KeyTracker keys_;
  int depth_ = 0;
  bool args_next_ = false;
  bool in_args_ = false;
  std::string text_;
};

// Reads the common body, {"args": [...]} holding exactly the parameters'
// values as plain JSON numbers or as ASCII strings without escapes, in one
// pass and without allocating beyond the result. Anything else (other
// members, escapes, a wrong count, a value that does not convert) is left
// to the full parser, which also words the errors: nullopt.
class SimpleArgs {
 public:
  SimpleArgs(std::string_view text, const FuncType& type) : text_(text), type_(type) {}

  std::optional<std::vector<Value>> Parse() {
    std::vector<Value> values;
    values.reserve(type_.params.size());
    if (!Take('{') || !Take("\"args\"") || !Take(':') || !Take('[')) return std::nullopt;
    Skip();
    if (!Peek(']')) {
      do {
        if (values.size() == type_.params.size()) return std::nullopt;
        auto value = Element(type_.params[values.size()]);
        if (!value) return std::nullopt;
        values.push_back(*value);
      } while (Take(','));
    }
    if (!Take(']') || !Take('}')) return std::nullopt;
    Skip();
    if (at_ != text_.size() || values.size() != type_.params.size()) return std::nullopt;
    return values;
  }

 private:
  void Skip() {
    while (at_ < text_.size() && (text_[at_] == ' ' || text_[at_] == '\t' || text_[at_] == '\n' || text_[at_] == '\r')) {
      ++at_;
    }
  }
  bool Peek(char c) const { return at_ < text_.size() && text_[at_] == c; }
  bool Take(std::string_view token) {
    Skip();
    if (text_.substr(at_, token.size()) != token) return false;
    at_ += token.size();
    return true;
  }
  bool Take(char c) { return Take(std::string_view(&c, 1)); }
  bool Digits() {
    size_t from = at_;
    while (at_ < text_.size() && text_[at_] >= '0' && text_[at_] <= '9') ++at_;
    return at_ > from;
  }

  std::optional<Value> Element(ValType type) {
    Skip();
    bool integer = type == ValType::kI32 || type == ValType::kI64;
    size_t from = at_;
    if (Peek('"')) {
      size_t end = text_.find('"', at_ + 1);
      if (end == std::string_view::npos) return std::nullopt;
      std::string_view inner = text_.substr(at_ + 1, end - at_ - 1);
      for (char c : inner) {
        if (c == '\\' || static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x80) {
          return std::nullopt;
        }
      }
      at_ = end + 1;
      return ParseValue(type, inner);
    }
    // A JSON number: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
    if (Peek('-')) ++at_;
    if (Peek('0')) {
      ++at_;
    } else if (!Digits()) {
      return std::nullopt;
    }
    bool fraction = false;
    if (Peek('.')) {
      ++at_;
      if (!Digits()) return std::nullopt;
      fraction = true;
    }
    if (Peek('e') || Peek('E')) {
      ++at_;
      if (Peek('+') || Peek('-')) ++at_;
      if (!Digits()) return std::nullopt;
      fraction = true;
    }
    if (integer && fraction) return std::nullopt;
    return ParseValue(type, text_.substr(from, at_ - from));
  }

  std::string_view text_;
  const FuncType& type_;
  size_t at_ = 0;
};

void AppendQuoted(std::string& out, std::string_view text) {
  out += '"';
  out += text;
  out += '"';
}

}  // namespace

Result<std::vector<Value>> ParseCallArgs(std::string_view text, const FuncType& type) {
  if (text.empty()) {
    if (type.params.empty()) return std::vector<Value>();
    return MakeError(ErrorCode::kInvalidArgument,
                     "expected " + std::to_string(type.params.size()) + " arguments " + type.ToString() + ", got 0");
  }
  if (auto values = SimpleArgs(text, type).Parse()) return std::move(*values);
  json::basic_parser<ArgsHandler> parser(json::parse_options{}, type);
  json::error_code ec;
  size_t used = parser.write_some(false, text.data(), text.size(), ec);
  if (!ec && used != text.size()) ec = json::make_error_code(json::error::extra_data);
  if (ec) {
    const std::string& why = parser.handler().error;
    return MakeError(ErrorCode::kInvalidArgument, why.empty() ? "malformed JSON body: " + ec.message() : why);
  }
  std::vector<Value>& values = parser.handler().values;
  if (values.size() != type.params.size()) {
    return MakeError(ErrorCode::kInvalidArgument, "expected " + std::to_string(type.params.size()) + " arguments " +
                                                      type.ToString() + ", got " + std::to_string(values.size()));
  }
  return std::move(values);
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
