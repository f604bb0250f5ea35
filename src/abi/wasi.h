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
#include "keel/wasi.h"

namespace keel::abi {

namespace wasi {
struct WasiState;
struct WasiSnapshot;
}  // namespace wasi

// The options are public (keel/wasi.h); keel's own code names them here.
using keel::WasiPreopen;
using keel::WasiStdio;
using WasiConfig = keel::WasiOptions;

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
  // exit status of the previous call, and rewinds the stdin bytes.
  void OnCallStart() override;
  // Hands the call's captured stdout and stderr to its output.
  void AnnotateOutput(CallOutput& output) override;
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
