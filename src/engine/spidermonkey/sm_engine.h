// The SpiderMonkey backend's entry point. No SpiderMonkey type appears here.
#ifndef KEEL_ENGINE_SPIDERMONKEY_SM_ENGINE_H_
#define KEEL_ENGINE_SPIDERMONKEY_SM_ENGINE_H_

#include "engine/engine.h"

namespace keel::engine {

// The process-wide SpiderMonkey engine, started on first use; never
// destroyed (SpiderMonkey cannot start again after shutting down).
Engine& SpiderMonkeyEngine();

}  // namespace keel::engine

#endif  // KEEL_ENGINE_SPIDERMONKEY_SM_ENGINE_H_
