#include <cstdio>

#include "base/file.h"
#include "base/names.h"
#include "cli/commands.h"
#include "engine/module_info.h"

namespace keel::cli {

int Inspect(const InspectArgs& args) {
  auto bytes = ReadFile(args.module_path);
  if (!bytes) {
    std::fprintf(stderr, "keel: %s\n", bytes.error().message.c_str());
    return kExitNoInput;
  }
  auto info = engine::ReadModuleInfo(*bytes);
  if (!info) {
    std::fprintf(stderr, "keel: %s: %s\n", args.module_path.c_str(), info.error().message.c_str());
    return kExitBadModule;
  }
  // Names print as themselves or as string literals ("" , "a\00b"): the
  // form `keel run --invoke` reads back (base/names.h).
  std::printf("imports:\n");
  for (const auto& imp : info->imports) {
    std::printf("  %s.%s: %s\n", QuoteName(imp.module).c_str(), QuoteName(imp.name).c_str(),
                engine::Describe(imp).c_str());
  }
  std::printf("exports:\n");
  for (const auto& exp : info->exports) {
    std::printf("  %s: %s\n", QuoteName(exp.name).c_str(), engine::Describe(exp).c_str());
  }
  return kExitOk;
}

}  // namespace keel::cli
