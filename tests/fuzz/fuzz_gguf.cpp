// libFuzzer target: the GGUF reader (include/loftq/io/gguf.hpp) on arbitrary
// bytes. Each input is written to one private temp file first. Contract:
// opening is safe on any bytes and every failure is a loftq::Error; a file
// that opens has its data section aligned and inside the file, its tensors
// in order, aligned and inside the data section, and every F32/F16/BF16 2-D
// tensor reads as a matrix.
#include <loftq/io/gguf.hpp>

#include <cstdint>
#include <cstdlib>
#include <string>

#include "scratch_file.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string& path = write_scratch_file(data, size);
  loftq::io::GgufFile g;
  try {
    g.open(path);
  } catch (const loftq::Error&) {
    return 0;
  }
  const std::uint64_t a = g.alignment();
  if (a == 0 || (a & (a - 1)) != 0 || g.data_offset() % a != 0 || g.data_offset() > g.file_size()) std::abort();
  std::uint64_t end = 0;
  for (const auto& t : g.tensors()) {
    if (t.offset % a != 0 || t.offset < end || g.find(t.name) != &t) std::abort();
    if (g.data_offset() + t.offset + t.nbytes > g.file_size()) std::abort();
    end = t.offset + t.nbytes;
    const auto ty = static_cast<loftq::io::GgmlType>(t.type);
    if (t.ne.size() == 2 &&
        (ty == loftq::io::GgmlType::F32 || ty == loftq::io::GgmlType::F16 || ty == loftq::io::GgmlType::BF16)) {
      try {
        const auto M = g.read_matrix(t);
        if (static_cast<std::uint64_t>(M.size()) != t.numel) std::abort();
      } catch (const loftq::Error&) {
      }
    }
  }
  for (const auto& kv : g.kvs())
    if (g.find_kv(kv.key) != &kv) std::abort();
  std::string arch;
  (void)g.string_value("general.architecture", arch);
  return 0;
}
