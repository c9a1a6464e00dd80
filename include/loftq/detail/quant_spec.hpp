#pragma once
// QuantSpec: what the quantization kernels need from any quantizer, resolved
// once per call (spec_of).

#include <Eigen/Core>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../codebook.hpp"
#include "../error.hpp"
#include "../ggml_format.hpp"
#include "../packed.hpp"

namespace loftq {
namespace detail {

// What the kernels need from any quantizer, resolved once per call.
struct QuantSpec {
  int bits = 4;
  Eigen::Index block_size = 64;
  ScaleMode mode = ScaleMode::absmax;
  const std::vector<float>* codebook = nullptr;
  // Scale search (absmax codebooks only): choose each block's scale s <= absmax
  // minimizing sum_j w_j (x_j - s c_j)^2; w_j = col_weights[e % cols] when
  // col_weights is given (data-aware), else 1.
  bool search = false;
  const float* col_weights = nullptr;
  std::int64_t cols = 0;
  // Optional per-block state across repeated passes over slowly changing
  // input (LoftQ's iterations): each block's chosen fraction of absmax is
  // written here, and where it is already > 0 the search starts from it
  // (then Lloyd steps) instead of scanning the grid.
  float* fractions = nullptr;
  // A ggml block format (ggml_format.hpp): the block kernel is then
  // GgmlBlockQuantizer (ggml_blocks.hpp) or, for a K format, whose blocks are
  // super-blocks of 256, GgmlKBlockQuantizer (ggml_kquant_block.hpp).
  GgmlFormat ggml = GgmlFormat::none;
};

template <class Q, class = void>
struct has_ggml_format : std::false_type {};
template <class Q>
struct has_ggml_format<Q, std::void_t<decltype(std::declval<const Q&>().ggml_format())>> : std::true_type {};

template <class Q>
QuantSpec spec_of(const Q& q) {
  QuantSpec s;
  s.bits = q.bits;
  s.block_size = q.block_size;
  s.mode = q.scale_mode();
  s.codebook = &q.codebook();
  require(s.block_size >= 1, Errc::invalid_argument,
          "block_size must be >= 1 (got " + std::to_string(s.block_size) + ")");
  require(s.codebook->size() == (std::size_t{1} << s.bits), Errc::unsupported, "codebook size must be 2^bits");
  if constexpr (has_ggml_format<Q>::value) {
    s.ggml = q.ggml_format();
    require(s.ggml == GgmlFormat::none || s.block_size == ggml_format_block(s.ggml), Errc::invalid_argument,
            std::string(ggml_format_name(s.ggml)) + " has blocks of " + std::to_string(ggml_format_block(s.ggml)));
  }
  // Scale times level minus a minimum is ggml's K formats' own arithmetic.
  require(s.mode != ScaleMode::affine || ggml_has_min(s.ggml), Errc::unsupported,
          "affine scaling is the K formats' (q2_K, q4_K, q5_K)");
  return s;
}

}  // namespace detail
}  // namespace loftq
