// SHA-256 (FIPS 180-4) through OpenSSL, for content-addressing module bytes.
#ifndef KEEL_BASE_SHA256_H_
#define KEEL_BASE_SHA256_H_

#include <array>
#include <cstdint>
#include <span>
#include <string>

namespace keel {

// The 32-byte digest of `data`. Pure function; thread-safe.
std::array<uint8_t, 32> Sha256(std::span<const uint8_t> data);

// The digest as 64 lowercase hex characters.
std::string Sha256Hex(std::span<const uint8_t> data);

}  // namespace keel

#endif  // KEEL_BASE_SHA256_H_
