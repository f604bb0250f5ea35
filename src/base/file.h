// Small file helpers shared by the CLI, the service and tests.
#ifndef KEEL_BASE_FILE_H_
#define KEEL_BASE_FILE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "keel/status.h"

namespace keel {

// The whole file; kNotFound or kInvalidArgument naming the path and errno.
[[nodiscard]] Result<std::vector<uint8_t>> ReadFile(const std::string& path);

// All of a file descriptor's bytes until EOF (e.g. stdin).
[[nodiscard]] Result<std::vector<uint8_t>> ReadAll(int fd);

}  // namespace keel

#endif  // KEEL_BASE_FILE_H_
