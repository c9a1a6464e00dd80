#include "staged_output.hpp"

#include "errors.hpp"
#include "path_safety.hpp"

#include <loftq/io/file.hpp>

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <system_error>
#include <thread>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace loftq_cli {

// ---------------------------------------------------------------------------
// Signals

namespace {

std::atomic<int> g_stage{0};  // 0: nothing staged, 1: staging, 2: the handler is exiting
volatile std::sig_atomic_t g_interrupted = 0;
std::atomic<bool> g_cancel{false};  // Options::cancel: stops a running initialize within a step

extern "C" void on_signal(int) {
  int expected = 0;
  if (g_stage.compare_exchange_strong(expected, 2)) _exit(kExitInterrupted);
  g_interrupted = 1;
  g_cancel.store(true, std::memory_order_relaxed);
}

// Moves to stage 1. If a handler has already claimed the exit, wait for it.
void begin_staging() {
  static_assert(std::atomic<int>::is_always_lock_free && std::atomic<bool>::is_always_lock_free,
                "the signal handler needs lock-free atomics");
  int expected = 0;
  if (!g_stage.compare_exchange_strong(expected, 1)) {
    for (;;) pause();
  }
}

}  // namespace

void install_signal_handlers() {
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (int s : {SIGINT, SIGTERM, SIGHUP}) sigaction(s, &sa, nullptr);
  // The library's file writers stop between pieces when it is raised.
  loftq::io::set_write_cancel_flag(&g_cancel);
  // A closed pipe (`loftq ... | head -1`) or a file-size limit (ulimit -f)
  // must not kill the process with staging on disk: ignored, the write
  // fails with EPIPE or EFBIG instead, which is reported and cleaned up;
  // a summary that cannot be printed after publishing costs nothing.
  std::signal(SIGPIPE, SIG_IGN);
  std::signal(SIGXFSZ, SIG_IGN);
}

void check_interrupt() {
  if (g_interrupted) throw Interrupted{};
}

const std::atomic<bool>* cancel_flag() { return &g_cancel; }

namespace {
// Every staging directory of the process and the output it stands for.
std::vector<std::pair<std::string, std::string>>& staging_names() {
  static std::vector<std::pair<std::string, std::string>> names;
  return names;
}
}  // namespace

std::string user_paths(std::string msg) {
  for (const auto& sn : staging_names()) {
    for (std::size_t at = msg.find(sn.first); at != std::string::npos; at = msg.find(sn.first, at + sn.second.size())) {
      msg.replace(at, sn.first.size(), sn.second);
    }
  }
  return msg;
}

void reset_signal_state() {
  g_interrupted = 0;
  g_cancel.store(false);
  g_stage.store(0);
}

// ---------------------------------------------------------------------------
// Files

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
    if (g_interrupted) return ECANCELED;
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
      if (g_interrupted) throw Interrupted{};
      if (::sync_file_range(fd_, static_cast<off_t>(at), static_cast<off_t>(kSyncPiece),
                            SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER) != 0)
        break;  // not supported here: the fsync does it all
    }
#else
    (void)total;
#endif
    if (g_interrupted) throw Interrupted{};
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

