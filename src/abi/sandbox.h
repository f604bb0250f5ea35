// Pool options for untrusted guests: WASI preview1 with no preopened
// directories (no host files), no stdin, stdout discarded and a small
// stderr capture for error messages.
#ifndef KEEL_ABI_SANDBOX_H_
#define KEEL_ABI_SANDBOX_H_

#include "keel/runtime.h"

namespace keel::abi {

// `base` with its linker and host state factory replaced by the sandbox's.
PoolOptions SandboxedPoolOptions(PoolOptions base = {});

}  // namespace keel::abi

#endif  // KEEL_ABI_SANDBOX_H_
