#include "base/names.h"

#include <charconv>
#include <cstdint>
#include <cstdio>

#include "base/utf8.h"

namespace keel {

namespace {

bool IsPlainChar(unsigned char c) { return c > 0x20 && c < 0x7f && c != '"' && c != '\\'; }

bool IsPlain(std::string_view name) {
  if (name.empty()) return false;
  for (unsigned char c : name) {
    if (!IsPlainChar(c)) return false;
  }
  return true;
}

void AppendUtf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xc0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xe0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    out += static_cast<char>(0xf0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  }
}

std::string Literal(std::string_view name) {
  std::string out = "\"";
  char buf[16];
  for (size_t i = 0; i < name.size();) {
    const unsigned char c = static_cast<unsigned char>(name[i]);
    if (c >= 0x80) {
      const Utf8Sequence sequence = DecodeUtf8(name, i);
      if (sequence.length == 0) {  // not UTF-8: the byte itself
        std::snprintf(buf, sizeof buf, "\\%02x", c);
        out += buf;
        ++i;
      } else {
        std::snprintf(buf, sizeof buf, "\\u{%x}", sequence.code_point);
        out += buf;
        i += sequence.length;
      }
      continue;
    }
    switch (c) {
      case '\t': out += "\\t"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      default:
        if (c < 0x20 || c == 0x7f) {
          std::snprintf(buf, sizeof buf, "\\%02x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
    ++i;
  }
  return out + "\"";
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// One escape after the backslash at text[i]; appends it and returns the
// index after it, or 0 when malformed.
size_t ReadEscape(std::string_view text, size_t i, std::string& out) {
  if (i + 1 >= text.size()) return 0;
  const char e = text[i + 1];
  switch (e) {
    case 't': out += '\t'; return i + 2;
    case 'n': out += '\n'; return i + 2;
    case 'r': out += '\r'; return i + 2;
    case '"': out += '"'; return i + 2;
    case '\'': out += '\''; return i + 2;
    case '\\': out += '\\'; return i + 2;
    case 'u': {
      const size_t close = text.find('}', i);
      if (i + 2 >= text.size() || text[i + 2] != '{' || close == std::string_view::npos ||
          close == i + 3) {
        return 0;
      }
      uint32_t cp = 0;
      auto [end, ec] = std::from_chars(text.data() + i + 3, text.data() + close, cp, 16);
      if (ec != std::errc() || end != text.data() + close || cp > 0x10ffff ||
          (cp >= 0xd800 && cp <= 0xdfff)) {
        return 0;
      }
      AppendUtf8(out, cp);
      return close + 1;
    }
  }
  if (i + 2 >= text.size()) return 0;
  const int hi = HexDigit(e);
  const int lo = HexDigit(text[i + 2]);
  if (hi < 0 || lo < 0) return 0;
  out += static_cast<char>(hi * 16 + lo);
  return i + 3;
}

}  // namespace

std::string QuoteName(std::string_view name) {
  return IsPlain(name) ? std::string(name) : Literal(name);
}

std::string MessageName(std::string_view name) {
  return IsPlain(name) ? "'" + std::string(name) + "'" : Literal(name);
}

std::optional<std::string> ParseName(std::string_view text) {
  if (text.empty() || text[0] != '"') return std::string(text);
  if (text.size() < 2 || text.back() != '"') return std::nullopt;
  std::string out;
  const size_t close = text.size() - 1;
  for (size_t i = 1; i < close;) {
    if (text[i] == '\\') {
      i = ReadEscape(text.substr(0, close), i, out);
      if (i == 0) return std::nullopt;
    } else if (text[i] == '"') {
      return std::nullopt;  // a quote must be escaped
    } else {
      out += text[i++];
    }
  }
  if (!IsValidUtf8(out)) return std::nullopt;
  return out;
}

}  // namespace keel
