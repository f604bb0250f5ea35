/*
 * hostile_path_escape — a WASI command that tries to read files outside
 * its preopened directories. Run it with or without preopens; every
 * attempt must be refused.
 *
 * Attempts (each prints one line "<what>: <ERRNO name>" or
 * "<what>: OPENED (escape)"):
 *   - through wasi-libc (open): ../etc/passwd, /etc/passwd,
 *     /../etc/passwd, and for each preopen P: P/../etc/passwd,
 *     P/../../../../../../etc/passwd;
 *   - raw path_open on each preopen fd (bypassing wasi-libc's own path
 *     checks, so the host's are what is tested): ../etc/passwd,
 *     /etc/passwd, a/../../etc/passwd, ./../etc/passwd, a deep ../ chain,
 *     and `..` as a directory;
 *   - symlinks: in each preopen it creates keel_escape_abs -> /etc/passwd
 *     and keel_escape_rel -> ../../../../../../etc/passwd (raw
 *     path_symlink; keel_escape_libc -> /etc/passwd via symlink()), prints
 *     what creating them gave (read-only preopens should refuse), then
 *     opens each one following symlinks. A test may also create these
 *     links on the host side beforehand, so the open attempts matter
 *     either way;
 *   - raw path_open on fds that are not preopens (0, 1, 2, 99).
 * Exit code: 0 if no open succeeded, 1 if any did.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <wasi/api.h>

static int g_attempts;
static int g_escapes;

static const char* errno_name(int e) {
  /* wasi-libc's errno values are the WASI errno codes. */
  switch (e) {
    case __WASI_ERRNO_ACCES: return "EACCES";
    case __WASI_ERRNO_BADF: return "EBADF";
    case __WASI_ERRNO_EXIST: return "EEXIST";
    case __WASI_ERRNO_INVAL: return "EINVAL";
    case __WASI_ERRNO_IO: return "EIO";
    case __WASI_ERRNO_ISDIR: return "EISDIR";
    case __WASI_ERRNO_LOOP: return "ELOOP";
    case __WASI_ERRNO_NAMETOOLONG: return "ENAMETOOLONG";
    case __WASI_ERRNO_NOENT: return "ENOENT";
    case __WASI_ERRNO_NOSYS: return "ENOSYS";
    case __WASI_ERRNO_NOTDIR: return "ENOTDIR";
    case __WASI_ERRNO_NOTSUP: return "ENOTSUP";
    case __WASI_ERRNO_PERM: return "EPERM";
    case __WASI_ERRNO_ROFS: return "EROFS";
    case __WASI_ERRNO_XDEV: return "EXDEV";
    case __WASI_ERRNO_NOTCAPABLE: return "ENOTCAPABLE";
    default: {
      static char buf[16];
      snprintf(buf, sizeof buf, "E%d", e);
      return buf;
    }
  }
}

static void report_open(const char* what, int err, int fd) {
  ++g_attempts;
  if (err == 0) {
    ++g_escapes;
    char first[32] = {0};
    ssize_t n = read(fd, first, sizeof first - 1);
    for (ssize_t i = 0; i < n; ++i)
      if (first[i] == '\n') first[i] = ' ';
    printf("%s: OPENED (escape) \"%s\"\n", what, n > 0 ? first : "");
    close(fd);
  } else {
    printf("%s: %s\n", what, errno_name(err));
  }
}

static void libc_open(const char* path) {
  char what[600];
  snprintf(what, sizeof what, "open %s", path);
  errno = 0;
  int fd = open(path, O_RDONLY);
  report_open(what, fd >= 0 ? 0 : errno, fd);
}

static void raw_open(int dirfd, const char* path, int as_dir) {
  char what[600];
  snprintf(what, sizeof what, "path_open fd=%d %s%s", dirfd, path,
           as_dir ? " (directory)" : "");
  __wasi_fd_t fd = (__wasi_fd_t)-1;
  __wasi_rights_t rights =
      as_dir ? (__WASI_RIGHTS_PATH_OPEN | __WASI_RIGHTS_FD_READDIR)
             : __WASI_RIGHTS_FD_READ;
  __wasi_errno_t err = __wasi_path_open(
      (__wasi_fd_t)dirfd, __WASI_LOOKUPFLAGS_SYMLINK_FOLLOW, path,
      as_dir ? __WASI_OFLAGS_DIRECTORY : 0, rights, rights, 0, &fd);
  report_open(what, err, (int)fd);
}

static void raw_symlink(int dirfd, const char* target, const char* link) {
  __wasi_errno_t err = __wasi_path_symlink(target, (__wasi_fd_t)dirfd, link);
  printf("path_symlink fd=%d %s -> %s: %s\n", dirfd, link, target,
         err == 0 ? "CREATED" : errno_name(err));
}

int main(void) {
  /* Find the preopens the host granted (fds from 3 up, until EBADF). */
  int pre_fd[16];
  char pre_name[16][256];
  int npre = 0;
  for (int fd = 3; npre < 16; ++fd) {
    __wasi_prestat_t ps;
    if (__wasi_fd_prestat_get((__wasi_fd_t)fd, &ps) != 0) break;
    if (ps.tag != __WASI_PREOPENTYPE_DIR) continue;
    size_t n = ps.u.dir.pr_name_len;
    if (n >= sizeof pre_name[0]) n = sizeof pre_name[0] - 1;
    if (__wasi_fd_prestat_dir_name((__wasi_fd_t)fd, (uint8_t*)pre_name[npre],
                                   n) != 0)
      continue;
    pre_name[npre][n] = '\0';
    pre_fd[npre++] = fd;
    printf("preopen fd=%d name=%s\n", fd, pre_name[npre - 1]);
  }
  if (npre == 0) printf("no preopens\n");

  libc_open("../etc/passwd");
  libc_open("/etc/passwd");
  libc_open("/../etc/passwd");

  for (int i = 0; i < npre; ++i) {
    int fd = pre_fd[i];
    char path[600];
    snprintf(path, sizeof path, "%s/../etc/passwd", pre_name[i]);
    libc_open(path);
    snprintf(path, sizeof path, "%s/../../../../../../etc/passwd", pre_name[i]);
    libc_open(path);

    raw_open(fd, "../etc/passwd", 0);
    raw_open(fd, "/etc/passwd", 0);
    raw_open(fd, "a/../../etc/passwd", 0);
    raw_open(fd, "./../etc/passwd", 0);
    raw_open(fd, "../../../../../../../../../../etc/passwd", 0);
    raw_open(fd, "..", 1);

    raw_symlink(fd, "/etc/passwd", "keel_escape_abs");
    raw_symlink(fd, "../../../../../../etc/passwd", "keel_escape_rel");
    snprintf(path, sizeof path, "%s/keel_escape_libc", pre_name[i]);
    errno = 0;
    int rc = symlink("/etc/passwd", path);
    printf("symlink %s -> /etc/passwd: %s\n", path,
           rc == 0 ? "CREATED" : errno_name(errno));

    raw_open(fd, "keel_escape_abs", 0);
    raw_open(fd, "keel_escape_rel", 0);
    libc_open(path);
  }

  raw_open(0, "etc/passwd", 0);
  raw_open(1, "etc/passwd", 0);
  raw_open(2, "etc/passwd", 0);
  raw_open(99, "etc/passwd", 0);

  if (g_escapes == 0) {
    printf("result: all %d attempts refused\n", g_attempts);
    return 0;
  }
  printf("result: %d of %d attempts escaped\n", g_escapes, g_attempts);
  return 1;
}
