#include "content_identity.hpp"

#include <loftq/io/file.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <vector>

namespace loftq_cli {

std::string content_identity(const std::string& path) {
  loftq::io::ReadOnlyFile f;
  f.open(path);
  std::uint64_t h = 1469598103934665603ull;
  std::vector<unsigned char> buf(std::size_t(16) << 20);
  for (std::uint64_t off = 0; off < f.size();) {
    const std::uint64_t n = std::min<std::uint64_t>(buf.size(), f.size() - off);
    f.pread_exact(buf.data(), off, n);
    for (std::uint64_t i = 0; i < n; ++i) h = (h ^ buf[i]) * 1099511628211ull;
    off += n;
  }
  char id[64];
  std::snprintf(id, sizeof id, "%llu:fnv1a64:%016llx", static_cast<unsigned long long>(f.size()),
                static_cast<unsigned long long>(h));
  return id;
}

}  // namespace loftq_cli
