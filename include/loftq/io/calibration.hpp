#pragma once
// read_calibration: any calibration statistics file this library reads, told
// apart by its first bytes, not its name:
//
//   "GGUF"                      llama.cpp's imatrix, GGUF layout (io/imatrix.hpp)
//   byte 8 is '{'               the project's statistics file (io/statistics.hpp):
//                               a safetensors header starts there
//   anything else               llama.cpp's legacy imatrix .dat (io/imatrix.hpp),
//                               whose byte 8 starts a tensor name ("blk." or
//                               "output")

#include <cstdint>
#include <cstring>
#include <string>

#include "loftq/io/detail/posix_file.hpp"
#include "loftq/io/imatrix.hpp"
#include "loftq/io/statistics.hpp"

namespace loftq {
namespace io {

inline CalibrationFormat detect_calibration_format(const std::string& path) {
  detail::ReadOnlyFile f;
  f.open(path);
  unsigned char head[9] = {};
  const std::uint64_t n = f.size() < 9 ? f.size() : 9;
  f.pread_exact(head, 0, n);
  if (n >= 4 && std::memcmp(head, "GGUF", 4) == 0) return CalibrationFormat::imatrix_gguf;
  if (n == 9 && head[8] == '{') return CalibrationFormat::loftq;
  return CalibrationFormat::imatrix_dat;
}

inline StatisticsFile read_calibration(const std::string& path) {
  switch (detect_calibration_format(path)) {
    case CalibrationFormat::imatrix_gguf:
      return read_imatrix_gguf(path);
    case CalibrationFormat::loftq:
      return read_statistics(path);
    case CalibrationFormat::imatrix_dat:
      break;
  }
  return read_imatrix_dat(path);
}

}  // namespace io
}  // namespace loftq
