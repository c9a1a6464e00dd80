#include "path_safety.hpp"

#include "errors.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <set>

namespace loftq_cli {

namespace {

bool real_path(const fs::path& p, fs::path& out) {
  char* r = ::realpath(p.c_str(), nullptr);
  if (!r) return false;
  out = r;
  std::free(r);
  return true;
}

}  // namespace

fs::path resolve_location(const std::string& p) {
  if (p.empty()) throw InputError{"empty output path"};
  fs::path given(p);
  std::error_code ec;
  fs::path cur;
  if (given.is_relative()) {
    if (!real_path(fs::current_path(ec), cur)) throw InputError{"cannot resolve the current directory"};
  } else {
    cur = "/";
  }
  std::vector<std::string> parts;
  for (const fs::path& c : given.relative_path()) parts.push_back(c.string());
  while (!parts.empty() && (parts.back().empty() || parts.back() == ".")) parts.pop_back();
  bool missing = false;
  fs::path missing_at;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    const std::string& c = parts[i];
    if (c.empty() || c == ".") continue;
    if (c == "..") {
      // The OS walks ".." from the directory a path really names; below a
      // missing directory there is none to walk from.
      if (missing)
        throw InputError{p + ": cannot be resolved: " + missing_at.string() +
                         " does not exist, so '..' after it names nothing"};
      cur = cur.parent_path();
      continue;
    }
    const fs::path next = cur / c;
    if (missing) {
      cur = next;
      continue;
    }
    struct stat st;
    if (::lstat(next.c_str(), &st) != 0) {
      missing = true;
      missing_at = next;
      cur = next;
      continue;
    }
    if (i + 1 == parts.size()) {
      cur = next;  // the entry itself, not what a link there points to
      continue;
    }
    fs::path r;
    if (!real_path(next, r))
      throw InputError{p + ": cannot be resolved: " + next.string() + ": " + std::strerror(errno)};
    cur = r;
  }
  return cur;
}

InputFile input_file(const std::string& path) {
  InputFile f;
  f.shown = path;
  fs::path r;
  if (real_path(path, r)) f.real = r;
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) {
    f.has_id = true;
    f.dev = st.st_dev;
    f.ino = st.st_ino;
  }
  return f;
}

bool lies_within(const fs::path& inner, const fs::path& outer) {
  if (inner.empty() || outer.empty()) return false;
  auto ia = inner.begin();
  for (auto ib = outer.begin(); ib != outer.end(); ++ib, ++ia) {
    if (ib->empty()) continue;
    if (ia == inner.end() || *ia != *ib) return false;
  }
  return true;
}

bool same_file(const fs::path& entry, const InputFile& in) {
  struct stat st;
  if (in.has_id && ::stat(entry.c_str(), &st) == 0 && st.st_dev == in.dev && st.st_ino == in.ino) return true;
  fs::path r;
  return !in.real.empty() && real_path(entry, r) && r == in.real;
}

void check_replaceable(const fs::path& dir, const std::string& shown) {
  struct stat st;
  if (::lstat(dir.c_str(), &st) != 0) return;
  if (S_ISLNK(st.st_mode))
    throw InputError{shown + ": output is a symbolic link; --overwrite replaces only a directory loftq wrote"};
  if (!S_ISDIR(st.st_mode)) throw InputError{shown + ": output exists and is not a directory"};
  const fs::path marker = dir / kMarkerFile;
  struct stat ms;
  if (::lstat(marker.c_str(), &ms) == 0 && S_ISREG(ms.st_mode)) return;
  std::error_code ec;
  if (fs::is_empty(dir, ec) && !ec) return;
  throw InputError{shown + ": exists and is not a loftq output directory (no " + kMarkerFile +
                   " file); --overwrite deletes only those; remove it yourself or choose another --output"};
}

void check_not_inside(const fs::path& dir, const std::string& shown, const std::vector<InputFile>& inputs) {
  fs::path rdir;
  if (!real_path(dir, rdir)) rdir = dir;
  for (const InputFile& in : inputs)
    if (lies_within(in.real, dir) || lies_within(in.real, rdir))
      throw InputError{in.shown + ": this input " + (in.real == rdir || in.real == dir ? "is" : "lies inside") +
                       " the output directory " + shown + " (" + in.real.string() + "); refusing to replace it"};
}

