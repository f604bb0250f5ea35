// HTTP plumbing shared by the listener and the API handlers: message types,
// JSON error bodies, status codes for keel errors, auth, addresses.
#ifndef KEEL_SERVER_HTTP_H_
#define KEEL_SERVER_HTTP_H_

#include <chrono>
#include <cstdint>
#include <memory_resource>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/http.hpp>
#include <boost/json/object.hpp>

#include "keel/status.h"

namespace keel::server {

namespace http = boost::beast::http;
// A request's fields are allocated from its connection's arena (one
// allocation per field otherwise, on the hottest path).
using FieldsAllocator = std::pmr::polymorphic_allocator<char>;
using Request = http::request<http::vector_body<uint8_t>, http::basic_fields<FieldsAllocator>>;
using Response = http::response<http::string_body>;

// The HTTP status for an error returned when a request is refused (bad
// input, unknown names, admission control).
int StatusForError(const Error& error);
// The HTTP status for an error a call resolved with: like StatusForError,
// except that byte-ABI violations (kInvalidArgument, kResourceExhausted)
// are the guest's fault, not the client's, and so 422 like traps.
int StatusForCallError(const Error& error);

// {"error": {"code": "not_found", "message": "...", ...}}; traps add
// "trap", "backtrace" and (for proc_exit) "exit_code". `extra` members go
// into the error object too. 429 and 503 carry Retry-After.
Response ErrorResponse(int status, const Error& error, boost::json::object extra = {},
                       std::chrono::seconds retry_after = std::chrono::seconds(1));
Response ErrorResponse(const Error& error, boost::json::object extra = {});
// `body` goes out as valid UTF-8: bytes that are not (from names or text a
// client sent, quoted in a message) are replaced by U+FFFD.
Response JsonResponse(int status, const boost::json::value& body);
Response JsonResponse(int status, std::string body);

// Constant-time check of an Authorization header against the token:
// "Bearer <token>" exactly (scheme case-insensitive).
bool BearerMatches(std::string_view authorization, std::string_view token);

// "ADDR:PORT" with ADDR an IPv4 address, [IPv6] or localhost.
[[nodiscard]] Result<boost::asio::ip::tcp::endpoint> ParseListenAddress(std::string_view text);

// "%41b" -> "Ab"; nullopt for malformed escapes.
std::optional<std::string> PercentDecode(std::string_view text);
// The value of `key` in a query string ("a=1&b=2"), percent-decoded;
// nullopt if absent; kInvalidArgument naming the parameter for a malformed
// escape (in any parameter: a query that cannot be read is not guessed at).
[[nodiscard]] Result<std::optional<std::string>> QueryParam(std::string_view query, std::string_view key);

// Standard base64 (RFC 4648, with padding; whitespace not allowed).
[[nodiscard]] Result<std::vector<uint8_t>> DecodeBase64(std::string_view text);

// RFC 3339 UTC with milliseconds, e.g. 2024-05-01T12:00:00.123Z.
std::string FormatTime(std::chrono::system_clock::time_point t);

// `text` as a JSON string literal (quoted and escaped), for logs.
std::string Quote(std::string_view text);

}  // namespace keel::server

#endif  // KEEL_SERVER_HTTP_H_
