#include "server/http.h"

#include <time.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdio>

#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>

#include "server/json_text.h"

namespace keel::server {

namespace json = boost::json;

int StatusForError(const Error& error) {
  switch (error.code) {
    case ErrorCode::kInvalidArgument: return 400;
    case ErrorCode::kNotFound: return 404;
    case ErrorCode::kAlreadyExists: return 409;
    case ErrorCode::kInvalidModule: return 400;
    case ErrorCode::kLinkError: return 400;
    case ErrorCode::kTrap: return 422;
    case ErrorCode::kInterrupted: return 504;
    case ErrorCode::kCancelled: return 409;
    case ErrorCode::kDeadlineExceeded: return 504;
    case ErrorCode::kOverloaded: return 429;
    case ErrorCode::kUnavailable: return 503;
    case ErrorCode::kShuttingDown: return 503;
    case ErrorCode::kResourceExhausted: return 413;
    case ErrorCode::kFailedPrecondition: return 409;
    case ErrorCode::kInternal: return 500;
  }
  return 500;
}

int StatusForCallError(const Error& error) {
  if (error.code == ErrorCode::kInvalidArgument || error.code == ErrorCode::kResourceExhausted) return 422;
  return StatusForError(error);
}

Response JsonResponse(int status, std::string body) {
  Response res(static_cast<http::status>(status), 11);
  res.set(http::field::content_type, "application/json");
  // Serialized JSON holds raw bytes >= 0x80 only inside strings, so
  // replacing invalid sequences keeps it JSON.
  res.body() = IsValidUtf8(body) ? std::move(body) : ToValidUtf8(body);
  res.body() += '\n';
  return res;
}

Response JsonResponse(int status, const json::value& body) { return JsonResponse(status, json::serialize(body)); }

Response ErrorResponse(int status, const Error& error, json::object extra, std::chrono::seconds retry_after) {
  json::object e = std::move(extra);
  e["code"] = ToString(error.code);
  e["message"] = error.message;
  if (error.code == ErrorCode::kTrap) {
    e["trap"] = ToString(error.trap);
    if (!error.backtrace.empty()) e["backtrace"] = error.backtrace;
    if (error.trap == TrapKind::kExit) e["exit_code"] = error.exit_code;
  }
  Response res = JsonResponse(status, json::value{{"error", std::move(e)}});
  if (status == 429 || status == 503) {
    res.set(http::field::retry_after, std::to_string(std::max<int64_t>(1, retry_after.count())));
  }
  return res;
}

Response ErrorResponse(const Error& error, json::object extra) {
  return ErrorResponse(StatusForError(error), error, std::move(extra));
}

bool BearerMatches(std::string_view authorization, std::string_view token) {
  constexpr std::string_view kScheme = "bearer ";
  if (authorization.size() < kScheme.size()) return false;
  for (size_t i = 0; i < kScheme.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(authorization[i])) != kScheme[i]) return false;
  }
  std::string_view given = authorization.substr(kScheme.size());
  // Every byte of the token is compared whatever the input, so the time
  // taken does not tell how much of a guess was right.
  unsigned diff = given.size() == token.size() ? 0 : 1;
  for (size_t i = 0; i < token.size(); ++i) {
    unsigned char g = i < given.size() ? static_cast<unsigned char>(given[i]) : 0;
    diff |= g ^ static_cast<unsigned char>(token[i]);
  }
  return diff == 0 && !token.empty();
}

Result<boost::asio::ip::tcp::endpoint> ParseListenAddress(std::string_view text) {
  auto bad = [&](std::string_view why) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "invalid listen address '" + std::string(text) + "': " + std::string(why));
  };
  size_t colon = text.rfind(':');
  if (colon == std::string_view::npos) return bad("expected ADDR:PORT");
  std::string_view host = text.substr(0, colon);
  std::string_view port_text = text.substr(colon + 1);
  unsigned port = 0;
  if (port_text.empty() || port_text.size() > 5 ||
      !std::all_of(port_text.begin(), port_text.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return bad("the port must be a number");
  }
  for (char c : port_text) port = port * 10 + static_cast<unsigned>(c - '0');
  if (port > 65535) return bad("the port must be at most 65535");
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (host == "localhost") host = "127.0.0.1";
  boost::system::error_code ec;
  auto address = boost::asio::ip::make_address(std::string(host), ec);
  if (ec) return bad("not an IP address");
  return boost::asio::ip::tcp::endpoint(address, static_cast<uint16_t>(port));
}

namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

std::optional<std::string> PercentDecode(std::string_view text) {
  if (text.find('%') == std::string_view::npos) return std::string(text);
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '%') {
      out += text[i];
      continue;
    }
    if (i + 2 >= text.size()) return std::nullopt;
    int hi = HexValue(text[i + 1]), lo = HexValue(text[i + 2]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out += static_cast<char>(hi * 16 + lo);
    i += 2;
  }
  return out;
}

Result<std::optional<std::string>> QueryParam(std::string_view query, std::string_view key) {
  std::optional<std::string> found;
  while (!query.empty()) {
    size_t amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    size_t eq = pair.find('=');
    std::string text(pair.substr(eq == std::string_view::npos ? pair.size() : eq + 1));
    std::replace(text.begin(), text.end(), '+', ' ');
    auto value = PercentDecode(text);
    auto name = PercentDecode(pair.substr(0, eq));
    if (!value || !name) {
      return MakeError(ErrorCode::kInvalidArgument,
                       "malformed percent-escape in query parameter '" + ToValidUtf8(pair.substr(0, eq)) + "'");
    }
    if (*name == key && !found) found = std::move(*value);
  }
  return found;
}

Result<std::vector<uint8_t>> DecodeBase64(std::string_view text) {
  static constexpr std::array<int8_t, 256> kTable = [] {
    std::array<int8_t, 256> t{};
    t.fill(-1);
    constexpr std::string_view kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < kAlphabet.size(); ++i) t[static_cast<uint8_t>(kAlphabet[i])] = static_cast<int8_t>(i);
    return t;
  }();
  auto bad = [] { return MakeError(ErrorCode::kInvalidArgument, "input_base64 is not valid base64"); };
  if (text.size() % 4 != 0) return bad();
  std::vector<uint8_t> out;
  out.reserve(text.size() / 4 * 3);
  for (size_t i = 0; i < text.size(); i += 4) {
    bool last = i + 4 == text.size();
    int v[4];
    int pad = 0;
    for (int k = 0; k < 4; ++k) {
      char c = text[i + k];
      if (c == '=' && last && k >= 2) {
        v[k] = 0;
        ++pad;
        continue;
      }
      if (pad > 0) return bad();  // data after padding
      v[k] = kTable[static_cast<uint8_t>(c)];
      if (v[k] < 0) return bad();
    }
    uint32_t n = (uint32_t(v[0]) << 18) | (uint32_t(v[1]) << 12) | (uint32_t(v[2]) << 6) | uint32_t(v[3]);
    out.push_back(static_cast<uint8_t>(n >> 16));
    if (pad < 2) out.push_back(static_cast<uint8_t>(n >> 8));
    if (pad < 1) out.push_back(static_cast<uint8_t>(n));
  }
  return out;
}

std::string FormatTime(std::chrono::system_clock::time_point t) {
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
  time_t seconds = static_cast<time_t>(ms / 1000);
  struct tm tm;
  gmtime_r(&seconds, &tm);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms % 1000));
  return buf;
}

std::string Quote(std::string_view text) { return json::serialize(json::string(text)); }

}  // namespace keel::server