// Creates `path` (which must not exist) with `bytes` then `more`; every failure throws.
// A `more` of 64 MB or more (Q.npy from 4096x4096 up) is written by two
// threads, half each: copying into the page cache is most of a write's time,
// and at 4096x4096 `init`'s write of Q and its fsync took about 30 ms, a
// sixth of the computation before them.
void write_new_file(const std::string& path, const std::string& shown, const unsigned char* bytes, std::size_t size,
                    const unsigned char* more = nullptr, std::size_t more_size = 0) {
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
    if (g_interrupted) throw Interrupted{};
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
// a previous output moved aside by a publish that died half-way is put back
// when `dir` is missing, every other leftover is removed.
void clean_leftovers(const fs::path& dir) {
  const fs::path parent = dir.has_parent_path() ? dir.parent_path() : fs::path(".");
  const std::string name = dir.filename().string();
  remove_stale_staging(parent, name + ".old-", dir);
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

}  // namespace

void start_threads() {
#ifdef _OPENMP
  const int n = omp_get_max_threads();
  // Started together, as the runtime's pool will be, so that a limit on
  // threads or address space refuses them here with a message of ours.
  std::vector<pthread_t> ts;
  int e = 0;
  for (int i = 1; i < n && e == 0; ++i) {
    pthread_t t;
    e = ::pthread_create(
        &t, nullptr, [](void*) -> void* { return nullptr; }, nullptr);
    if (e == 0) ts.push_back(t);
  }
  for (pthread_t t : ts) ::pthread_join(t, nullptr);
  if (e != 0)
    throw InputError{"cannot start " + std::to_string(n) + " threads: " + std::strerror(e) +
                     " (lower --threads or raise the process limits)"};
  // The pool now, while nothing is staged; later parallel regions reuse it.
  std::atomic<int> started{0};
#pragma omp parallel num_threads(n)
  started.fetch_add(1, std::memory_order_relaxed);
  (void)started;
#endif
}

fs::path normalize_output(const std::string& out) {
  fs::path p = fs::path(out).lexically_normal();
  if (!p.has_filename() && p.has_parent_path() && p != p.root_path()) p = p.parent_path();
  return p;
}

// ---------------------------------------------------------------------------
// StagedOutput

StagedOutput::StagedOutput(const std::string& dir, Existing policy, const std::vector<std::string>& inputs,
                           const std::vector<std::string>& names)
    : shown_(normalize_output(dir)), policy_(policy), names_(names) {
  dir_ = resolve_location(dir);
  check_name_length(dir_, shown_);
  for (const std::string& in : inputs) ins_.push_back(input_file(in));
  const std::vector<InputFile>& ins = ins_;
  clean_leftovers(dir_);
  const std::string shown = shown_.string();
  std::error_code ec;
  const fs::file_status st = fs::status(dir_, ec);
  const fs::file_status lst = fs::symlink_status(dir_, ec);
  if (fs::exists(lst) || fs::exists(st)) {
    exists_ = true;
    if (policy_ == Existing::refuse) throw InputError{shown + ": output exists; pass --overwrite to replace it"};
    if (!fs::exists(st)) throw InputError{shown + ": output is a dangling symbolic link"};
    if (!fs::is_directory(st)) throw InputError{shown + ": output exists and is not a directory"};
    if (policy_ == Existing::replace) {
      check_not_inside(dir_, shown, ins);
      check_replaceable(dir_, shown);
      check_removable(dir_, shown, ins);
    } else {
      for (const std::string& name : names_) {
        const fs::path t = dir_ / name;
        for (const InputFile& in : ins)
          if (same_file(t, in))
            throw InputError{in.shown + ": the input file is an output path (" + (shown_ / name).string() +
                             "); refusing to overwrite it"};
        const fs::file_status ts = fs::symlink_status(t, ec);
        if (fs::exists(ts) && fs::is_directory(ts))
          throw InputError{(shown_ / name).string() + ": exists and is a directory"};
      }
    }
    if (::access(dir_.c_str(), W_OK | X_OK) != 0)
      throw InputError{shown + ": output directory is not writable: " + std::strerror(errno)};
    return;
  }
  // DIR is missing: the nearest existing ancestor must be a writable directory.
  fs::path anc = fs::absolute(dir_, ec).parent_path();
  while (!anc.empty()) {
    const fs::file_status as = fs::status(anc, ec);
    if (fs::exists(as)) {
      if (!fs::is_directory(as))
        throw InputError{anc.string() + ": not a directory (in output path " + shown_.string() + ")"};
      if (::access(anc.c_str(), W_OK | X_OK) != 0)
        throw InputError{anc.string() + ": cannot create the output directory there: " + std::strerror(errno)};
      break;
    }
    if (anc == anc.root_path()) break;
    anc = anc.parent_path();
  }
}

StagedOutput::~StagedOutput() { discard(); }

void StagedOutput::make_parents() {
  std::vector<fs::path> missing;
  std::error_code ec;
  for (fs::path p = fs::absolute(dir_, ec).parent_path(); !p.empty(); p = p.parent_path()) {
    if (fs::exists(fs::symlink_status(p, ec))) {
      if (!fs::is_directory(fs::status(p, ec))) throw InputError{p.string() + ": not a directory (in output path)"};
      break;
    }
    missing.push_back(p);
    if (p == p.root_path()) break;
  }
  for (auto it = missing.rbegin(); it != missing.rend(); ++it) {
    if (::mkdir(it->c_str(), 0777) != 0) {
      if (errno == EEXIST) continue;  // created concurrently by someone else: not ours
      throw InputError{it->string() + ": cannot create directory: " + std::strerror(errno)};
    }
    created_dirs_.push_back(*it);
  }
}

const fs::path& StagedOutput::stage() {
  // The OpenMP runtime ends the process when it cannot start its threads;
  // that must happen, if at all, before anything is on disk.
  start_threads();
  begin_staging();
  const bool inside = exists_ && policy_ == Existing::update;
  if (!inside) make_parents();
  if (inside)
    remove_stale_staging(dir_, ".loftq-tmp-");
  else
    clean_leftovers(dir_);
  check_interrupt();
  for (int k = 0;; ++k) {
    fs::path t;
    if (inside) {
      t = dir_ / (".loftq-tmp-" + loftq::io::unique_tag());
    } else {
      t = dir_;
      t += ".tmp-" + loftq::io::unique_tag();
    }
    if (::mkdir(t.c_str(), 0777) == 0) {
      stage_ = t;
      staging_names().emplace_back(stage_.string(), shown_.string());
      // Held until the process ends or publishes: a later run takes the
      // directory for a dead run's only when it can take this lock.
      stage_lock_ = lock_directory(t);
      if (stage_lock_ < 0) {
        const int e = errno;
        ::rmdir(t.c_str());
        stage_.clear();
        throw InputError{shown_.string() + ": cannot lock the staging directory: " + std::strerror(e)};
      }
      // Marks the directory as the tool's from its first moment: what
      // --overwrite may later delete once published, and what a later run
      // may remove if this process dies before publishing (an update
      // publishes only the named files, so the marker stays behind there).
      write_file(kMarkerFile, std::string("written by loftq; 'loftq --overwrite' may replace this directory\n"));
      return stage_;
    }
    if (errno != EEXIST || k >= 100)
      throw InputError{t.string() + ": cannot create directory: " + std::strerror(errno)};
  }
}

void StagedOutput::write_file(const std::string& name, const std::string& bytes) {
  check_interrupt();
  write_new_file(path(name).string(), (shown_ / name).string(), reinterpret_cast<const unsigned char*>(bytes.data()),
                 bytes.size());
}

void StagedOutput::write_file(const std::string& name, const std::vector<unsigned char>& bytes) {
  check_interrupt();
  write_new_file(path(name).string(), (shown_ / name).string(), bytes.data(), bytes.size());
}

void StagedOutput::write_file(const std::string& name, const std::string& head, const void* data, std::size_t size) {
  check_interrupt();
  write_new_file(path(name).string(), (shown_ / name).string(), reinterpret_cast<const unsigned char*>(head.data()),
                 head.size(), static_cast<const unsigned char*>(data), size);
}

void StagedOutput::copy_file(const fs::path& src, const std::string& name) {
  check_interrupt();
  copy_new_file(src, path(name).string(), (shown_ / name).string());
}

namespace {

// Concurrent runs into one output commit one after the other: each run's
// renames happen under an exclusive lock on the output's parent directory,
// so the published set is always one run's, never a mix. A run that expected
// to create DIR and finds another run's DIR fails (publish_dir).
class PublishLock {
 public:
  explicit PublishLock(const fs::path& dir) {
    const fs::path parent = dir.has_parent_path() ? dir.parent_path() : fs::path(".");
    fd_ = ::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd_ < 0) throw InputError{parent.string() + ": cannot open to lock the output: " + std::strerror(errno)};
    // Polled, not a blocking wait: the signal handlers restart system calls
    // (SA_RESTART), so a blocking flock would sit out a SIGTERM for as long
    // as another run holds the lock.
    while (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      const int e = errno;
      if (e == EWOULDBLOCK || e == EINTR) {
        if (g_interrupted) {
          ::close(fd_);
          throw Interrupted{};
        }
        const struct timespec pause_for = {0, 20 * 1000 * 1000};
        ::nanosleep(&pause_for, nullptr);
        continue;
      }
      ::close(fd_);
      throw InputError{parent.string() + ": cannot lock the output: " + std::strerror(e)};
    }
  }
  PublishLock(const PublishLock&) = delete;
  PublishLock& operator=(const PublishLock&) = delete;
  ~PublishLock() { ::close(fd_); }  // releases the lock

 private:
  int fd_ = -1;
};

}  // namespace

