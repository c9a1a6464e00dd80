#pragma once
// The two ways the file formats touch the disk (POSIX):
//
//   ReadOnlyFile   a regular file opened once, read with pread at any offset.
//                  Its size and modification time are checked on every read,
//                  so a file that shrinks or is rewritten while open is a
//                  loftq::Error, never a short read taken for data (or the
//                  SIGBUS a memory map would raise).
//   AtomicFile     a new file written at known offsets under an unpredictable
//                  temporary name next to the target, renamed into place by commit(); one
//                  destroyed without commit() is removed.

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "loftq/error.hpp"

namespace loftq {
namespace io {
namespace detail {

class ReadOnlyFile {
 public:
  ReadOnlyFile() = default;
  ReadOnlyFile(const ReadOnlyFile&) = delete;
  ReadOnlyFile& operator=(const ReadOnlyFile&) = delete;
  ReadOnlyFile(ReadOnlyFile&& o) noexcept { swap(o); }
  ReadOnlyFile& operator=(ReadOnlyFile&& o) noexcept {
    if (this != &o) {
      close();
      swap(o);
    }
    return *this;
  }
  ~ReadOnlyFile() { close(); }

  void open(const std::string& path) {
    close();
    path_ = path;
    // O_NONBLOCK: a FIFO in place of the file must not hang the open.
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd_ < 0) ::loftq::detail::fail(Errc::io_error, path + ": cannot open: " + std::strerror(errno));
    struct stat st;
    if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
      close();
      ::loftq::detail::fail(Errc::io_error, path + ": not a regular file");
    }
    size_ = static_cast<std::uint64_t>(st.st_size);
    mtime_ = st.st_mtim;
  }

  void close() noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    size_ = 0;
  }

  bool is_open() const { return fd_ >= 0; }
  const std::string& path() const { return path_; }
  std::uint64_t size() const { return size_; }

  // Exactly n bytes at `at`, or a loftq::Error naming the file.
  void pread_exact(unsigned char* dst, std::uint64_t at, std::uint64_t n) const {
    ::loftq::detail::require(fd_ >= 0, Errc::invalid_argument, path_ + ": file is closed");
    auto changed = [&] {
      ::loftq::detail::fail(Errc::io_error, path_ + ": the file changed while being read (it was " +
                                                std::to_string(size_) + " bytes when opened)");
    };
    struct stat st;
    if (::fstat(fd_, &st) != 0) ::loftq::detail::fail(Errc::io_error, path_ + ": cannot stat: " + std::strerror(errno));
    if (static_cast<std::uint64_t>(st.st_size) != size_ || st.st_mtim.tv_sec != mtime_.tv_sec ||
        st.st_mtim.tv_nsec != mtime_.tv_nsec)
      changed();
    while (n > 0) {
      const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(n, std::uint64_t(1) << 30));
      const ssize_t r = ::pread(fd_, dst, want, static_cast<off_t>(at));
      if (r < 0) {
        if (errno == EINTR) continue;
        ::loftq::detail::fail(Errc::io_error, path_ + ": read failed: " + std::strerror(errno));
      }
      if (r == 0) changed();
      dst += r;
      at += static_cast<std::uint64_t>(r);
      n -= static_cast<std::uint64_t>(r);
    }
  }

 private:
  void swap(ReadOnlyFile& o) noexcept {
    std::swap(path_, o.path_);
    std::swap(fd_, o.fd_);
    std::swap(mtime_, o.mtime_);
    std::swap(size_, o.size_);
  }

  std::string path_;
  int fd_ = -1;
  struct timespec mtime_ = {};
  std::uint64_t size_ = 0;
};

// The flag a program raises to stop long writes (a signal handler's, like
// Options::cancel): AtomicFile looks at it between pieces of a large write
// and of its final sync, and gives up with Errc::cancelled. Null: never.
inline std::atomic<const std::atomic<bool>*>& io_cancel_flag() {
  static std::atomic<const std::atomic<bool>*> flag{nullptr};
  return flag;
}

inline bool io_cancelled() {
  const std::atomic<bool>* f = io_cancel_flag().load(std::memory_order_relaxed);
  return f != nullptr && f->load(std::memory_order_relaxed);
}

