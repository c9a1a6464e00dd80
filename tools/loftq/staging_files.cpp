#include "staging_files.hpp"

#include "errors.hpp"
#include "interrupt.hpp"
#include "path_safety.hpp"

#include <loftq/io/file.hpp>

#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <system_error>
#include <thread>

namespace loftq_cli {

namespace {

constexpr std::size_t kSyncPiece = std::size_t(64) << 20;

// Writes size bytes at file offset at, in 32 MB pieces, each handed to the
// disk as soon as it is in the page cache (Linux: writeback started, not
// waited for), so the caller's fsync waits for the last piece rather than
// the whole file. Returns 0 or an errno value (ECANCELED after a signal).
int write_at(int fd, const unsigned char* data, std::size_t size, off_t at) {
  constexpr std::size_t kPiece = std::size_t(32) << 20;
  std::size_t off = 0;
  while (off < size) {
    if (interrupted()) return ECANCELED;
    const ssize_t n = ::pwrite(fd, data + off, std::min(size - off, kPiece), at + static_cast<off_t>(off));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno;
    if (n == 0) return EIO;
#if defined(__linux__)
    // Advisory: a file system without it (EINVAL, ESPIPE) just waits for the fsync.
    (void)::sync_file_range(fd, at + static_cast<off_t>(off), n, SYNC_FILE_RANGE_WRITE);
#endif
    off += static_cast<std::size_t>(n);
  }
  return 0;
}

// A file being created in the staging directory at `path`; messages name
// `shown`, the file's place in the output as the user named it, since the
// staging directory is gone by the time anyone reads them.
class NewFile {
 public:
  NewFile(std::string path, std::string shown) : path_(std::move(path)), shown_(std::move(shown)) {
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd_ < 0) throw InputError{shown_ + ": cannot create: " + std::strerror(errno)};
  }
  NewFile(const NewFile&) = delete;
  NewFile& operator=(const NewFile&) = delete;
  ~NewFile() {
    if (fd_ >= 0) {
      ::close(fd_);
      ::unlink(path_.c_str());
    }
  }
  int fd() const { return fd_; }

  // Turns write_at's result into the failure it stands for.
  void check(int e) const {
    if (e == ECANCELED) throw Interrupted{};
    if (e != 0) throw InputError{shown_ + ": write failed: " + std::strerror(e)};
  }

  // Syncs `total` bytes, piece by piece so that a signal is acted on within
  // one piece, and closes.
  void finish(std::size_t total) {
#if defined(__linux__)
    for (std::size_t at = 0; at < total; at += kSyncPiece) {
      if (interrupted()) throw Interrupted{};
      if (::sync_file_range(fd_, static_cast<off_t>(at), static_cast<off_t>(kSyncPiece),
                            SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER) != 0)
        break;  // not supported here: the fsync does it all
    }
#else
    (void)total;
#endif
    if (interrupted()) throw Interrupted{};
    if (::fsync(fd_) != 0 && errno != EINVAL && errno != EROFS)
      throw InputError{shown_ + ": fsync failed: " + std::strerror(errno)};
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) {
      const int ce = errno;
      ::unlink(path_.c_str());
      throw InputError{shown_ + ": close failed: " + std::strerror(ce)};
    }
  }

 private:
  std::string path_, shown_;
  int fd_ = -1;
};

}  // namespace

// Creates `path` (which must not exist) with `bytes` then `more`; every failure throws.
// A `more` of 64 MB or more (Q.npy from 4096x4096 up) is written by two
// threads, half each: copying into the page cache is most of a write's time,
// and at 4096x4096 `init`'s write of Q and its fsync took about 30 ms, a
// sixth of the computation before them.
void write_new_file(const std::string& path, const std::string& shown, const unsigned char* bytes, std::size_t size,
                    const unsigned char* more, std::size_t more_size) {
  NewFile f(path, shown);
  const int fd = f.fd();
  int e = write_at(fd, bytes, size, 0);
  if (e == 0 && more_size > 0) {
    const off_t at = static_cast<off_t>(size);
    if (more_size >= (std::size_t(64) << 20)) {
      const std::size_t half = more_size / 2;
      int e2 = 0;
      std::thread second([&] { e2 = write_at(fd, more + half, more_size - half, at + static_cast<off_t>(half)); });
      e = write_at(fd, more, half, at);
      second.join();
      if (e == 0) e = e2;
    } else {
      e = write_at(fd, more, more_size, at);
    }
  }
  f.check(e);
  f.finish(size + more_size);
}