void StagedOutput::publish() {
  fsync_dir(stage_);
  const PublishLock lock(dir_);
  if (exists_ && policy_ == Existing::update)
    publish_files();
  else
    publish_dir();
}

void StagedOutput::publish_dir() {
  check_interrupt();  // the commit point
  const fs::path parent = dir_.has_parent_path() ? dir_.parent_path() : fs::path(".");
  if (!exists_) {
    // RENAME_NOREPLACE: a DIR created meanwhile, even empty, is someone else's.
    int r = ::renameat2(AT_FDCWD, stage_.c_str(), AT_FDCWD, dir_.c_str(), RENAME_NOREPLACE);
    if (r != 0 && (errno == EINVAL || errno == ENOSYS)) {
      struct stat st;
      r = ::lstat(dir_.c_str(), &st) == 0 ? (errno = EEXIST, -1) : ::rename(stage_.c_str(), dir_.c_str());
    }
    if (r != 0) {
      const int e = errno;
      throw InputError{shown_.string() + ": cannot publish the output directory: " +
                       (e == ENOTEMPTY || e == EEXIST ? std::string("it was created meanwhile by someone else")
                                                      : std::string(std::strerror(e)))};
    }
    stage_.clear();
    created_dirs_.clear();
    release_stage_lock();
    fsync_dir(parent);
    return;
  }
  // DIR may have changed since the checks before the work; under the publish
  // lock, the same checks again.
  check_replaceable(dir_, shown_.string());
  check_removable(dir_, shown_.string(), ins_);
  // One atomic step swaps the complete new output with the complete old one:
  // a crash on either side of it leaves one of them at DIR, and the other at
  // the staging name, unlocked, which the next run removes.
  if (::renameat2(AT_FDCWD, stage_.c_str(), AT_FDCWD, dir_.c_str(), RENAME_EXCHANGE) == 0) {
    const fs::path old = stage_;
    stage_.clear();
    created_dirs_.clear();
    release_stage_lock();
    fsync_dir(parent);
    remove_old(old);
    return;
  }
  if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP)
    throw InputError{shown_.string() + ": cannot replace the existing output: " + std::strerror(errno)};
  // Fallback for file systems without RENAME_EXCHANGE: two renames, the old
  // output locked while it is aside, so a run that finds DIR missing and an
  // unlocked DIR.old-* puts it back (remove_stale_staging).
  fs::path old;
  for (int k = 0;; ++k) {
    old = dir_;
    old += ".old-" + loftq::io::unique_tag();
    std::error_code ec;
    if (!fs::exists(fs::symlink_status(old, ec))) break;
    if (k >= 100) throw InputError{old.string() + ": names taken"};
  }
  const int old_lock = lock_directory(dir_);
  if (::rename(dir_.c_str(), old.c_str()) != 0) {
    const int e = errno;
    if (old_lock >= 0) ::close(old_lock);
    throw InputError{shown_.string() + ": cannot move the existing output aside: " + std::strerror(e)};
  }
  if (::rename(stage_.c_str(), dir_.c_str()) != 0) {
    const int e = errno;
    (void)::renameat2(AT_FDCWD, old.c_str(), AT_FDCWD, dir_.c_str(), RENAME_NOREPLACE);
    if (old_lock >= 0) ::close(old_lock);
    throw InputError{shown_.string() + ": cannot publish the output directory: " + std::strerror(e)};
  }
  stage_.clear();
  created_dirs_.clear();
  release_stage_lock();
  fsync_dir(parent);
  remove_old(old);
  if (old_lock >= 0) ::close(old_lock);
}

