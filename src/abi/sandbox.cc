#include "abi/sandbox.h"

#include <cstdio>
#include <cstdlib>

#include "keel/wasi.h"

namespace keel::abi {

PoolOptions SandboxedPoolOptions(PoolOptions base) {
  base.host_state_factory = nullptr;
  auto options = WithWasi(std::move(base), SandboxWasi());
  // The sandbox has no preopen, argument or environment that could fail.
  if (!options) {
    std::fprintf(stderr, "keel: %s\n", options.error().ToString().c_str());
    std::abort();
  }
  return std::move(*options);
}

}  // namespace keel::abi
