#pragma once
// Quantizers whose output is one of ggml's block formats (ggml_format.hpp),
// for loftq::initialize like NormalFloat<4>: the alternation then fits A, B
// to the very Q that llama.cpp dequantizes from a GGUF file.
//
//   loftq::initialize(W, loftq::GgmlIQ4NL{}, opt)     // or GgmlQ4_0, GgmlQ8_0
//   loftq::initialize(W, loftq::GgmlQ4_K{}, opt)      // or Q2_K, Q3_K, Q5_K, Q6_K, IQ4_XS
//
// Blocks are 32 (K formats: 256) consecutive elements of the row-major
// flattening (a GGUF tensor's rows must then be multiples of it; the
// quantizer itself accepts any shape, the last block shorter, a short K
// super-block quantized as if padded with zeros). Q2_K, Q4_K and Q5_K
// subtract sub-block minimums: their scale_mode() is ScaleMode::affine, and
// the PackedMatrix holds the minimums in mins. A K format's PackedMatrix also
// keeps ggml's super-blocks byte for byte in ggml_blocks. How the scales are
// chosen follows Options::scale_search (QuantizeOptions::scale_search):
//
//   false  ggml's own choice, reproduced operation for operation in float:
//          Q4_0 and Q8_0 as quantize_row_q4_0_ref / quantize_row_q8_0_ref,
//          IQ4_NL as quantize_iq4_nl without an importance matrix (what
//          llama-quantize writes: the scale search over 15 trial scales with
//          weights x^2), the K formats as quantize_row_q2_K_ref ...
//          quantize_row_q6_K_ref and IQ4_XS as quantize_iq4_xs without an
//          importance matrix (what ggml_quantize_chunk writes without one).
//          Products are rounded before they are added (no fused
//          multiply-add), as in C without FP contraction.
//   true   (the library's default) the lowest squared error (column-weighted
//          in the data-aware metric) among ggml's own block and candidates
//          at other scales, each rounded to fp16 first and given its nearest
//          codes at that rounded scale: for the 32-element formats a grid of
//          fractions of ggml's scale, both signs, Lloyd steps and the fp16
//          neighbours of the best; for the K formats ggml's block refined
//          sub-block by sub-block and in d, dmin (ggml_kquant_block.hpp).
//          Never worse than ggml's block, in the same format.
//
// Either way the fp16 rounding of d (and dmin) is part of the value: Q is
// exactly what ggml's dequantize_row_* computes in float from the stored
// block, e.g. fp16(d) * level for Q4_0 and (d * sc) * level - dmin * m for
// Q4_K.

#include <Eigen/Core>
#include <string>

#include "ggml_format.hpp"
#include "packed.hpp"

namespace loftq {

template <GgmlFormat F>
struct Ggml {
  static_assert(F != GgmlFormat::none, "a ggml block format");
  static constexpr int bits = ggml_format_bits(F);
  static constexpr Eigen::Index block_size = ggml_format_block(F);
  ScaleMode scale_mode() const { return ggml_has_min(F) ? ScaleMode::affine : ScaleMode::absmax; }
  const std::vector<float>& codebook() const { return ggml_levels(F); }
  GgmlFormat ggml_format() const { return F; }
  std::string name() const { return ggml_format_name(F); }
};

using GgmlQ4_0 = Ggml<GgmlFormat::q4_0>;
using GgmlQ8_0 = Ggml<GgmlFormat::q8_0>;
using GgmlIQ4NL = Ggml<GgmlFormat::iq4_nl>;
using GgmlQ2_K = Ggml<GgmlFormat::q2_K>;
using GgmlQ3_K = Ggml<GgmlFormat::q3_K>;
using GgmlQ4_K = Ggml<GgmlFormat::q4_K>;
using GgmlQ5_K = Ggml<GgmlFormat::q5_K>;
using GgmlQ6_K = Ggml<GgmlFormat::q6_K>;
using GgmlIQ4XS = Ggml<GgmlFormat::iq4_xs>;

// The same with the format chosen at run time.
struct GgmlQuantizer {
  GgmlFormat format = GgmlFormat::iq4_nl;
  int bits = 4;
  Eigen::Index block_size = kGgmlBlock;

  GgmlQuantizer() = default;
  explicit GgmlQuantizer(GgmlFormat f) : format(f), bits(ggml_format_bits(f)) {
    ggml_levels(f);  // rejects none
    block_size = ggml_format_block(f);
  }
  ScaleMode scale_mode() const { return ggml_has_min(format) ? ScaleMode::affine : ScaleMode::absmax; }
  const std::vector<float>& codebook() const { return ggml_levels(format); }
  GgmlFormat ggml_format() const { return format; }
  std::string name() const { return ggml_format_name(format); }
};

}  // namespace loftq
