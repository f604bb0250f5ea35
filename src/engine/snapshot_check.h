// Whether a snapshot can cover all the state a module's instances carry
// from call to call, judged from the module's bytes.
//
// A reset restores linear memory, the mutable globals keel can reach
// (exported ones) and the host state. It cannot restore a table the code
// changed, a segment it dropped, or a mutable global it does not export.
// Until keel's module rewriter is wired in (it exports every mutable global
// under reserved names and reports the code's table and segment
// instructions exactly), this check stands in for it, conservatively.
#ifndef KEEL_ENGINE_SNAPSHOT_CHECK_H_
#define KEEL_ENGINE_SNAPSHOT_CHECK_H_

#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "engine/module_info.h"

namespace keel::engine {

// Why instances of `module` (valid, described by `info`) cannot be reset;
// nullopt when nothing stands in the way. Refused:
//  - a mutable global that is not exported;
//  - code that may hold table.set, table.grow, table.fill, table.copy,
//    table.init, elem.drop, memory.init or data.drop. Modules without tables,
//    element segments and a data count section cannot (validation requires
//    them); otherwise every byte sequence in the code section that could
//    encode one of them counts, immediates included.
std::optional<std::string> SnapshotBlocker(std::span<const uint8_t> module,
                                           const ModuleInfo& info);

}  // namespace keel::engine

#endif  // KEEL_ENGINE_SNAPSHOT_CHECK_H_