// "PID-" and 16 random hex digits: a temporary name's suffix that nobody can
// guess, so no input can be named like it; creators still use O_EXCL (or
// mkdir's EEXIST) and retry.
inline std::string unique_tag() {
  std::uint64_t r = 0;
  if (::getrandom(&r, sizeof r, GRND_NONBLOCK) != static_cast<ssize_t>(sizeof r)) {
    // No entropy yet (early boot): the clock and a counter still differ per call.
    static std::atomic<std::uint64_t> counter{0};
    struct timespec ts;
    ::clock_gettime(CLOCK_REALTIME, &ts);
    r = (static_cast<std::uint64_t>(ts.tv_nsec) << 20) ^ static_cast<std::uint64_t>(ts.tv_sec) ^
        ((counter.fetch_add(1) + 1) * 0x9e3779b97f4a7c15ull);
  }
  static const char hex[] = "0123456789abcdef";
  std::string out(16, '0');
  for (int i = 0; i < 16; ++i) out[static_cast<std::size_t>(i)] = hex[(r >> (4 * i)) & 15];
  return std::to_string(static_cast<long>(::getpid())) + "-" + out;
}

class AtomicFile {
 public:
  // Creates <path>.tmp-<pid>-<16 random hex digits>, `size` bytes of zeros.
  // The name is unpredictable, so it cannot be another file's name chosen in
  // advance (a shard named like the temporary of another output file), and
  // O_EXCL refuses the rare one that exists.
  AtomicFile(std::string path, std::uint64_t size) : path_(std::move(path)) {
    for (int k = 0;; ++k) {
      tmp_ = path_ + ".tmp-" + unique_tag();
      fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
      if (fd_ >= 0) break;
      if (errno != EEXIST || k >= 100) {
        const int e = errno;
        tmp_.clear();
        ::loftq::detail::fail(Errc::io_error, path_ + ".tmp: cannot create: " + std::strerror(e));
      }
    }
    if (::ftruncate(fd_, static_cast<off_t>(size)) != 0) fail_io("cannot size the file");
  }
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile() { abandon(); }

  const std::string& path() const { return path_; }

  void pwrite_all(const void* data, std::uint64_t n, std::uint64_t at) {
    ::loftq::detail::require(fd_ >= 0, Errc::invalid_argument, path_ + ": writer is closed");
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      if (io_cancelled()) fail_cancelled();
      const std::size_t chunk = static_cast<std::size_t>(std::min<std::uint64_t>(n, kPiece));
      const ssize_t w = ::pwrite(fd_, p, chunk, static_cast<off_t>(at));
      if (w < 0) {
        if (errno == EINTR) continue;
        fail_io("write failed");
      }
#if defined(__linux__)
      // Writeback starts now (advisory), so the sync in commit() waits for
      // little more than the last piece.
      (void)::sync_file_range(fd_, static_cast<off_t>(at), w, SYNC_FILE_RANGE_WRITE);
#endif
      p += w;
      at += static_cast<std::uint64_t>(w);
      n -= static_cast<std::uint64_t>(w);
    }
  }

  // Syncs, closes and renames into place. A large file is synced piece by
  // piece first, so a cancel is seen within one piece's writeback.
  void commit() {
#if defined(__linux__)
    struct stat st;
    if (::fstat(fd_, &st) == 0) {
      for (std::uint64_t at = 0; at < static_cast<std::uint64_t>(st.st_size); at += kPiece) {
        if (io_cancelled()) fail_cancelled();
        if (::sync_file_range(fd_, static_cast<off_t>(at), static_cast<off_t>(kPiece),
                              SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER) != 0)
          break;  // not supported here: the fsync below does it all
      }
    }
#endif
    if (io_cancelled()) fail_cancelled();
    if (::fsync(fd_) != 0 && errno != EINVAL && errno != EROFS) fail_io("fsync failed");
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) fail_io("close failed");
    if (::rename(tmp_.c_str(), path_.c_str()) != 0) fail_io("cannot rename into place");
    tmp_.clear();
  }

 private:
  static constexpr std::uint64_t kPiece = std::uint64_t(64) << 20;

  [[noreturn]] void fail_cancelled() {
    abandon();
    ::loftq::detail::fail(Errc::cancelled, path_ + ": cancelled");
  }

  [[noreturn]] void fail_io(const char* what) {
    const int e = errno;
    abandon();
    ::loftq::detail::fail(Errc::io_error, path_ + ": " + what + ": " + std::strerror(e));
  }

  void abandon() noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    if (!tmp_.empty()) ::unlink(tmp_.c_str());
    tmp_.clear();
  }

  std::string path_, tmp_;
  int fd_ = -1;
};

}  // namespace detail
}  // namespace io
}  // namespace loftq