void StagedOutput::remove_old(const fs::path& old) {
  if (!remove_tree(old))
    std::fprintf(stderr, "loftq: warning: %s: the previous output could not be removed completely\n",
                 printable(old.string()).c_str());
}

void StagedOutput::release_stage_lock() noexcept {
  if (stage_lock_ >= 0) ::close(stage_lock_);
  stage_lock_ = -1;
}

void StagedOutput::publish_files() {
  std::error_code ec;
  // Keep the versions about to be replaced (hard links, or copies where the
  // filesystem has none) until the new set is complete.
  std::vector<fs::path> saved(names_.size());
  for (std::size_t i = 0; i < names_.size(); ++i) {
    check_interrupt();
    const fs::path target = dir_ / names_[i];
    if (!fs::exists(fs::symlink_status(target, ec))) continue;
    const fs::path b = stage_ / (".old-" + names_[i]);
    if (::link(target.c_str(), b.c_str()) != 0) {
      const int e = errno;
      ec.clear();
      if (!fs::copy_file(target, b, fs::copy_options::none, ec) || ec)
        throw InputError{target.string() + ": cannot back up the existing file: " + std::strerror(e)};
    }
    saved[i] = b;
  }
  check_interrupt();  // the commit point
  try {
    for (std::size_t i = 0; i < names_.size(); ++i) {
      const fs::path target = dir_ / names_[i];
      if (::rename(path(names_[i]).c_str(), target.c_str()) != 0)
        throw InputError{target.string() + ": cannot replace: " + std::strerror(errno)};
      replaced_.push_back(target);
      backups_.push_back(saved[i]);
    }
  } catch (...) {
    // Undo the renames already done, newest first.
    for (std::size_t i = replaced_.size(); i-- > 0;) {
      if (!backups_[i].empty())
        (void)::rename(backups_[i].c_str(), replaced_[i].c_str());
      else
        ::unlink(replaced_[i].c_str());
    }
    replaced_.clear();
    backups_.clear();
    throw;
  }
  fsync_dir(dir_);
  replaced_.clear();
  backups_.clear();
  (void)remove_tree(stage_);
  stage_.clear();
  release_stage_lock();
}

void StagedOutput::discard() noexcept {
  if (!stage_.empty()) (void)remove_tree(stage_);
  release_stage_lock();
  for (auto it = created_dirs_.rbegin(); it != created_dirs_.rend(); ++it) ::rmdir(it->c_str());
  stage_.clear();
  created_dirs_.clear();
}

}  // namespace loftq_cli
