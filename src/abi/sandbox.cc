#include "abi/sandbox.h"

#include "abi/wasi.h"

namespace keel::abi {

PoolOptions SandboxedPoolOptions(PoolOptions base) {
  auto linker = std::make_shared<Linker>();
  AddWasiToLinker(*linker);
  base.linker = std::move(linker);
  base.host_state_factory = []() -> std::unique_ptr<HostState> {
    WasiConfig config;
    config.stderr_io = WasiStdio::Capture(4096);
    auto ctx = WasiContext::Create(config);
    return ctx ? std::move(*ctx) : nullptr;
  };
  return base;
}

}  // namespace keel::abi
