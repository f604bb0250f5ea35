// The cost of an instance reset (Instance::Reset) against what it replaces,
// measured in one run: after a call that wrote 1 page, 256 KiB or 1 MiB of
// a 2 MiB memory, the p50/p99 of
//   - reset with dirty-page tracking (userfaultfd + PAGEMAP_SCAN),
//   - reset by whole-memory comparison (the fallback),
//   - memcpy of the whole 2 MiB (the floor of a naive reset);
// and per call, the call plus its reset against a fresh instance with
// _initialize for the call (what isolation cost before). Also probes
// soft-dirty bits (/proc/self/pagemap), the alternative not taken: their
// clearing (clear_refs) is process-wide. Runs on every engine of the build
// in turn, or on the one named.
// Usage: keel_reset_bench [--engine spidermonkey|wasmtime] [runs]
// (docs/BENCHMARKS.md)
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/file.h"
#include "engine/dirty_pages.h"
#include "engine/engine.h"

namespace keel::engine {
namespace {

using Clock = std::chrono::steady_clock;
constexpr size_t kMemoryBytes = 2 << 20;

struct Percentiles {
  double p50 = 0;
  double mean = 0;  // includes the rare slow runs (collections) p50 hides
  double p99 = 0;
};

Percentiles Summarize(std::vector<double> us) {
  if (us.empty()) return {};
  std::sort(us.begin(), us.end());
  double sum = 0;
  for (double u : us) sum += u;
  return {us[us.size() / 2], sum / us.size(), us[std::min(us.size() - 1, us.size() * 99 / 100)]};
}

double Since(Clock::time_point start) {
  return std::chrono::duration<double, std::micro>(Clock::now() - start).count();
}

class Bench {
 public:
  bool Init(Engine& engine) {
    auto bytes = ReadFile(std::string(KEEL_FIXTURE_DIR) + "/reset_guest.wasm");
    if (!bytes) return Fail(bytes.error());
    auto module = engine.Compile(*bytes);
    if (!module) return Fail(module.error());
    module_ = *module;
    auto ctx = engine.NewContext();
    if (!ctx) return Fail(ctx.error());
    ctx_ = std::move(*ctx);
    linker_ = std::make_shared<Linker>();
    return true;
  }

  std::unique_ptr<Instance> Instantiate() {
    auto instance = ctx_->Instantiate(module_, linker_, nullptr, ++tag_);
    if (!instance) {
      Fail(instance.error());
      return nullptr;
    }
    return std::move(*instance);
  }

  struct ResetTimes {
    Percentiles reset;
    Percentiles cycle;  // the call and the reset
  };

  // The guest writes `bytes` (memory.fill, from offset 64 KiB), then the
  // instance is reset.
  ResetTimes Reset(size_t bytes, bool track, int runs) {
    auto instance = Instantiate();
    if (!instance) return {};
    if (auto ok = instance->Snapshot({.track_dirty_pages = track}); !ok) {
      Fail(ok.error());
      return {};
    }
    std::vector<double> reset_us;
    std::vector<double> cycle_us;
    for (int i = 0; i < runs; ++i) {
      auto start = Clock::now();
      if (!Fill(*instance, bytes, i)) return {};
      auto reset_start = Clock::now();
      auto stats = instance->Reset();
      reset_us.push_back(Since(reset_start));
      cycle_us.push_back(Since(start));
      if (!stats) {
        Fail(stats.error());
        return {};
      }
    }
    return {Summarize(std::move(reset_us)), Summarize(std::move(cycle_us))};
  }

  // A fresh instance per call: instantiation with _initialize, the call,
  // dropping the instance and the collector's chance to free it (as an
  // idle worker gives it).
  Percentiles Fresh(size_t bytes, int runs) {
    std::vector<double> us;
    for (int i = 0; i < runs; ++i) {
      auto start = Clock::now();
      auto instance = Instantiate();
      if (!instance || !Fill(*instance, bytes, i)) return {};
      instance.reset();
      ctx_->MaybeCollectGarbage();
      us.push_back(Since(start));
    }
    ctx_->CollectGarbage();
    return Summarize(std::move(us));
  }

  static Percentiles Memcpy(int runs) {
    std::vector<uint8_t> from(kMemoryBytes, 1);
    std::vector<uint8_t> to(kMemoryBytes, 2);
    std::vector<double> us;
    for (int i = 0; i < runs; ++i) {
      from[i % kMemoryBytes] = static_cast<uint8_t>(i);
      auto start = Clock::now();
      std::memcpy(to.data(), from.data(), kMemoryBytes);
      us.push_back(Since(start));
    }
    return Summarize(std::move(us));
  }

