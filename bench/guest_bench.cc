// keel-guest-bench: per-call cost of byte calls into guests written with
// each SDK, one JSON object per line:
//   {"metric": NAME, "value": MICROSECONDS, "unit": "us"}
// Calls run one after another (submit, wait) on one worker and one
// instance, so each figure is the whole round trip: queue, copy in, guest
// code, copy out, post-return, completion. The floor is the C SDK's
// zero-copy echo of an empty input. `--quick` runs fewer calls.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "abi/sandbox.h"
#include "base/file.h"
#include "keel/runtime.h"

namespace keel {
namespace {

using namespace std::chrono_literals;

struct Case {
  const char* metric;
  const char* module;
  const char* export_name;
  std::string input;
};

std::string Markdown(size_t bytes) {
  std::string text;
  for (int i = 0; text.size() < bytes; ++i) {
    text += "## Section " + std::to_string(i) + "\n\nSome *emphasis*, `code` and a [link](https://example.org/" +
            std::to_string(i) + ").\n\n- item one\n- item **two**\n\n";
  }
  text.resize(bytes);
  return text;
}

// Mean microseconds per call over `calls`, after a warm-up.
Result<double> PerCall(Runtime& runtime, const Case& c, int calls) {
  auto bytes = ReadFile(std::string(KEEL_GUEST_DIR) + "/" + c.module + ".wasm");
  if (!bytes) return MakeError(bytes.error());
  auto module = runtime.Compile(*bytes, {.name = c.module});
  if (!module) return MakeError(module.error());
  auto pool = runtime.CreatePool(*module, abi::SandboxedPoolOptions({.instances = 1}));
  if (!pool) return MakeError(pool.error());
  std::vector<uint8_t> input(c.input.begin(), c.input.end());
  auto once = [&]() -> Result<void> {
    auto call = (*pool)->SubmitBytes(c.export_name, input, {.timeout = 10s});
    if (!call) return MakeError(call.error());
    if (const CallResult& r = call->Wait(); !r) return MakeError(r.error());
    return {};
  };
  for (int i = 0; i < calls / 10 + 10; ++i) {
    if (auto ok = once(); !ok) return MakeError(ok.error());
  }
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < calls; ++i) {
    if (auto ok = once(); !ok) return MakeError(ok.error());
  }
  std::chrono::duration<double, std::micro> took = std::chrono::steady_clock::now() - start;
  (*pool)->Close();
  return took.count() / calls;
}

int Main(int argc, char** argv) {
  bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  int calls = quick ? 2000 : 20000;
  std::string kib(1024, 'x');
  std::string kib64(64 * 1024, 'x');
  const std::vector<Case> cases = {
      {"c_echo_empty_us", "add", "echo", ""},
      {"rust_echo_empty_us", "hostile_rust", "echo", ""},
      {"cxx_columns_tiny_us", "csv", "columns", "a,b\n"},
      {"c_sha256_1k_us", "sha256", "hash", kib},
      {"rust_markdown_1k_us", "markdown", "render", Markdown(1024)},
      {"c_sha256_64k_us", "sha256", "hash", kib64},
      {"rust_markdown_64k_us", "markdown", "render", Markdown(64 * 1024)},
      {"rust_gzip_64k_us", "gzip", "compress", Markdown(64 * 1024)},
  };
  auto runtime = Runtime::Create({.workers = 1});
  if (!runtime) {
    std::fprintf(stderr, "%s\n", runtime.error().ToString().c_str());
    return 1;
  }
  for (const Case& c : cases) {
    auto us = PerCall(**runtime, c, c.input.size() > 4096 ? calls / 10 : calls);
    if (!us) {
      std::fprintf(stderr, "%s: %s\n", c.metric, us.error().ToString().c_str());
      return 1;
    }
    std::printf("{\"metric\": \"%s\", \"value\": %.3g, \"unit\": \"us\"}\n", c.metric, *us);
    std::fflush(stdout);
  }
  (*runtime)->Shutdown(5s);
  return 0;
}

}  // namespace
}  // namespace keel

int main(int argc, char** argv) { return keel::Main(argc, argv); }
