// WASI preview1 ("wasi_snapshot_preview1") on real host resources: args,
// environ, clocks, random, stdio, poll_oneoff, proc_exit and a filesystem
// confined to preopened host directories. Nothing is reachable unless the
// config asks for it: no preopen means no files, null stdio by default.
//
// Errors follow wasmtime's preview1 where it answers (its test-programs
// p1_*.rs pin them), else POSIX on Linux:
//  - a path escaping its directory (absolute, "..", a symlink leading out):
//    EPERM (wasmtime's NotPermitted; older wasi-common said ENOTCAPABLE);
//  - a change under a read-only preopen: EPERM;
//  - a right the descriptor lacks: ENOTCAPABLE, except FD_READ/FD_WRITE,
//    which say EBADF like POSIX and wasmtime;
//  - file operations on a directory, path operations on stdio: EBADF;
//    path operations on a file: ENOTDIR;
//  - a pointer or length outside linear memory: EFAULT (wasmtime traps);
//  - sockets: EBADF for a closed descriptor, else ENOTSOCK; proc_raise:
//    ENOTSUP; poll_oneoff on nothing: EINVAL.
// Beyond wasmtime: fd_allocate, CPU-time clocks, fd_fdstat_set_rights
// (rights only shrink) and the O_SYNC family work; poll_oneoff reports a
// bad descriptor as that event's error rather than failing the call.
#ifndef KEEL_ABI_WASI_H_
#define KEEL_ABI_WASI_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "engine/engine.h"
#include "keel/status.h"

namespace keel::abi {

namespace wasi {
struct WasiState;
struct WasiSnapshot;
}  // namespace wasi

// Where one of the guest's stdio streams goes.
struct WasiStdio {
  enum class Kind : uint8_t {
    kNull,     // reads see EOF, writes are discarded
    kInherit,  // a host file descriptor, shared (dup'd) with the guest
    kBuffer,   // stdin: `input` then EOF; stdout/stderr: captured in memory
  };
  Kind kind = Kind::kNull;
  // kInherit: the host fd to share; -1 means the process's own 0, 1 or 2.
  int host_fd = -1;
  // kBuffer on stdin: the bytes the guest reads.
  std::string input;
  // kBuffer on stdout/stderr: bytes kept; later output is dropped (the
  // guest still sees its writes succeed) and the capture marked truncated.
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
// Nothing outside it is reachable through it: "..", absolute paths and
// symlinks leading out are refused.
struct WasiPreopen {
  std::string host_path;
  std::string guest_path;
  // Read-only preopens refuse every change (create, write, truncate,
  // delete, rename, link, set-times) with EPERM.
  bool read_only = true;
};

struct WasiConfig {
  std::vector<std::string> args;
  std::vector<std::pair<std::string, std::string>> env;
  std::vector<WasiPreopen> preopens;  // guest fds 3, 4, ... in this order
  WasiStdio stdin_io;
  WasiStdio stdout_io;
  WasiStdio stderr_io;
  // Open guest descriptors (stdio and preopens included) allowed at once;
  // more fail with EMFILE instead of exhausting the host's descriptors.
  uint32_t max_open_fds = 1024;
};

// The WASI state of one instance: its descriptor table, stdio buffers and
// exit status. Pass it to Context::Instantiate as the host state. Used on
// the instance's thread only.
class WasiContext : public engine::HostState {
 public:
  // Opens the preopened directories and shares the inherited stdio fds.
  // kInvalidArgument for args/env holding NUL bytes or keys with '=';
  // kNotFound when a preopen's host directory cannot be opened.
  [[nodiscard]] static Result<std::unique_ptr<WasiContext>> Create(const WasiConfig& config);
  ~WasiContext() override;

  WasiContext(const WasiContext&) = delete;
  WasiContext& operator=(const WasiContext&) = delete;

  // What the guest wrote to stdout/stderr when they are kBuffer.
  std::string_view captured_stdout() const;
  std::string_view captured_stderr() const;
  bool stdout_truncated() const;
  bool stderr_truncated() const;

  // The status given to proc_exit, once the guest called it.
  std::optional<int> exit_code() const;

  // Between calls on a pooled instance: forgets captured output and the
  // exit status of the previous call.
  void OnCallStart() override;
  // Adds the tail of what the guest wrote to a captured stderr (guests
  // built with keel.h report their errors there before trapping).
  void AnnotateError(Error& error) const override;
  // Records the descriptor table (what each descriptor is, its rights,
  // flags and file position), stdin's position, captured output and exit
  // status; Reset returns to them: descriptors opened since are closed,
  // closed or renumbered ones come back. A descriptor is duplicated for
  // each inherited stdio stream and file open at the snapshot.
  Result<void> Snapshot() override;
  Result<void> Reset() override;

  // For keel's host functions.
  wasi::WasiState& state() { return *state_; }

 private:
  explicit WasiContext(std::unique_ptr<wasi::WasiState> state);
  std::unique_ptr<wasi::WasiState> state_;
  std::unique_ptr<wasi::WasiSnapshot> snapshot_;
};

// Defines every wasi_snapshot_preview1 function in `linker`. They act on
// the calling instance's host state, which must be a WasiContext.
void AddWasiToLinker(engine::Linker& linker);

}  // namespace keel::abi

#endif  // KEEL_ABI_WASI_H_
