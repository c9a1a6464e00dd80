#include "staged_output.hpp"
#include "interrupt.hpp"
#include "staging_files.hpp"

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

namespace loftq_cli {

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
      // The set is published by swapping DIR whole (publish_update), so DIR
      // may hold nothing else, and must be a directory its parent can rename:
      // one updated file by file would hold a mixed set after a crash. (Runs
      // of earlier versions staged inside DIR; their leftovers go first.)
      remove_stale_staging(dir_, ".loftq-tmp-");
      check_updatable();
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
  make_parents();
  clean_leftovers(dir_);
  check_interrupt();
  for (int k = 0;; ++k) {
    fs::path t = dir_;
    t += ".tmp-" + loftq::io::unique_tag();
    if (::mkdir(t.c_str(), 0777) == 0) {
      stage_ = t;
      remember_staging(stage_.string(), shown_.string());
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
      // may remove if this process dies before publishing.
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
        if (interrupted()) {
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

void StagedOutput::check_updatable() const {
  const std::string shown = shown_.string();
  const std::string what =
      "; init replaces its files only by swapping in a whole new directory, so that a crash "
      "never leaves a mixed set";
  const std::string foreign = foreign_entry(dir_, names_);
  if (!foreign.empty())
    throw InputError{shown + ": holds '" + printable(foreign) + "', not a file init writes" + what +
                     "; move the other files out of it, or choose another --output"};
  if (!only_tool_files(dir_, names_))
    throw InputError{shown + ": not an earlier init's output (no " + kMarkerFile + " file, or not regular files)" +
                     what + "; remove those files, or choose another --output"};
  struct stat ls;
  if (::lstat(dir_.c_str(), &ls) == 0 && S_ISLNK(ls.st_mode))
    throw InputError{shown + ": is a symbolic link" + what + "; name the directory it leads to as --output"};
  const fs::path parent = dir_.has_parent_path() ? dir_.parent_path() : fs::path(".");
  struct stat ds, ps;
  if (::stat(dir_.c_str(), &ds) != 0 || ::stat(parent.c_str(), &ps) != 0 || ds.st_dev != ps.st_dev)
    throw InputError{shown + ": is a mount point (or cannot be examined)" + what +
                     "; choose a directory inside it as --output"};
  if (::access(parent.c_str(), W_OK | X_OK) != 0)
    throw InputError{shown + ": its parent directory is not writable (" + std::string(std::strerror(errno)) + ")" +
                     what + "; choose another --output"};
}

void StagedOutput::publish() {
  fsync_dir(stage_);
  const PublishLock lock(dir_);
  if (exists_ && policy_ == Existing::update)
    publish_update();
  else
    publish_dir();
}

StagedOutput::Previous StagedOutput::swap_in() {
  const fs::path parent = dir_.has_parent_path() ? dir_.parent_path() : fs::path(".");
  Previous prev;
  // One atomic step swaps the complete new output with the complete old one:
  // a crash on either side of it leaves one of them at DIR, and the other at
  // the staging name, unlocked and marked, which the next run removes.
  if (::renameat2(AT_FDCWD, stage_.c_str(), AT_FDCWD, dir_.c_str(), RENAME_EXCHANGE) == 0) {
    prev.path = stage_;
  } else {
    if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP)
      throw InputError{shown_.string() + ": cannot replace the existing output: " + std::strerror(errno)};
    // Fallback for file systems without RENAME_EXCHANGE: two renames, with
    // DIR missing between them. The previous output goes aside under the
    // staging directory's tag, locked while it is there, so a run that finds
    // DIR missing and both DIR.old-<tag> and DIR.tmp-<tag> unlocked knows the
    // publish died between the renames and finishes it (clean_leftovers).
    const std::string staged = stage_.filename().string();
    prev.path = dir_;
    prev.path += ".old-" + staged.substr(staged.rfind(".tmp-") + 5);
    std::error_code ec;
    if (fs::exists(fs::symlink_status(prev.path, ec)))
      throw InputError{shown_.string() + ": cannot move the existing output aside: " + prev.path.filename().string() +
                       " exists"};
    prev.lock = lock_directory(dir_);
    if (prev.lock < 0) throw InputError{shown_.string() + ": cannot lock the existing output: " + std::strerror(errno)};
    if (::rename(dir_.c_str(), prev.path.c_str()) != 0) {
      const int e = errno;
      ::close(prev.lock);
      throw InputError{shown_.string() + ": cannot move the existing output aside: " + std::strerror(e)};
    }
    if (::rename(stage_.c_str(), dir_.c_str()) != 0) {
      const int e = errno;
      (void)rename_noreplace(AT_FDCWD, prev.path.c_str(), AT_FDCWD, dir_.c_str());
      ::close(prev.lock);
      throw InputError{shown_.string() + ": cannot publish the output directory: " + std::strerror(e)};
    }
    // The previous output, no longer to be put back, takes the staging name
    // (where the exchange leaves it): a removal cut short is never restored.
    if (::rename(prev.path.c_str(), stage_.c_str()) == 0) prev.path = stage_;
  }
  stage_.clear();
  created_dirs_.clear();
  release_stage_lock();
  fsync_dir(parent);
  return prev;
}

void StagedOutput::publish_update() {
  // DIR may have changed since the checks before the work; under the publish
  // lock, the same checks again (a file that appeared meanwhile stays, and
  // nothing is replaced).
  check_updatable();
  check_interrupt();  // the commit point
  const Previous prev = swap_in();
  // The previous set goes; whatever else appeared in DIR since the check is
  // put back into it (never replacing a file of the new set).
  std::error_code ec;
  for (const std::string& n : names_) ::unlink((prev.path / n).c_str());
  std::vector<fs::path> rest;
  for (fs::directory_iterator it(prev.path, ec), end; !ec && it != end; it.increment(ec))
    if (it->path().filename() != kMarkerFile) rest.push_back(it->path());
  for (const fs::path& p : rest) (void)rename_noreplace(AT_FDCWD, p.c_str(), AT_FDCWD, (dir_ / p.filename()).c_str());
  ::unlink((prev.path / kMarkerFile).c_str());
  if (::rmdir(prev.path.c_str()) != 0)
    std::fprintf(stderr, "loftq: warning: %s: the previous files could not all be removed or put back\n",
                 printable(prev.path.string()).c_str());
  if (prev.lock >= 0) ::close(prev.lock);
}

void StagedOutput::publish_dir() {
  check_interrupt();  // the commit point
  const fs::path parent = dir_.has_parent_path() ? dir_.parent_path() : fs::path(".");
  if (!exists_) {
    // RENAME_NOREPLACE: a DIR created meanwhile, even empty, is someone else's.
    if (rename_noreplace(AT_FDCWD, stage_.c_str(), AT_FDCWD, dir_.c_str()) != 0) {
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
  const Previous prev = swap_in();
  remove_old(prev.path);
  if (prev.lock >= 0) ::close(prev.lock);
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

void StagedOutput::discard() noexcept {
  if (!stage_.empty()) (void)remove_tree(stage_);
  release_stage_lock();
  for (auto it = created_dirs_.rbegin(); it != created_dirs_.rend(); ++it) ::rmdir(it->c_str());
  stage_.clear();
  created_dirs_.clear();
}

}  // namespace loftq_cli
