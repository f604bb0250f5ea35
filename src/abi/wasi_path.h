// Path resolution confined to a directory: the sandbox under every WASI
// path operation.
#ifndef KEEL_ABI_WASI_PATH_H_
#define KEEL_ABI_WASI_PATH_H_

#include <sys/types.h>

#include <string>

#include "abi/wasi_internal.h"

namespace keel::abi::wasi {

// Opens `path` relative to the directory `dirfd` without ever resolving to
// anything outside it: with openat2(RESOLVE_BENEATH), or, where the kernel
// lacks openat2, a component-by-component walk (O_NOFOLLOW at each step,
// ".." popped from a stack of the directories entered, symlinks expanded by
// hand). `flags` are open(2) flags (O_CLOEXEC is added); O_NOFOLLOW refers
// to the last component. With O_PATH, only O_DIRECTORY and O_NOFOLLOW may be
// added. Returns the new fd or -errno; an absolute path, a ".." above
// `dirfd` or a symlink leading out gives -EPERM (wasmtime's NotPermitted).
[[nodiscard]] int OpenBeneath(int dirfd, const std::string& path, int flags, mode_t mode);

// For the *at() calls that act on a name without following it (mkdir,
// unlink, rmdir, rename, link, symlink): the path's parent directory,
// opened beneath `dirfd`, and its last component. A trailing slash stays on
// `name` so that the kernel applies its directory rules.
struct ParentPath {
  UniqueFd holder;   // the opened parent, unless it is `dirfd` itself
  int fd = -1;       // the parent directory to pass to the *at() call
  std::string name;  // the last component
};
// 0 or -errno, as OpenBeneath.
[[nodiscard]] int ResolveParent(int dirfd, const std::string& path, ParentPath* out);

// Whether a symlink `target` created in `parent_fd` (a directory beneath
// `dirfd`) would point inside `dirfd`: 0 if so, -EPERM (as OpenBeneath's
// escapes, and cap-std's for absolute targets) if it is absolute or a ".."
// climbs above `dirfd`, counting from where `parent_fd` really is. The
// target's components are judged as spelled, since it may dangle; symlinks
// met on the way are confined again whenever the link is followed.
[[nodiscard]] int CheckSymlinkTarget(int dirfd, int parent_fd, const std::string& target);

// Makes OpenBeneath use the walk even where openat2 works, so that tests
// cover both.
void ForcePathWalkForTesting(bool on);

}  // namespace keel::abi::wasi

#endif  // KEEL_ABI_WASI_PATH_H_