void check_output_names(const std::vector<std::string>& checkpoint_files, const std::vector<std::string>& tool_files) {
  const std::set<std::string> taken(tool_files.begin(), tool_files.end());
  for (const std::string& f : checkpoint_files)
    if (taken.count(f))
      throw InputError{"checkpoint file '" + printable(f) +
                       "' has the name of a file loftq writes into the output directory; rename that file (and its "
                       "entries in model.safetensors.index.json)"};
}

namespace {

// An open descriptor, closed on every path out.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }

 private:
  int fd_;
};

constexpr int kDirOpen = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;

// What a removal must know of an entry: its identity, type and mount.
struct Where {
  dev_t dev = 0;
  ino_t ino = 0;
  mode_t mode = 0;
  std::uint64_t mnt = 0;
  bool has_mnt = false;
  bool mount_root = false;
};

// `name` in the directory `dirfd` ("" for dirfd itself), never following a
// symbolic link. The mount id tells a bind mount of the same file system
// apart, which st_dev cannot.
bool where_at(int dirfd, const char* name, Where& w) {
  const int flags = AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT | (*name ? 0 : AT_EMPTY_PATH);
#if defined(STATX_MNT_ID)
  struct statx sx;
  if (::statx(dirfd, name, flags, STATX_TYPE | STATX_INO | STATX_MNT_ID, &sx) == 0) {
    w.dev = makedev(sx.stx_dev_major, sx.stx_dev_minor);
    w.ino = static_cast<ino_t>(sx.stx_ino);
    w.mode = sx.stx_mode;
    w.has_mnt = (sx.stx_mask & STATX_MNT_ID) != 0;
    w.mnt = sx.stx_mnt_id;
    w.mount_root = (sx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) && (sx.stx_attributes & STATX_ATTR_MOUNT_ROOT);
    return true;
  }
  if (errno != ENOSYS) return false;
#endif
  struct stat st;
  if (::fstatat(dirfd, name, &st, flags) != 0) return false;
  w.dev = st.st_dev;
  w.ino = st.st_ino;
  w.mode = st.st_mode;
  return true;
}

// Whether entering `w` from a tree rooted at `root` would leave root's mount.
bool crosses_mount(const Where& w, const Where& root) {
  return w.dev != root.dev || w.mount_root || (w.has_mnt && root.has_mnt && w.mnt != root.mnt);
}

// The names in the open directory `fd`, without "." and "..".
bool list_dir(int fd, std::vector<std::string>& names) {
  const int d = ::dup(fd);
  if (d < 0) return false;
  DIR* dp = ::fdopendir(d);
  if (!dp) {
    ::close(d);
    return false;
  }
  ::rewinddir(dp);
  errno = 0;
  while (const dirent* e = ::readdir(dp)) {
    if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) names.emplace_back(e->d_name);
    errno = 0;
  }
  const bool ok = errno == 0;
  ::closedir(dp);
  return ok;
}

constexpr int kMaxTreeDepth = 64;

void check_tree(int fd, const Where& root, const fs::path& at, const std::string& shown,
                const std::vector<InputFile>& inputs, int depth) {
  if (depth > kMaxTreeDepth)
    throw InputError{at.string() + ": nested deeper than " + std::to_string(kMaxTreeDepth) +
                     " directories inside the output directory " + shown + "; refusing to delete it"};
  std::vector<std::string> names;
  if (!list_dir(fd, names)) throw InputError{at.string() + ": cannot list: " + std::strerror(errno)};
  for (const std::string& name : names) {
    Where w;
    if (!where_at(fd, name.c_str(), w)) continue;  // gone meanwhile
    const fs::path p = at / name;
    for (const InputFile& in : inputs)
      if (in.has_id && in.dev == w.dev && in.ino == w.ino)
        throw InputError{in.shown + ": this input lies inside the output directory " + shown + " (as " + p.string() +
                         "); refusing to replace it"};
    if (!S_ISDIR(w.mode)) continue;
    if (crosses_mount(w, root))
      throw InputError{p.string() + ": a mount point inside the output directory " + shown +
                       "; --overwrite never deletes across mounts"};
    const Fd c(::openat(fd, name.c_str(), kDirOpen));
    if (!c) throw InputError{p.string() + ": cannot open: " + std::strerror(errno)};
    check_tree(c.get(), root, p, shown, inputs, depth + 1);
  }
}

