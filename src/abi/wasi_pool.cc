// keel/wasi.h: WASI options turned into pool options.
#include <memory>

#include "abi/wasi.h"
#include "keel/wasi.h"

namespace keel {

WasiOptions SandboxWasi() {
  WasiOptions wasi;
  wasi.stderr_io = WasiStdio::Capture(4096);
  return wasi;
}

Result<PoolOptions> WithWasi(PoolOptions base, WasiOptions wasi) {
  if (base.host_state_factory) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "WithWasi: the pool options already have a host_state_factory; an instance's "
                     "host state is its WASI state (use CallOptions::context for per-call data)");
  }
  // The same checks as every instance's, made once now: the error names
  // what is wrong before any instance is built.
  if (auto probe = abi::WasiContext::Create(wasi); !probe) return MakeError(probe.error());
  auto linker = base.linker ? std::make_shared<Linker>(*base.linker) : std::make_shared<Linker>();
  abi::AddWasiToLinker(*linker);
  base.linker = std::move(linker);
  base.host_state_factory = [wasi = std::make_shared<const WasiOptions>(std::move(wasi))]()
      -> std::unique_ptr<HostState> {
    // Fails only if a preopen's directory went away since WithWasi: the
    // instance then has no WASI state and its WASI calls fail.
    auto context = abi::WasiContext::Create(*wasi);
    return context ? std::move(*context) : nullptr;
  };
  return base;
}

}  // namespace keel