// Copies the regular file `src` to the new file `path`, in pieces with a
// signal check between them. Failures name `src` when reading and `shown`
// when writing: a full disk is not the input's fault.
void copy_new_file(const fs::path& src, const std::string& path, const std::string& shown) {
  const int in = ::open(src.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (in < 0) throw InputError{src.string() + ": cannot open: " + std::strerror(errno)};
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{in};
  struct stat st;
  if (::fstat(in, &st) != 0 || !S_ISREG(st.st_mode)) throw InputError{src.string() + ": not a regular file"};
  NewFile f(path, shown);
  constexpr std::size_t kPiece = std::size_t(16) << 20;
  std::vector<unsigned char> buf(std::min<std::size_t>(kPiece, static_cast<std::size_t>(st.st_size) + 1));
  std::size_t total = 0;
  for (;;) {
    if (interrupted()) throw Interrupted{};
    const ssize_t n = ::read(in, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw InputError{src.string() + ": read failed: " + std::strerror(errno)};
    if (n == 0) break;
    f.check(write_at(f.fd(), buf.data(), static_cast<std::size_t>(n), static_cast<off_t>(total)));
    total += static_cast<std::size_t>(n);
  }
  f.finish(total);
}

void fsync_dir(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    (void)::fsync(fd);
    ::close(fd);
  }
}

// <pid>-<16 hex digits>: the pid for whoever looks at the directory, the
// random part so that no name is predictable from the pid alone (every
// container's first process is pid 1). Creation is O_EXCL / mkdir anyway.
// Leftovers of runs that died (SIGKILL, power loss) for the output `dir`:
// when `dir` is missing, a publish died between its two renames, and is
// finished (or, for an earlier version's leftovers, undone); every other
// leftover is removed.
void clean_leftovers(const fs::path& dir) {
  const fs::path parent = dir.has_parent_path() ? dir.parent_path() : fs::path(".");
  const std::string name = dir.filename().string();
  remove_stale_staging(parent, name + ".old-", dir, name + ".tmp-");
  remove_stale_staging(parent, name + ".tmp-");
}

// The output is staged and published beside itself as NAME.tmp-TAG and
// NAME.old-TAG, so a name that leaves no room for the suffix would fail only
// after the compute, naming a staging path. Refused up front instead.
void check_name_length(const fs::path& dir, const fs::path& shown) {
  const std::size_t suffix = std::string(".tmp-").size() + loftq::io::unique_tag().size() + 3;  // room for a longer PID
  long name_max = 255;
  std::error_code ec;
  for (fs::path p = fs::absolute(dir, ec).parent_path(); !p.empty(); p = p.parent_path()) {
    if (fs::is_directory(fs::status(p, ec))) {
      const long v = ::pathconf(p.c_str(), _PC_NAME_MAX);
      if (v > 0) name_max = v;
      break;
    }
    if (p == p.root_path()) break;
  }
  const std::size_t len = dir.filename().string().size();
  if (len + suffix > static_cast<std::size_t>(name_max))
    throw InputError{shown.string() + ": output name is too long: " + std::to_string(len) + " bytes, and staging it " +
                     "beside itself needs " + std::to_string(suffix) + " more within the filesystem's limit of " +
                     std::to_string(name_max)};
}

// True when DIR is empty or holds the marker and otherwise only regular
// files named in `names`: the whole directory can then be swapped for the
// new set, and the old one (marked, so a later run may remove it after a
// crash) removed without touching anything else.
bool only_tool_files(const fs::path& dir, const std::vector<std::string>& names) {
  std::error_code ec;
  bool any = false, marked = false;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string n = it->path().filename().string();
    if (n != kMarkerFile && std::find(names.begin(), names.end(), n) == names.end()) return false;
    if (!fs::is_regular_file(it->symlink_status(ec))) return false;
    any = true;
    marked = marked || n == kMarkerFile;
  }
  return !ec && (marked || !any);
}

std::string foreign_entry(const fs::path& dir, const std::vector<std::string>& names) {
  std::error_code ec;
  std::vector<std::string> found;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string n = it->path().filename().string();
    if (n != kMarkerFile && std::find(names.begin(), names.end(), n) == names.end()) found.push_back(n);
  }
  // The first by name, so that the message does not depend on the directory's order.
  return found.empty() ? std::string() : *std::min_element(found.begin(), found.end());
}

}  // namespace loftq_cli
