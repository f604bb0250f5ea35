#include "engine/compile_cache.h"

#include <list>
#include <map>
#include <tuple>
#include <vector>

#include "base/mutex.h"

namespace keel::engine {
namespace {

// Everything the compiled code depends on.
struct Key {
  const Engine* engine;
  std::string digest;
  uint32_t max_memory_pages;
  uint64_t fuel;
  bool operator<(const Key& other) const {
    return std::tie(engine, digest, max_memory_pages, fuel) <
           std::tie(other.engine, other.digest, other.max_memory_pages, other.fuel);
  }
};

class CompileCache {
 public:
  std::shared_ptr<const Module> Find(const Key& key) EXCLUDES(mu_) {
    MutexLock lock(mu_);
    auto it = entries_.find(key);
    if (it == entries_.end()) return nullptr;
    order_.splice(order_.begin(), order_, it->second.position);
    return it->second.module;
  }

  void Insert(Key key, std::shared_ptr<const Module> module, size_t bytes) EXCLUDES(mu_) {
    if (bytes > kCompileCacheBytes) return;
    std::vector<std::shared_ptr<const Module>> evicted;  // dropped after the lock
    MutexLock lock(mu_);
    if (entries_.count(key) != 0) return;  // compiled twice at once: keep the first
    order_.push_front(key);
    entries_.emplace(std::move(key), Entry{std::move(module), bytes, order_.begin()});
    bytes_ += bytes;
    while (bytes_ > kCompileCacheBytes || entries_.size() > kCompileCacheEntries) {
      auto oldest = entries_.find(order_.back());
      bytes_ -= oldest->second.bytes;
      evicted.push_back(std::move(oldest->second.module));
      entries_.erase(oldest);
      order_.pop_back();
    }
  }

  size_t size() EXCLUDES(mu_) {
    MutexLock lock(mu_);
    return entries_.size();
  }

 private:
  struct Entry {
    std::shared_ptr<const Module> module;
    size_t bytes;
    std::list<Key>::iterator position;
  };

  Mutex mu_;
  std::map<Key, Entry> entries_ GUARDED_BY(mu_);
  std::list<Key> order_ GUARDED_BY(mu_);  // most recently used first
  size_t bytes_ GUARDED_BY(mu_) = 0;
};

CompileCache& Cache() {
  static auto* cache = new CompileCache();  // never destroyed: modules outlive main's statics
  return *cache;
}

}  // namespace

Result<std::shared_ptr<const Module>> CompileCached(Engine& engine, std::span<const uint8_t> bytes,
                                                    const std::string& digest,
                                                    const CompileOptions& options) {
  Key key{&engine, digest, options.max_memory_pages, options.fuel};
  if (auto module = Cache().Find(key)) return module;
  auto compiled = engine.Compile(bytes, options);
  if (compiled) Cache().Insert(std::move(key), *compiled, bytes.size());
  return compiled;
}

size_t CompileCacheSize() { return Cache().size(); }

}  // namespace keel::engine
