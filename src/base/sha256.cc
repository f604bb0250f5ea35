#include "base/sha256.h"

#include <openssl/evp.h>

#include <cstdio>
#include <cstdlib>

namespace keel {

std::array<uint8_t, 32> Sha256(std::span<const uint8_t> data) {
  std::array<uint8_t, 32> digest{};
  unsigned int size = 0;
  // OpenSSL's SHA-256 fails only when its default provider cannot be loaded,
  // which leaves nothing to hash modules with: a broken installation.
  if (EVP_Digest(data.data(), data.size(), digest.data(), &size, EVP_sha256(), nullptr) != 1 ||
      size != digest.size()) {
    std::fprintf(stderr, "keel: OpenSSL's SHA-256 is unavailable\n");
    std::abort();
  }
  return digest;
}

std::string Sha256Hex(std::span<const uint8_t> data) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::array<uint8_t, 32> digest = Sha256(data);
  std::string hex;
  hex.reserve(64);
  for (uint8_t byte : digest) {
    hex.push_back(kHex[byte >> 4]);
    hex.push_back(kHex[byte & 0xf]);
  }
  return hex;
}

}  // namespace keel
