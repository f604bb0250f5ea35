#include "server/request_checks.h"

#include <algorithm>
#include <vector>

#include <boost/asio/ip/address.hpp>
#include <boost/beast/core/string.hpp>

#include "server/json_text.h"

namespace keel::server {

namespace {

using boost::beast::iequals;

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

std::string_view View(boost::beast::string_view s) { return {s.data(), s.size()}; }

// The members of every `field` line, in order: "a, b" and a second line
// "c" give a, b, c (RFC 9110 §5.3). Empty members are dropped.
std::vector<std::string_view> ListMembers(const Request& req, http::field field) {
  std::vector<std::string_view> out;
  auto [begin, end] = req.equal_range(field);
  for (auto it = begin; it != end; ++it) {
    std::string_view value = View(it->value());
    while (!value.empty()) {
      size_t comma = value.find(',');
      std::string_view member = Trim(value.substr(0, comma));
      if (!member.empty()) out.push_back(member);
      value = comma == std::string_view::npos ? std::string_view() : value.substr(comma + 1);
    }
  }
  return out;
}

Refusal Bad(std::string message) { return {400, ErrorCode::kInvalidArgument, std::move(message)}; }

std::string Quoted(std::string_view text) { return "'" + ToValidUtf8(text) + "'"; }

std::optional<Refusal> CheckHostFields(const Request& req, const HeaderScan& scan) {
  if (scan.hosts > 1) return Bad("more than one Host header");
  if (scan.hosts == 0 && req.version() >= 11) return Bad("an HTTP/1.1 request needs a Host header");
  return std::nullopt;
}

bool LoopbackAddress(std::string_view text) {
  boost::system::error_code ec;
  auto address = boost::asio::ip::make_address(std::string(text), ec);
  if (ec) return false;
  if (address.is_v6() && address.to_v6().is_v4_mapped()) {
    return boost::asio::ip::make_address_v4(boost::asio::ip::v4_mapped, address.to_v6()).is_loopback();
  }
  return address.is_loopback();
}

}  // namespace

HeaderScan ScanHeader(const Request& req) {
  HeaderScan scan;
  for (const auto& field : req) {
    switch (field.name()) {
      case http::field::host:
        if (scan.hosts++ == 0) scan.host = View(field.value());
        break;
      case http::field::transfer_encoding: scan.transfer_encoding = true; break;
      case http::field::content_length: scan.content_length = true; break;
      case http::field::expect: scan.expect = true; break;
      case http::field::origin:
        scan.origin = true;
        scan.origin_value = View(field.value());
        break;
      default: break;
    }
  }
  return scan;
}

std::optional<Refusal> CheckFraming(const Request& req, const HeaderScan& scan) {
  if (auto refusal = CheckHostFields(req, scan)) return refusal;
  if (!scan.transfer_encoding) return std::nullopt;
  if (req.version() < 11) return Bad("Transfer-Encoding is not allowed in an HTTP/1.0 request");
  if (scan.content_length) return Bad("a request must not carry both Transfer-Encoding and Content-Length");
  std::vector<std::string_view> codings = ListMembers(req, http::field::transfer_encoding);
  if (codings.empty()) return Bad("empty Transfer-Encoding");
  for (size_t i = 0; i + 1 < codings.size(); ++i) {
    if (iequals(codings[i], "chunked")) return Bad("chunked must be the final transfer coding, and appear once");
  }
  if (!iequals(codings.back(), "chunked")) {
    return Bad("the final transfer coding must be chunked, not " + Quoted(codings.back()));
  }
  if (codings.size() > 1) {
    std::string others;
    for (size_t i = 0; i + 1 < codings.size(); ++i) others += (i ? ", " : "") + Quoted(codings[i]);
    return Refusal{501, ErrorCode::kInvalidArgument, "transfer codings other than chunked are not implemented: " + others};
  }
  return std::nullopt;
}

std::optional<Refusal> CheckExpect(const Request& req, const HeaderScan& scan) {
  if (!scan.expect) return std::nullopt;
  for (std::string_view member : ListMembers(req, http::field::expect)) {
    if (!iequals(member, "100-continue")) {
      return Refusal{417, ErrorCode::kInvalidArgument,
                     "expectation " + Quoted(member) + " is not supported (only 100-continue is)"};
    }
  }
  return std::nullopt;
}

bool IsLoopbackAuthority(std::string_view host, uint16_t port) {
  std::string_view name = host;
  std::string_view port_text;
  if (host.starts_with('[')) {
    size_t close = host.find(']');
    if (close == std::string_view::npos) return false;
    name = host.substr(1, close - 1);
    std::string_view after = host.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return false;
      port_text = after.substr(1);
    }
  } else {
    size_t colon = host.find(':');
    if (colon != std::string_view::npos) {
      name = host.substr(0, colon);
      port_text = host.substr(colon + 1);
    }
  }
  unsigned given = 80;
  if (!port_text.empty()) {
    if (port_text.size() > 5 || !std::all_of(port_text.begin(), port_text.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      return false;
    }
    given = 0;
    for (char c : port_text) given = given * 10 + static_cast<unsigned>(c - '0');
  }
  if (given != port) return false;
  bool bracketed = host.starts_with('[');
  if (!bracketed && iequals(name, "localhost")) return true;
  // A bracketed name is IPv6; an unbracketed one must not be.
  if (bracketed != (name.find(':') != std::string_view::npos)) return false;
  return name == "127.0.0.1" || name == "::1" || LoopbackAddress(name);
}

std::optional<Refusal> CheckLocalRequest(const Request& req, const HeaderScan& scan, uint16_t port) {
  std::string_view host = scan.host;
  // HTTP/1.0 clients may leave Host out; browsers never do.
  if (!(host.empty() && req.version() < 11) && !IsLoopbackAuthority(host, port)) {
    return Refusal{403, ErrorCode::kInvalidArgument,
                   "Host " + Quoted(host) + " is not this service: without a token it serves only requests for " +
                       "localhost or a loopback address with port " + std::to_string(port)};
  }
  http::verb method = req.method();
  bool safe = method == http::verb::get || method == http::verb::head || method == http::verb::options;
  if (safe || !scan.origin) return std::nullopt;
  std::string_view origin = scan.origin_value;
  constexpr std::string_view kScheme = "http://";
  bool own = !host.empty() && origin.size() == kScheme.size() + host.size() &&
             iequals(origin.substr(0, kScheme.size()), kScheme) && iequals(origin.substr(kScheme.size()), host);
  if (!own) {
    return Refusal{403, ErrorCode::kInvalidArgument,
                   "cross-origin request refused: Origin " + Quoted(origin) + " is not this service's (http://" +
                       ToValidUtf8(host) + ")"};
  }
  return std::nullopt;
}

}  // namespace keel::server
