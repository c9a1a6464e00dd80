#pragma once
// Where the tool may write, decided once for every command: paths are
// compared the way the OS resolves them (symbolic links followed, ".."
// applied to the directory it really names), never as text.
//
//   * An output is refused when it is an input, contains one, or would
//     replace one; every file a command reads is listed as an input.
//   * --overwrite deletes a directory only when it carries kMarkerFile (a
//     directory the tool published) or is empty.
//   * A file of the checkpoint may not share a name with a file the tool
//     writes next to it.

#include <sys/types.h>

#include <filesystem>
#include <string>
#include <vector>

namespace loftq_cli {

namespace fs = std::filesystem;

// Written into every directory the tool publishes as a whole (and into its
// staging directory), so --overwrite and the stale-staging cleanup can tell
// the tool's directories from anyone else's.
constexpr const char* kMarkerFile = ".loftq-output";

// `p` resolved as the OS resolves it, absolute: every existing component is
// resolved (symbolic links included) except the last, which names the entry
// itself. Components below a missing directory are kept as written; a ".."
// there throws InputError, as the OS cannot resolve it either.
fs::path resolve_location(const std::string& p);

// One file or directory a command reads.
struct InputFile {
  std::string shown;  // as the user named it (for messages)
  fs::path real;      // fully resolved; empty when it cannot be (a pipe)
  bool has_id = false;
  dev_t dev = 0;
  ino_t ino = 0;
};

InputFile input_file(const std::string& path);

// True when `inner` is `outer` or lies below it; both resolved paths.
bool lies_within(const fs::path& inner, const fs::path& outer);

// Whether `entry` (an existing directory entry) is the same file as `in`.
bool same_file(const fs::path& entry, const InputFile& in);

// Throws InputError when the directory `dir` (resolved, existing) may not be
// deleted by --overwrite: not a directory the tool published, and not empty.
void check_replaceable(const fs::path& dir, const std::string& shown);

// Throws InputError when one of `inputs` is `dir` or lies inside it.
void check_not_inside(const fs::path& dir, const std::string& shown, const std::vector<InputFile>& inputs);

// Throws InputError when a checkpoint file (by base name) has the name of a
// file the tool writes into the same output directory.
void check_output_names(const std::vector<std::string>& checkpoint_files, const std::vector<std::string>& tool_files);

// Throws InputError unless deleting the directory `dir` (resolved, existing)
// stays on its own mount and loses no input: nothing below it is a mount
// point (a bind mount of the same file system included) or one of `inputs`
// by device and inode, however that input was named; `dir` itself is not a
// mount point.
void check_removable(const fs::path& dir, const std::string& shown, const std::vector<InputFile>& inputs);

// Deletes `path` and everything below it without following symbolic links
// and without entering another mount: what lies on another mount (or too
// deep to walk) stays, and the result is false. A missing path is true.
bool remove_tree(const fs::path& path) noexcept;

// renameat(2) that never replaces an existing `to` (0, or -1 and errno):
// RENAME_NOREPLACE, or on a file system without renameat2's flags a check
// that `to` is missing, then a plain rename.
int rename_noreplace(int from_dir, const char* from, int to_dir, const char* to) noexcept;

// Locks the directory `dir` (a descriptor kept open, flock) for as long as
// the returned descriptor is open: the mark of a live owner, whichever PID
// namespace it runs in. -1 when it cannot be opened or locked.
int lock_directory(const fs::path& dir) noexcept;

// Removes the staging directories <prefix><tag> in `parent` whose owner is
// gone (SIGKILL, power loss): those nobody holds locked (lock_directory) and
// that carry kMarkerFile, or are empty, so nothing the tool did not create
// goes. When `restore` is non-empty and does not exist, a publish died
// between moving the previous output aside (to <prefix><tag>) and renaming
// its staging directory in: when that staging directory is still there as
// <staged_prefix><tag>, unlocked and marked, it becomes `restore` (the run
// had passed its commit point); otherwise the newest such previous output is
// renamed back to `restore` instead of deleted.
void remove_stale_staging(const fs::path& parent, const std::string& prefix, const fs::path& restore = {},
                          const std::string& staged_prefix = {}) noexcept;

}  // namespace loftq_cli