// Empties the open directory `fd`, staying on root's mount.
bool empty_tree(int fd, const Where& root, int depth) {
  if (depth > 4 * kMaxTreeDepth) return false;
  std::vector<std::string> names;
  if (!list_dir(fd, names)) return false;
  bool ok = true, marked = false;
  for (const std::string& name : names) {
    // The marker goes last: a removal cut short (SIGKILL) leaves a
    // directory a later run still recognises as the tool's and finishes.
    if (depth == 0 && name == kMarkerFile) {
      marked = true;
      continue;
    }
    Where w;
    if (!where_at(fd, name.c_str(), w)) {
      ok = ok && errno == ENOENT;
      continue;
    }
    if (S_ISDIR(w.mode)) {
      if (crosses_mount(w, root)) {
        ok = false;
        continue;
      }
      const Fd c(::openat(fd, name.c_str(), kDirOpen));
      Where cw;
      // What was opened must be what was examined: a mount made meanwhile
      // shows up here as another mount's root.
      if (!c || !where_at(c.get(), "", cw) || cw.dev != w.dev || cw.ino != w.ino || crosses_mount(cw, root) ||
          !empty_tree(c.get(), root, depth + 1)) {
        ok = false;
        continue;
      }
      if (::unlinkat(fd, name.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT) ok = false;
    } else if (::unlinkat(fd, name.c_str(), 0) != 0 && errno != ENOENT) {
      ok = false;
    }
  }
  if (marked && ok && ::unlinkat(fd, kMarkerFile, 0) != 0 && errno != ENOENT) ok = false;
  return ok;
}

fs::path parent_of(const fs::path& p) { return p.has_parent_path() ? p.parent_path() : fs::path("."); }

}  // namespace

