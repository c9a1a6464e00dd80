#pragma once
// One tensor of a safetensors file as its header declares it: name, dtype,
// shape and where its bytes lie (loftq/io/safetensors.hpp reads them).

#include <cstdint>
#include <string>
#include <vector>

#include "loftq/io/dtype.hpp"

namespace loftq {
namespace io {

struct TensorInfo {
  std::string name;
  Dtype dtype = Dtype::F32;
  std::vector<std::uint64_t> shape;
  std::uint64_t begin = 0, end = 0;  // byte offsets within the data section
  std::uint64_t numel = 1;
  std::uint64_t nbytes() const { return end - begin; }
};

}  // namespace io
}  // namespace loftq
