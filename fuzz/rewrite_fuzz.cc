// libFuzzer target: the module rewriter on whatever keel's reader accepts.
// With every option on, it must either fail cleanly or give a module that
// keel reads back and that SpiderMonkey accepts exactly when it accepts the
// module with only its names renamed (renaming exists to make names
// SpiderMonkey refuses acceptable). A module SpiderMonkey accepts but the
// rewriter cannot decode is a gap in keel's decoder: reported as a crash.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>

#include "engine/module_info.h"
#include "engine/module_rewrite.h"
#include "engine/spidermonkey/sm_engine.h"

namespace {

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "rewrite_fuzz: %s\n", what.c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace keel::engine;
  std::span<const uint8_t> bytes(data, size);
  if (!ReadModuleInfo(bytes)) return 0;
  auto renamed = RewriteModule(bytes, {.rename_names = true});
  if (!renamed) Die("renaming failed on a module keel reads: " + renamed.error().message);
  const auto baseline = sm::CompileUnrewritten(renamed->bytes);

  auto rewritten = RewriteModule(bytes, {.max_memory_pages = 65536,
                                         .rename_names = true,
                                         .float_bits_exports = true,
                                         .float_bits_imports = true,
                                         .export_mutable_globals = true,
                                         .grow_grant = 16,
                                         .scan_code = true});
  if (!rewritten) {
    const keel::Error& error = rewritten.error();
    if (error.message.empty()) Die("rewrite failed without a message");
    if (error.code == keel::ErrorCode::kInvalidModule && baseline) {
      Die("SpiderMonkey accepts a module keel cannot rewrite: " + error.message);
    }
    return 0;
  }
  auto reread = ReadRewrittenModuleInfo(rewritten->bytes);
  if (!reread) Die("the rewritten module does not read back: " + reread.error().message);
  const auto after = sm::CompileUnrewritten(rewritten->bytes);
  if (after.has_value() != baseline.has_value()) {
    Die(std::string("SpiderMonkey ") + (baseline ? "accepted" : "refused") +
        " the module but " + (after ? "accepts" : "refuses") + " it rewritten" +
        (after ? "" : ": " + after.error().message));
  }
  return 0;
}