  // Whether a page written after clear_refs shows its soft-dirty bit (55)
  // in /proc/self/pagemap (CONFIG_MEM_SOFT_DIRTY).
  static bool SoftDirtyWorks() {
    int clear_refs = open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
    int pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    void* map = mmap(nullptr, kHostPageSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                     -1, 0);
    uint64_t entry = 0;
    if (clear_refs >= 0 && pagemap >= 0 && map != MAP_FAILED) {
      *static_cast<uint8_t*>(map) = 1;
      if (write(clear_refs, "4", 1) == 1) {
        *static_cast<uint8_t*>(map) = 2;
        const off_t at = reinterpret_cast<uintptr_t>(map) / kHostPageSize * sizeof entry;
        if (pread(pagemap, &entry, sizeof entry, at) != sizeof entry) entry = 0;
      }
    }
    if (map != MAP_FAILED) munmap(map, kHostPageSize);
    if (pagemap >= 0) close(pagemap);
    if (clear_refs >= 0) close(clear_refs);
    return (entry >> 55) & 1;
  }

 private:
  bool Fill(Instance& instance, size_t bytes, int i) {
    if (!fill_) fill_ = *instance.Lookup("fill");
    Value args[3] = {Value::I32(kWasmPageSize), Value::I32(static_cast<int32_t>(bytes)),
                     Value::I32(1 + i % 255)};
    auto ok = instance.Call(*fill_, args, {}, ++tag_);
    return ok || Fail(ok.error());
  }

  bool Fail(const Error& error) {
    std::fprintf(stderr, "keel_reset_bench: %s\n", error.ToString().c_str());
    return false;
  }

  std::shared_ptr<const Module> module_;
  std::unique_ptr<Context> ctx_;
  std::shared_ptr<Linker> linker_;
  std::optional<Func> fill_;
  uint64_t tag_ = 0;
};

std::string Cell(Percentiles p) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.1f/%.1f/%.0f", p.p50, p.mean, p.p99);
  return buf;
}

int RunOn(Engine& engine, int runs) {
  Bench bench;
  if (!bench.Init(engine)) return 1;
  ResetSupport support = engine.reset_support();
  std::printf("engine %s; dirty-page tracking: %s; soft-dirty bits: %s\n",
              std::string(engine.name()).c_str(),
              support.dirty_page_tracking ? "yes" : ("no (" + support.detail + ")").c_str(),
              Bench::SoftDirtyWorks() ? "yes" : "no");
  const Percentiles copy = Bench::Memcpy(runs);
  std::printf("2 MiB memory; microseconds p50/mean/p99; %d runs for 1 page, %d for the others\n",
              runs, std::max(10, runs / 10));
  std::printf("%-8s | %-17s %-17s %-17s | %-17s %-17s | %-9s %-9s %-9s\n", "written", "reset",
              "reset compare", "memcpy 2 MiB", "call+reset", "fresh+call", "memcpy/rs",
              "fresh/c+r", "(means)");
  double reset_p50 = 0;
  for (size_t bytes : {kHostPageSize, size_t{256} << 10, size_t{1} << 20}) {
    const int n = bytes > kHostPageSize ? std::max(10, runs / 10) : runs;
    const Bench::ResetTimes tracked = bench.Reset(bytes, /*track=*/true, n);
    const Bench::ResetTimes compared = bench.Reset(bytes, /*track=*/false, n);
    const Percentiles fresh = bench.Fresh(bytes, std::max(10, n / 4));
    std::printf("%-8s | %-17s %-17s %-17s | %-17s %-17s | %-9.1f %-9.1f %-9.1f\n",
                bytes == kHostPageSize ? "1 page" : bytes == (256u << 10) ? "256 KiB" : "1 MiB",
                Cell(tracked.reset).c_str(), Cell(compared.reset).c_str(), Cell(copy).c_str(),
                Cell(tracked.cycle).c_str(), Cell(fresh).c_str(), copy.p50 / tracked.reset.p50,
                fresh.p50 / tracked.cycle.p50, fresh.mean / tracked.cycle.mean);
    if (bytes == kHostPageSize) reset_p50 = tracked.reset.p50;
  }
  std::printf("reset_p50_us %.1f\n\n", reset_p50);
  return 0;
}

int Main(int argc, char** argv) {
  std::vector<EngineKind> engines(AvailableEngines().begin(), AvailableEngines().end());
  int runs = 2000;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--engine" && i + 1 < argc) {
      auto kind = ParseEngineKind(argv[++i]);
      if (!kind) {
        std::fprintf(stderr, "keel_reset_bench: unknown engine '%s'\n", argv[i]);
        return 2;
      }
      engines = {*kind};
    } else {
      runs = std::max(10, std::atoi(argv[i]));
    }
  }
  for (EngineKind kind : engines) {
    auto engine = GetEngine(kind);
    if (!engine) {
      std::fprintf(stderr, "keel_reset_bench: %s\n", engine.error().ToString().c_str());
      return 1;
    }
    if (int rc = RunOn(**engine, runs); rc != 0) return rc;
  }
  return 0;
}

}  // namespace
}  // namespace keel::engine

int main(int argc, char** argv) { return keel::engine::Main(argc, argv); }
