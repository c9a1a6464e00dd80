#pragma once
// For the fuzz targets whose reader takes a path: each input is written to
// one private temp file per process (removed at exit), whose path this
// returns. Aborts (a fuzzer finding) if the file cannot be written.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <unistd.h>

inline const std::string& write_scratch_file(const std::uint8_t* data, std::size_t size) {
  struct Scratch {
    std::string path;
    Scratch() {
      char tmpl[] = "/tmp/loftq-fuzz-XXXXXX";
      const int fd = ::mkstemp(tmpl);
      if (fd < 0) std::abort();
      ::close(fd);
      path = tmpl;
    }
    ~Scratch() { ::unlink(path.c_str()); }
  };
  static const Scratch scratch;
  std::FILE* f = std::fopen(scratch.path.c_str(), "wb");
  if (!f) std::abort();
  if (size && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
  return scratch.path;
}
