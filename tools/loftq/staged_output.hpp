#pragma once
// The one way the tool writes output: everything goes into a staging
// directory first, and only a complete result is published, by rename.
//
//   * DIR missing: the staging directory is a fresh sibling DIR.tmp-<tag>
//     (missing parents of DIR are created, and removed again on failure),
//     renamed to DIR at the end (never over a DIR created meanwhile).
//   * DIR exists, policy replace (--overwrite), and DIR carries the marker
//     file of a directory the tool published (or is empty), and deleting it
//     loses no input and crosses no mount (path_safety.hpp): the same
//     sibling, swapped with DIR in one step at the end (RENAME_EXCHANGE), then
//     the old output, now at the sibling's name, removed. Where the file
//     system has no exchange, DIR is moved aside to DIR.old-<tag> (the
//     sibling's tag) first, the sibling renamed to DIR, and the old output
//     then to the sibling's name; a run that finds DIR missing finishes a
//     dead run's publish from the pair DIR.old-<tag> / DIR.tmp-<tag>. Either
//     way DIR holds a complete output whenever it exists.
//   * DIR exists, policy update (init): only the named files are replaced and
//     DIR must hold nothing but them and the marker (an earlier init's
//     output), or nothing; it is staged as the sibling DIR.tmp-<tag> and
//     swapped with DIR in one step (RENAME_EXCHANGE, or the two renames
//     above), so DIR never holds a mixed set. A DIR with other files, a mount
//     point, or one whose parent is not writable is refused before any work:
//     it could only be updated file by file.
//   * DIR exists, policy refuse: an error before any work.
//
// <tag> is <pid>-<16 random hex digits>. Every staging directory carries the
// marker file (path_safety.hpp) and is flock'ed by its process while it is
// in use, so a later run for the same DIR removes those nobody holds (their
// process was killed by SIGKILL, or the machine went down), whatever PID
// namespace they came from.
//
// Signals: until stage() a SIGINT/SIGTERM/SIGHUP ends the process at once
// (exit 130; nothing is on disk). From stage() on, the handler only raises a
// flag (and Options::cancel, see cancel_flag()); check_interrupt() turns it
// into Interrupted, and the destructor of an unpublished StagedOutput removes
// everything it created. publish() checks the flag one last time just before
// its commit point.

#include "interrupt.hpp"
#include "path_safety.hpp"

#include <atomic>
#include <filesystem>
#include <string>
#include <vector>

namespace loftq_cli {

namespace fs = std::filesystem;

// DIR without trailing separators, so that DIR + ".tmp-..." is a sibling.
fs::path normalize_output(const std::string& out);

class StagedOutput {
 public:
  enum class Existing { update, replace, refuse };

  // Checks DIR before any work (path_safety.hpp); throws InputError when it
  // cannot be published. `inputs`, every file the command reads, must stay
  // untouched: none may be replaced (update) or lie inside DIR (replace), and
  // replace deletes only a directory the tool published or an empty one.
  // `names` are the files an update replaces.
  StagedOutput(const std::string& dir, Existing policy, const std::vector<std::string>& inputs,
               const std::vector<std::string>& names = {});
  StagedOutput(const StagedOutput&) = delete;
  StagedOutput& operator=(const StagedOutput&) = delete;
  ~StagedOutput();  // removes whatever was not published

  // DIR as the user named it (for messages); the tool works on its resolved form.
  const fs::path& dir() const { return shown_; }

  // Enters the publishing window (see above) and creates the staging
  // directory; returns it. Call once.
  const fs::path& stage();
  fs::path path(const std::string& name) const { return stage_ / name; }

  // Writes a new file in the staging directory.
  void write_file(const std::string& name, const std::string& bytes);
  void write_file(const std::string& name, const std::vector<unsigned char>& bytes);
  // ...made of `head` then `size` bytes at `data`, without joining them first.
  void write_file(const std::string& name, const std::string& head, const void* data, std::size_t size);
  // Copies `src` into the staging directory under `name`.
  void copy_file(const fs::path& src, const std::string& name);

  // Makes the staged files the output (the commit point is the first rename).
  void publish();

 private:
  // Where the previous DIR went, and the lock held on it while it is aside.
  struct Previous {
    fs::path path;
    int lock = -1;
  };
  void make_parents();
  void check_updatable() const;  // throws InputError when DIR cannot be updated in one step
  Previous swap_in();            // the staging directory becomes DIR
  void publish_dir();
  void publish_update();
  void discard() noexcept;
  void remove_old(const fs::path& old);
  void release_stage_lock() noexcept;

  fs::path shown_, dir_, stage_;
  Existing policy_;
  bool exists_ = false;
  std::vector<InputFile> ins_;
  int stage_lock_ = -1;             // flock on the staging directory, held while it is ours
  std::vector<std::string> names_;  // update: the files it replaces
  std::vector<fs::path> created_dirs_;
};

}  // namespace loftq_cli
