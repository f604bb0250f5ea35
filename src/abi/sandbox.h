// Pool options for untrusted guests, for keel's tests and benchmarks:
// WithWasi(base, SandboxWasi()) (keel/wasi.h) without its Result, since
// the sandbox cannot fail; `base`'s own host state factory is dropped.
#ifndef KEEL_ABI_SANDBOX_H_
#define KEEL_ABI_SANDBOX_H_

#include "keel/runtime.h"

namespace keel::abi {

// `base` with its linker and host state factory replaced by the sandbox's.
PoolOptions SandboxedPoolOptions(PoolOptions base = {});

}  // namespace keel::abi

#endif  // KEEL_ABI_SANDBOX_H_
