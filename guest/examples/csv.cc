// CSV (RFC 4180) to JSON, in C++ with keel.hpp.
//
// Exports:
//   to_json: CSV whose first record is the header -> a JSON array with one
//            object per record, {"<column>": "<field>", ...}, keys in
//            header order, every value a string;
//   columns: the header as a JSON array of strings.
//
// Fields are separated by commas; records end with LF or CRLF; a quoted
// field may hold commas, line breaks and "" for a quote. A final line
// break is optional, and empty lines between records are skipped. Errors
// fail the call with the line: an unterminated quote, text after a closing
// quote, a record whose field count differs from the header's, a duplicate
// or empty column name.
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "keel.hpp"

namespace {

using Record = std::vector<std::string>;

class Reader {
 public:
  explicit Reader(std::string_view text) : text_(text) {}

  // The next record into `fields`; false at the end of the input.
  bool Next(Record& fields) {
    fields.clear();
    while (pos_ < text_.size() && (text_[pos_] == '\n' || text_[pos_] == '\r')) SkipLineBreak();
    if (pos_ >= text_.size()) return false;
    record_line_ = line_;
    for (;;) {
      fields.push_back(Field());
      if (pos_ >= text_.size()) return true;
      if (text_[pos_] == ',') {
        ++pos_;
        continue;
      }
      SkipLineBreak();
      return true;
    }
  }

  // The line on which the last record started (1-based).
  int record_line() const { return record_line_; }

 private:
  std::string Field() {
    if (pos_ < text_.size() && text_[pos_] == '"') return Quoted();
    size_t end = text_.find_first_of(",\r\n", pos_);
    if (end == std::string_view::npos) end = text_.size();
    std::string field(text_.substr(pos_, end - pos_));
    if (field.find('"') != std::string::npos) FailAt(line_, "quote inside an unquoted field");
    pos_ = end;
    return field;
  }

  std::string Quoted() {
    int start_line = line_;
    std::string field;
    ++pos_;
    for (;;) {
      size_t quote = text_.find('"', pos_);
      if (quote == std::string_view::npos) FailAt(start_line, "unterminated quoted field");
      std::string_view chunk = text_.substr(pos_, quote - pos_);
      for (char c : chunk) line_ += c == '\n';
      field.append(chunk);
      pos_ = quote + 1;
      if (pos_ < text_.size() && text_[pos_] == '"') {
        field.push_back('"');
        ++pos_;
        continue;
      }
      if (pos_ < text_.size() && text_[pos_] != ',' && text_[pos_] != '\r' && text_[pos_] != '\n') {
        FailAt(line_, "text after a closing quote");
      }
      return field;
    }
  }

  void SkipLineBreak() {
    if (text_[pos_] == '\r') ++pos_;
    if (pos_ < text_.size() && text_[pos_] == '\n') ++pos_;
    ++line_;
  }

  [[noreturn]] static void FailAt(int line, std::string_view what) {
    keel::Fail("line " + std::to_string(line) + ": " + std::string(what));
  }

  std::string_view text_;
  size_t pos_ = 0;
  int line_ = 1;
  int record_line_ = 1;
};

void AppendJsonString(std::string& out, std::string_view s) {
  out.push_back('"');
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char escaped[8];
          std::snprintf(escaped, sizeof escaped, "\\u%04x", c);
          out += escaped;
        } else {
          out.push_back(c);
        }
    }
  }
  out.push_back('"');
}

std::string JsonArray(const Record& values) {
  std::string out = "[";
  for (size_t i = 0; i < values.size(); ++i) {
    if (i > 0) out.push_back(',');
    AppendJsonString(out, values[i]);
  }
  out.push_back(']');
  return out;
}

// Reads and checks the header; an empty input has none.
bool ReadHeader(Reader& reader, Record& header) {
  if (!reader.Next(header)) return false;
  for (size_t i = 0; i < header.size(); ++i) {
    std::string where = "line " + std::to_string(reader.record_line()) + ": ";
    if (header[i].empty()) keel::Fail(where + "column " + std::to_string(i + 1) + " has no name");
    for (size_t j = 0; j < i; ++j) {
      if (header[j] == header[i]) keel::Fail(where + "duplicate column \"" + header[i] + "\"");
    }
  }
  return true;
}

std::string ToJson(std::string_view csv) {
  Reader reader(csv);
  Record header;
  if (!ReadHeader(reader, header)) return "[]";
  std::string out = "[";
  Record fields;
  for (bool first = true; reader.Next(fields); first = false) {
    if (fields.size() != header.size()) {
      keel::Fail("line " + std::to_string(reader.record_line()) + ": " + std::to_string(fields.size()) +
                 " fields, the header has " + std::to_string(header.size()));
    }
    out += first ? "{" : ",{";
    for (size_t i = 0; i < fields.size(); ++i) {
      if (i > 0) out.push_back(',');
      AppendJsonString(out, header[i]);
      out.push_back(':');
      AppendJsonString(out, fields[i]);
    }
    out.push_back('}');
  }
  out.push_back(']');
  return out;
}

std::string Columns(std::string_view csv) {
  Reader reader(csv);
  Record header;
  return ReadHeader(reader, header) ? JsonArray(header) : "[]";
}

}  // namespace

KEEL_CXX_EXPORT(to_json, ToJson)
KEEL_CXX_EXPORT(columns, Columns)
