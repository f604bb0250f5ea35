// Options of `keel serve`: where it listens, where it keeps state, and the
// limits that protect it from clients and guests.
#ifndef KEEL_SERVER_OPTIONS_H_
#define KEEL_SERVER_OPTIONS_H_

#include <chrono>
#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#include "keel/host.h"
#include "keel/runtime.h"

namespace keel::server {

using std::chrono::milliseconds;

struct ServerOptions {
  // ADDR:PORT; ADDR is an IPv4 address, [IPv6] or "localhost". Port 0 picks
  // a free port (see Server::port()).
  std::string listen = "127.0.0.1:8080";
  // Holds modules/ (uploaded names) and, unless `store` says otherwise, the
  // SQLite job store.
  std::string data_dir;
  // Empty: the data directory. Otherwise a directory or postgresql:// URL.
  std::string store;
  // PostgreSQL: the store's write connections (jobs::StoreOptions::
  // commit_lanes); 0: the store's default.
  size_t commit_lanes = 0;
  // This node's name in the cluster (the nodes table, the lease holder of
  // its jobs); empty: hostname:port.
  std::string node_name;
  // A job's lease once started, and how long a silent node stays alive:
  // the jobs of a node that stops heartbeating go to others after this.
  milliseconds lease{30000};
  // The bearer token every /v1 route requires; empty: no auth, and then
  // only loopback addresses may be listened on.
  std::string token;
  // With a token: /metrics is served without it too (it names every module).
  bool public_metrics = false;
  // Directories whose *.wasm are loaded at start under their file stem
  // (names starting with "hostile_" are skipped).
  std::vector<std::string> module_dirs;

  EngineKind engine = EngineKind::kSpiderMonkey;  // what runs the guests
  // The state policy of modules put without ?state=: fresh state per call.
  StatePolicy default_state = StatePolicy::kReset;

  // Threads.
  int workers = 0;     // WebAssembly worker threads; 0: one per core
  // RuntimeOptions::memory_budget_bytes: all instances' linear memory;
  // 0: half the machine's physical memory.
  uint64_t memory_budget_bytes = 0;
  int io_threads = 1;  // HTTP threads, one io_context each
  int blocking_threads = 2;  // store queries and commits, off the HTTP threads
  int compile_threads = 2;   // module uploads (validation, compilation), off the HTTP and store threads

  // Pools (one per module).
  size_t instances = 0;     // per module; 0: one per worker
  size_t max_queue = 1024;  // calls waiting per module before 429

  // Synchronous calls.
  milliseconds default_call_timeout{5000};
  milliseconds max_call_timeout{30000};
  // Largest timeout_ms of a job (per attempt): a job holds a worker at most
  // this long.
  milliseconds max_job_timeout{15 * 60 * 1000};

  // HTTP limits.
  size_t max_body_bytes = 16 << 20;    // requests other than module uploads
  size_t max_module_bytes = 64 << 20;  // PUT /v1/modules/{name}
  size_t max_header_bytes = 16 << 10;
  size_t max_connections = 4096;
  milliseconds idle_timeout{60000};    // keep-alive wait for the next request
  milliseconds header_timeout{10000};  // from its first byte to the end of the header
  milliseconds body_timeout{30000};
  milliseconds write_timeout{30000};

  // SIGTERM: in-flight calls get this long to finish before being
  // interrupted.
  milliseconds drain_grace{10000};

  // Embedders and tests: more host functions for every module's linker.
  std::function<void(Linker&)> extend_linker;
};

}  // namespace keel::server

#endif  // KEEL_SERVER_OPTIONS_H_
