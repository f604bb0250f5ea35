// WASI preview1 ("wasi_snapshot_preview1") for guests run through a pool:
// the program's arguments and environment, the host directories it may
// reach, and where its stdio goes, as plain values. WithWasi turns them
// into PoolOptions.
//
//   keel::WasiOptions wasi;
//   wasi.args = {"report"};
//   wasi.preopens = {{.host_path = "/srv/data", .guest_path = "/data"}};  // read-only
//   wasi.stdout_io = keel::WasiStdio::Capture(64 << 10);
//   auto options = keel::WithWasi({.instances = 2}, std::move(wasi));
//   auto pool = runtime->CreatePool(module, std::move(*options));
//   auto call = (*pool)->Submit("report", {});
//   call->Wait()->stdio.out;   // what the guest printed during that call
//
// Nothing is reachable unless asked for: without a preopen the guest has
// no files; stdio is null by default. A preopen confines every path under
// it: "..", absolute paths and symlinks leading out are refused (EPERM),
// and a read-only one refuses every change.
//
// Each instance gets its own WASI state made from these options. Between
// calls on an instance, the captured output, the exit status and the
// position in the stdin bytes start afresh.
#ifndef KEEL_WASI_H_
#define KEEL_WASI_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "keel/runtime.h"
#include "keel/status.h"

namespace keel {

// Where one of the guest's stdio streams goes.
struct WasiStdio {
  enum class Kind : uint8_t {
    kNull,     // reads see EOF, writes are discarded
    kInherit,  // a host file descriptor, shared (dup'd) with the guest
    kBuffer,   // stdin: `input` then EOF; stdout/stderr: captured per call
  };
  Kind kind = Kind::kNull;
  // kInherit: the host fd to share; -1 means the process's own 0, 1 or 2.
  int host_fd = -1;
  // kBuffer on stdin: the bytes the guest reads in each call.
  std::string input;
  // kBuffer on stdout/stderr: bytes kept per call; later output is dropped
  // (the guest still sees its writes succeed) and the capture is marked
  // truncated (CapturedStdio in keel/call.h).
  size_t capture_limit = size_t{1} << 20;

  static WasiStdio Null() { return {}; }
  static WasiStdio Inherit(int host_fd = -1) {
    WasiStdio s;
    s.kind = Kind::kInherit;
    s.host_fd = host_fd;
    return s;
  }
  static WasiStdio Input(std::string bytes) {
    WasiStdio s;
    s.kind = Kind::kBuffer;
    s.input = std::move(bytes);
    return s;
  }
  static WasiStdio Capture(size_t limit = size_t{1} << 20) {
    WasiStdio s;
    s.kind = Kind::kBuffer;
    s.capture_limit = limit;
    return s;
  }
};

// A host directory the guest sees as `guest_path` (e.g. "/data" or ".").
struct WasiPreopen {
  std::string host_path;
  std::string guest_path;
  // Read-only preopens refuse every change (create, write, truncate,
  // delete, rename, link, set-times) with EPERM.
  bool read_only = true;
};

struct WasiOptions {
  std::vector<std::string> args;  // argv, argv[0] included
  std::vector<std::pair<std::string, std::string>> env;
  std::vector<WasiPreopen> preopens;  // guest fds 3, 4, ... in this order
  WasiStdio stdin_io;
  WasiStdio stdout_io;
  WasiStdio stderr_io;
  // Open guest descriptors (stdio and preopens included) allowed at once;
  // more fail with EMFILE instead of exhausting the host's descriptors.
  uint32_t max_open_fds = 1024;
};

// The WASI `keel serve` gives untrusted guests: no directories, no
// arguments or environment, stdin empty, stdout discarded, and the last
// 4 KiB of stderr captured so that a failed call's error carries it.
WasiOptions SandboxWasi();

// `base` with WASI added: a linker holding base.linker's functions (if
// any) and every wasi_snapshot_preview1 function (which replace any of
// the same name), and a host state factory that gives each instance its
// own WASI state made from `wasi`. Checked now, so that a pool never
// builds instances from options that cannot work: kInvalidArgument for
// arguments or environment holding NUL bytes, environment keys empty or
// holding '=', or a base with a host_state_factory of its own (an
// instance's host state is its WASI state: give per-call data to host
// functions with CallOptions::context instead); kNotFound when a
// preopen's host directory cannot be opened.
[[nodiscard]] Result<PoolOptions> WithWasi(PoolOptions base, WasiOptions wasi);

}  // namespace keel

#endif  // KEEL_WASI_H_
