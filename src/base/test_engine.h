// For tests: the engine a suite runs on. ctest runs each engine-independent
// suite once per engine the build has, naming the engine in
// KEEL_TEST_ENGINE ("spidermonkey" or "wasmtime"); unset means SpiderMonkey.
#ifndef KEEL_BASE_TEST_ENGINE_H_
#define KEEL_BASE_TEST_ENGINE_H_

#include <cstdio>
#include <cstdlib>

#include "keel/runtime.h"

namespace keel {

inline EngineKind TestEngine() {
  const char* name = std::getenv("KEEL_TEST_ENGINE");
  if (name == nullptr || *name == '\0') return EngineKind::kSpiderMonkey;
  auto kind = ParseEngineKind(name);
  if (!kind) {
    std::fprintf(stderr, "KEEL_TEST_ENGINE: %s\n", kind.error().message.c_str());
    std::abort();
  }
  return *kind;
}

}  // namespace keel

#endif  // KEEL_BASE_TEST_ENGINE_H_
