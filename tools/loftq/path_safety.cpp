#include "path_safety.hpp"

#include "errors.hpp"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
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

void remove_stale_staging(const fs::path& parent, const std::string& prefix) noexcept {
  std::error_code ec;
  for (fs::directory_iterator it(parent, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.compare(0, prefix.size(), prefix) != 0) continue;
    // <pid>-<k>, both decimal.
    const std::string tag = name.substr(prefix.size());
    const std::size_t dash = tag.find('-');
    if (dash == 0 || dash == std::string::npos || dash + 1 == tag.size()) continue;
    if (tag.find_first_not_of("0123456789-") != std::string::npos || tag.find('-', dash + 1) != std::string::npos)
      continue;
    errno = 0;
    const long pid = std::strtol(tag.substr(0, dash).c_str(), nullptr, 10);
    if (pid <= 0 || pid == static_cast<long>(::getpid()) || errno != 0 || pid > INT_MAX) continue;
    if (::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;  // alive, or not ours to judge
    struct stat st, ms;
    if (::lstat(it->path().c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) continue;
    if (::lstat((it->path() / kMarkerFile).c_str(), &ms) != 0 || !S_ISREG(ms.st_mode)) continue;
    std::error_code rec;
    fs::remove_all(it->path(), rec);
  }
}

}  // namespace loftq_cli
