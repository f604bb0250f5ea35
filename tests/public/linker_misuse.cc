// Probes for keel_typed_linker_misuse_test: each KEEL_MISUSE case defines a
// host function Linker::Define must refuse at compile time; case "ok" is a
// well-formed one, so that a failure of the others is not a broken probe.
#include <cstdint>
#include <string>

#include "keel/host.h"

namespace {

[[maybe_unused]] void Probe(keel::Linker& linker) {
#if defined(KEEL_MISUSE_OK)
  linker.Define("m", "ok", [](keel::Caller&, int32_t x, uint64_t) -> int32_t { return x; });
#elif defined(KEEL_MISUSE_MUTABLE)
  linker.Define("m", "counter", [n = 0](int32_t x) mutable { return x + n++; });
#elif defined(KEEL_MISUSE_BOOL_PARAM)
  linker.Define("m", "flag", [](bool) {});
#elif defined(KEEL_MISUSE_SHORT_RESULT)
  linker.Define("m", "narrow", []() -> int16_t { return 0; });
#elif defined(KEEL_MISUSE_STRING_PARAM)
  linker.Define("m", "text", [](std::string) {});
#else
#error "no KEEL_MISUSE_ case defined"
#endif
}

}  // namespace
