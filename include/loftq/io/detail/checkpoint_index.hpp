#pragma once
// A sharded checkpoint's model.safetensors.index.json, read as hostile input
// (size-capped, strict JSON, file names that stay inside the directory), and
// the listing of a checkpoint directory.

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "loftq/error.hpp"
#include "loftq/io/detail/header_parser.hpp"
#include "loftq/io/detail/strict_json.hpp"

namespace loftq {
namespace io {
namespace detail {

struct ShardIndex {
  std::map<std::string, std::string> weight_map;  // tensor -> shard file name
  std::set<std::string> shard_names;
  nlohmann::json metadata = nlohmann::json::object();  // the index's "metadata"
  std::uint64_t device = 0, inode = 0;                 // the file read, to tell it from one put at its path later
};

inline ShardIndex read_shard_index(const std::string& index) {
  ShardIndex out;
  const int fd = ::open(index.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) ::loftq::detail::fail(Errc::io_error, index + ": cannot open: " + std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    ::loftq::detail::fail(Errc::io_error, index + ": not a regular file");
  }
  out.device = static_cast<std::uint64_t>(st.st_dev);
  out.inode = static_cast<std::uint64_t>(st.st_ino);
  std::string text;
  char buf[65536];
  for (;;) {
    const ssize_t r = ::read(fd, buf, sizeof buf);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      ::close(fd);
      ::loftq::detail::fail(Errc::io_error, index + ": read failed");
    }
    if (r == 0) break;
    text.append(buf, static_cast<std::size_t>(r));
    if (text.size() > kMaxHeaderBytes) {
      ::close(fd);
      ::loftq::detail::fail(Errc::parse_error, index + ": larger than " + std::to_string(kMaxHeaderBytes) + " bytes");
    }
  }
  ::close(fd);
  const nlohmann::json j = parse_json_strict(text.data(), text.data() + text.size(), index);
  ::loftq::detail::require(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(), Errc::parse_error,
                           index + ": no weight_map object");
  if (j.contains("metadata")) out.metadata = j["metadata"];
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
    ::loftq::detail::require(it.value().is_string(), Errc::parse_error,
                             index + ": weight_map entry '" + it.key() + "' is not a file name");
    const std::string f = it.value().get<std::string>();
    // Plain names only: the index must not point outside its directory.
    ::loftq::detail::require(!f.empty() && f.find('/') == std::string::npos && f != "." && f != "..", Errc::parse_error,
                             index + ": weight_map entry '" + it.key() + "': bad file name '" + f + "'");
    out.weight_map[it.key()] = f;
    out.shard_names.insert(f);
  }
  ::loftq::detail::require(!out.shard_names.empty(), Errc::parse_error, index + ": weight_map is empty");
  return out;
}

// The *.safetensors files of `dir` (not hidden ones), sorted.
inline std::vector<std::string> list_safetensors(const std::string& dir) {
  auto ends_with = [](const std::string& s, const std::string& suf) {
    return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
  };
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (!d) ::loftq::detail::fail(Errc::io_error, dir + ": cannot list: " + std::strerror(errno));
  while (const dirent* e = ::readdir(d)) {
    const std::string n = e->d_name;
    if (n.size() > 12 && ends_with(n, ".safetensors") && n[0] != '.') out.push_back(n);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace detail
}  // namespace io
}  // namespace loftq
