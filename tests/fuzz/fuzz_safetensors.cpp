// libFuzzer target: the .safetensors reader (include/loftq/io/safetensors.hpp)
// on arbitrary bytes. SafetensorsFile maps a path, so each input is written to
// one private temp file first. Contract: opening is safe on any bytes and
// every failure is a loftq::Error; a file that opens has tensors lying inside
// the file, and every float tensor converts (2-D ones as matrices too).
#include <loftq/io/safetensors.hpp>

#include <cstdint>
#include <cstdlib>
#include <string>

#include "scratch_file.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string& path = write_scratch_file(data, size);
  loftq::io::SafetensorsFile st;
  try {
    st.open(path);
  } catch (const loftq::Error&) {
    return 0;
  }
  if (st.data_offset() > st.file_size()) std::abort();
  for (const auto& t : st.tensors()) {
    if (t.begin > t.end || st.data_offset() + t.end > st.file_size()) std::abort();
    if (st.find(t.name) == nullptr) std::abort();
    if (!loftq::io::is_float_dtype(t.dtype)) continue;
    try {
      const std::vector<float> v = st.read_float(t);
      if (v.size() != t.numel) std::abort();
      if (t.shape.size() == 2) {
        const auto M = st.read_matrix(t);
        if (static_cast<std::uint64_t>(M.size()) != t.numel) std::abort();
      }
    } catch (const loftq::Error&) {
    }
    try {
      if (st.read_bytes(t).size() != t.nbytes()) std::abort();
    } catch (const loftq::Error&) {
    }
  }
  return 0;
}
