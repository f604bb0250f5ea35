#include "base/file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace keel {

Result<std::vector<uint8_t>> ReadAll(int fd) {
  std::vector<uint8_t> out;
  uint8_t buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n == 0) return out;
    if (n < 0) {
      if (errno == EINTR) continue;
      return MakeError(ErrorCode::kInvalidArgument, std::string("read failed: ") + std::strerror(errno));
    }
    out.insert(out.end(), buf, buf + n);
  }
}

Result<std::vector<uint8_t>> ReadFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    return MakeError(err == ENOENT ? ErrorCode::kNotFound : ErrorCode::kInvalidArgument,
                     path + ": " + std::strerror(err));
  }
  auto bytes = ReadAll(fd);
  ::close(fd);
  if (!bytes) return MakeError(bytes.error().code, path + ": " + bytes.error().message);
  return bytes;
}

}  // namespace keel
