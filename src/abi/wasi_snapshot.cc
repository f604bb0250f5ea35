// WasiContext::Snapshot and Reset: the WASI state of a pooled instance
// brought back to what it was after the instance's init, so that the
// descriptors, stdin position and output of one call do not reach the next.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "abi/wasi.h"
#include "abi/wasi_internal.h"

namespace keel::abi {
namespace wasi {
namespace {

std::unique_ptr<DirCookies> CopyCookies(const std::unique_ptr<DirCookies>& cookies) {
  return cookies ? std::make_unique<DirCookies>(*cookies) : nullptr;
}

// Every field but the host fd.
void CopyFields(const FdEntry& from, FdEntry& to) {
  to.kind = from.kind;
  to.stdio = from.stdio;
  to.stdio_kind = from.stdio_kind;
  to.filetype = from.filetype;
  to.rights_base = from.rights_base;
  to.rights_inheriting = from.rights_inheriting;
  to.flags = from.flags;
  to.read_only = from.read_only;
  to.stream = from.stream;
  to.preopen_name = from.preopen_name;
  to.preopen_root = from.preopen_root;
  to.dir_cookies = CopyCookies(from.dir_cookies);
}

// Whether `live` is still the descriptor `saved` recorded. Judged only for
// stdio and preopened directories, which keel alone creates (at Create): a
// different descriptor under the same number differs in kind, stream, host
// fd number or preopen. Any other descriptor is rebuilt at every reset.
bool StillTheSame(const FdEntry& live, const SavedFd& saved) {
  const FdEntry& s = saved.fields;
  if (s.kind != FdKind::kStdio && !s.preopen_name) return false;
  return live.kind == s.kind && live.stdio == s.stdio && live.stdio_kind == s.stdio_kind &&
         live.host.get() == saved.host_number && live.preopen_name == s.preopen_name &&
         live.preopen_root == s.preopen_root;
}

// What the guest can change on a descriptor it keeps.
void RestoreState(FdEntry& live, const SavedFd& saved) {
  live.rights_base = saved.fields.rights_base;
  live.rights_inheriting = saved.fields.rights_inheriting;
  live.flags = saved.fields.flags;
  live.dir_cookies = CopyCookies(saved.fields.dir_cookies);
}

Result<SavedFd> Save(const FdEntry& entry) {
  SavedFd saved;
  CopyFields(entry, saved.fields);
  saved.host_number = entry.host.get();
  if (!entry.host.valid()) return saved;
  if (entry.preopen_name && entry.preopen_root) {
    saved.source = entry.preopen_root;
    return saved;
  }
  auto source = std::make_shared<const UniqueFd>(fcntl(entry.host.get(), F_DUPFD_CLOEXEC, 0));
  if (!source->valid()) {
    return MakeError(ErrorCode::kResourceExhausted,
                     std::string("WASI snapshot: cannot duplicate a descriptor: ") +
                         std::strerror(errno));
  }
  saved.source = source;
  if (entry.kind == FdKind::kFile && !entry.stream) {
    const off_t at = lseek(source->get(), 0, SEEK_CUR);
    if (at >= 0) saved.offset = at;
    saved.status_flags = fcntl(source->get(), F_GETFL);
  }
  return saved;
}

Result<FdEntry> Rebuild(const SavedFd& saved) {
  FdEntry entry;
  CopyFields(saved.fields, entry);
  if (!saved.source) return entry;
  entry.host = UniqueFd(fcntl(saved.source->get(), F_DUPFD_CLOEXEC, 0));
  bool ok = entry.host.valid();
  // The description is shared with the snapshot's duplicate: its position
  // and status flags are the guest's to have changed.
  if (ok && saved.offset) ok = lseek(entry.host.get(), *saved.offset, SEEK_SET) >= 0;
  if (ok && saved.status_flags >= 0) ok = fcntl(entry.host.get(), F_SETFL, saved.status_flags) == 0;
  if (!ok) {
    const std::string why = std::strerror(errno);
    return MakeError(ErrorCode::kFailedPrecondition,
                     "WASI reset: cannot restore a descriptor: " + why);
  }
  return entry;
}

}  // namespace
}  // namespace wasi

Result<void> WasiContext::Snapshot() {
  auto snapshot = std::make_unique<wasi::WasiSnapshot>();
  for (const auto& [fd, entry] : state_->fds) {
    auto saved = wasi::Save(entry);
    if (!saved) return MakeError(saved.error());
    snapshot->fds.emplace(fd, std::move(*saved));
  }
  snapshot->stdin_pos = state_->stdin_pos;
  snapshot->out = state_->out;
  snapshot->err = state_->err;
  snapshot->exit_code = state_->exit_code;
  snapshot_ = std::move(snapshot);
  return {};
}

Result<void> WasiContext::Reset() {
  if (!snapshot_) {
    return MakeError(ErrorCode::kFailedPrecondition, "the WASI state has no snapshot");
  }
  auto& fds = state_->fds;
  std::erase_if(fds, [&](const auto& kv) { return !snapshot_->fds.contains(kv.first); });
  for (auto& [fd, saved] : snapshot_->fds) {
    auto live = fds.find(fd);
    if (live != fds.end() && wasi::StillTheSame(live->second, saved)) {
      wasi::RestoreState(live->second, saved);
      continue;
    }
    auto rebuilt = wasi::Rebuild(saved);
    if (!rebuilt) return MakeError(rebuilt.error());
    // The rebuilt entry is the one later resets compare with.
    saved.host_number = rebuilt->host.get();
    fds.insert_or_assign(fd, std::move(*rebuilt));
  }
  state_->stdin_pos = snapshot_->stdin_pos;
  state_->out = snapshot_->out;
  state_->err = snapshot_->err;
  state_->exit_code = snapshot_->exit_code;
  return {};
}

}  // namespace keel::abi
