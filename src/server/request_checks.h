// Checks of a request's header before anything of it is served: message
// framing (RFC 9112 §6), expectations (RFC 9110 §10.1.1), and whose request
// it is (Host and Origin, against DNS rebinding and cross-site requests).
#ifndef KEEL_SERVER_REQUEST_CHECKS_H_
#define KEEL_SERVER_REQUEST_CHECKS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "keel/status.h"
#include "server/http.h"

namespace keel::server {

// Why a request is refused: its status and error. Framing refusals always
// close the connection (the rest of the stream cannot be trusted).
struct Refusal {
  int status = 400;
  ErrorCode code = ErrorCode::kInvalidArgument;
  std::string message;
};

// The fields the checks read, found in one pass over the header.
struct HeaderScan {
  size_t hosts = 0;
  std::string_view host;  // the first
  bool transfer_encoding = false;
  bool content_length = false;
  bool expect = false;
  bool origin = false;
  std::string_view origin_value;
};
HeaderScan ScanHeader(const Request& req);

// Transfer-Encoding is accepted only on HTTP/1.1, without Content-Length,
// with `chunked` as its final coding and only once: anything else cannot be
// framed reliably (400). Codings before `chunked` (e.g. gzip) are not
// implemented (501). HTTP/1.1 needs exactly one Host (400).
std::optional<Refusal> CheckFraming(const Request& req, const HeaderScan& scan);

// Only `Expect: 100-continue` is understood (417 otherwise); HTTP/1.0
// requests have it ignored.
std::optional<Refusal> CheckExpect(const Request& req, const HeaderScan& scan);

// True if `host` (a Host header, or an origin's host[:port]) names this
// machine's loopback interface: a 127.0.0.0/8 or ::1 literal, or
// `localhost`, with `port` (an absent port means 80).
bool IsLoopbackAuthority(std::string_view host, uint16_t port);

// For a service without a token, which only loopback clients should reach:
// the Host must be a loopback authority with the listening port (403
// otherwise: DNS rebinding), and state-changing requests (other than GET,
// HEAD and OPTIONS) with an Origin must come from the service's own origin
// (403 otherwise: a web page posting to localhost).
std::optional<Refusal> CheckLocalRequest(const Request& req, const HeaderScan& scan, uint16_t port);

}  // namespace keel::server

#endif  // KEEL_SERVER_REQUEST_CHECKS_H_