void check_removable(const fs::path& dir, const std::string& shown, const std::vector<InputFile>& inputs) {
  const Fd parent(::open(parent_of(dir).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  const Fd fd(::open(dir.c_str(), kDirOpen));
  if (!parent || !fd) return;  // check_replaceable names what is wrong
  Where root, up;
  if (!where_at(fd.get(), "", root) || !where_at(parent.get(), "", up))
    throw InputError{shown + ": cannot stat: " + std::strerror(errno)};
  if (crosses_mount(root, up))
    throw InputError{shown + ": the output directory is a mount point; --overwrite never deletes across mounts"};
  check_tree(fd.get(), root, fs::path(shown), shown, inputs, 0);
}

bool remove_tree(const fs::path& path) noexcept {
  try {
    const Fd parent(::open(parent_of(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!parent) return errno == ENOENT;
    const std::string name = path.filename().string();
    Where w, up;
    if (!where_at(parent.get(), name.c_str(), w)) return errno == ENOENT;
    if (!S_ISDIR(w.mode)) return ::unlinkat(parent.get(), name.c_str(), 0) == 0 || errno == ENOENT;
    if (!where_at(parent.get(), "", up) || crosses_mount(w, up)) return false;
    const Fd fd(::openat(parent.get(), name.c_str(), kDirOpen));
    Where root;
    if (!fd || !where_at(fd.get(), "", root) || root.dev != w.dev || root.ino != w.ino ||
        !empty_tree(fd.get(), root, 0))
      return false;
    return ::unlinkat(parent.get(), name.c_str(), AT_REMOVEDIR) == 0 || errno == ENOENT;
  } catch (...) {
    return false;
  }
}

int rename_noreplace(int from_dir, const char* from, int to_dir, const char* to) noexcept {
  if (::renameat2(from_dir, from, to_dir, to, RENAME_NOREPLACE) == 0) return 0;
  if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP) return -1;
  struct stat st;
  if (::fstatat(to_dir, to, &st, AT_SYMLINK_NOFOLLOW) == 0) {
    errno = EEXIST;
    return -1;
  }
  return ::renameat(from_dir, from, to_dir, to);
}

int lock_directory(const fs::path& dir) noexcept {
  const int fd = ::open(dir.c_str(), kDirOpen);
  if (fd < 0) return -1;
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

void remove_stale_staging(const fs::path& parent, const std::string& prefix, const fs::path& restore,
                          const std::string& staged_prefix) noexcept {
  try {
    const Fd pfd(::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    std::vector<std::string> names;
    if (!pfd || !list_dir(pfd.get(), names)) return;
    struct Stale {
      std::string name;
      struct timespec mtime;
    };
    std::vector<Stale> stale;
    std::vector<std::unique_ptr<Fd>> held;  // the locks, kept until the removal is done
    for (const std::string& name : names) {
      if (name.compare(0, prefix.size(), prefix) != 0) continue;
      // <pid>-<tag>: decimal, then hexadecimal (decimal in earlier versions).
      const std::string tag = name.substr(prefix.size());
      const std::size_t dash = tag.find('-');
      if (dash == 0 || dash == std::string::npos || dash + 1 == tag.size() ||
          tag.find_first_not_of("0123456789") < dash ||
          tag.find_first_not_of("0123456789abcdef", dash + 1) != std::string::npos)
        continue;
      // A process of an earlier version, which did not lock, may still run.
      errno = 0;
      const long pid = std::strtol(tag.substr(0, dash).c_str(), nullptr, 10);
      if (errno == 0 && pid > 0 && pid <= INT_MAX && pid != static_cast<long>(::getpid()) &&
          tag.size() - dash - 1 < 16 && (::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH))
        continue;
      auto fd = std::make_unique<Fd>(::openat(pfd.get(), name.c_str(), kDirOpen));
      if (!*fd || ::flock(fd->get(), LOCK_EX | LOCK_NB) != 0) continue;  // a live owner holds it
      struct stat ms, ds;
      std::vector<std::string> inside;
      if (::fstat(fd->get(), &ds) != 0) continue;
      if (::fstatat(fd->get(), kMarkerFile, &ms, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(ms.st_mode)) {
        // Unmarked: the tool's only when empty (an empty directory that was
        // replaced is a previous output like any other).
        if (!list_dir(fd->get(), inside) || !inside.empty()) continue;
      }
      stale.push_back({name, ds.st_mtim});
      held.push_back(std::move(fd));
    }
    if (!restore.empty() && !stale.empty()) {
      struct stat rs;
      if (::lstat(restore.c_str(), &rs) != 0 && errno == ENOENT) {
        // A publish without an exchange died between its two renames: the
        // previous output at <prefix><tag>, the new one, complete, still at
        // <staged_prefix><tag>. The first rename was the run's commit point,
        // so the new one is published; the previous one goes below.
        bool done = false;
        for (const Stale& s : stale) {
          const std::string staged = staged_prefix + s.name.substr(prefix.size());
          const Fd sfd(staged_prefix.empty() ? -1 : ::openat(pfd.get(), staged.c_str(), kDirOpen));
          struct stat ms;
          if (!sfd || ::flock(sfd.get(), LOCK_EX | LOCK_NB) != 0 ||
              ::fstatat(sfd.get(), kMarkerFile, &ms, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(ms.st_mode))
            continue;
          done = rename_noreplace(pfd.get(), staged.c_str(), AT_FDCWD, restore.c_str()) == 0;
          break;
        }
        // Otherwise (a run of an earlier version) the newest previous output is put back.
        auto newest = std::max_element(stale.begin(), stale.end(), [](const Stale& a, const Stale& b) {
          return a.mtime.tv_sec != b.mtime.tv_sec ? a.mtime.tv_sec < b.mtime.tv_sec : a.mtime.tv_nsec < b.mtime.tv_nsec;
        });
        if (!done && rename_noreplace(pfd.get(), newest->name.c_str(), AT_FDCWD, restore.c_str()) == 0) {
          stale.erase(newest);
          done = true;
        }
        if (!done) return;  // nothing is removed while the output is missing
        (void)::fsync(pfd.get());
      }
    }
    for (const Stale& s : stale) (void)remove_tree(parent / s.name);
  } catch (...) {
  }
}

}  // namespace loftq_cli
