#pragma once
// Quantizers whose output is one of ggml's block formats (ggml_format.hpp),
// for loftq::initialize like NormalFloat<4>: the alternation then fits A, B
// to the very Q that llama.cpp dequantizes from a GGUF file.
//
//   loftq::initialize(W, loftq::GgmlIQ4NL{}, opt)     // or GgmlQ4_0, GgmlQ8_0
//
// Blocks are 32 consecutive elements of the row-major flattening (a GGUF
// tensor's rows must then be multiples of 32; the quantizer itself accepts
// any shape, the last block shorter). How each block's scale is chosen
// follows Options::scale_search (QuantizeOptions::scale_search):
//
//   false  ggml's own choice, reproduced operation for operation in float:
//          Q4_0 and Q8_0 as quantize_row_q4_0_ref / quantize_row_q8_0_ref,
//          IQ4_NL as quantize_iq4_nl without an importance matrix (what
//          llama-quantize writes: the scale search over 15 trial scales with
//          weights x^2). Products are rounded before they are added (no
//          fused multiply-add), as in C without FP contraction.
//   true   (the library's default) the lowest squared error (column-weighted
//          in the data-aware metric) among ggml's own block and candidates
//          at other scales, each rounded to fp16 first and given its nearest
//          codes at that rounded scale: a grid of fractions of ggml's scale,
//          both signs, Lloyd steps and the fp16 neighbours of the best.
//          Never worse than ggml's block, in the same format.
//
// Either way the fp16 rounding of d is part of the value: Q = fp16(d) *
// level, in float, exactly what ggml's dequantize_row_* computes.

#include <Eigen/Core>
#include <string>

#include "ggml_format.hpp"
#include "packed.hpp"

namespace loftq {

template <GgmlFormat F>
struct Ggml {
  static_assert(F != GgmlFormat::none, "a ggml block format");
  static constexpr int bits = F == GgmlFormat::q8_0 ? 8 : 4;
  static constexpr Eigen::Index block_size = kGgmlBlock;
  ScaleMode scale_mode() const { return ScaleMode::absmax; }
  const std::vector<float>& codebook() const { return ggml_levels(F); }
  GgmlFormat ggml_format() const { return F; }
  std::string name() const { return ggml_format_name(F); }
};

using GgmlQ4_0 = Ggml<GgmlFormat::q4_0>;
using GgmlQ8_0 = Ggml<GgmlFormat::q8_0>;
using GgmlIQ4NL = Ggml<GgmlFormat::iq4_nl>;

// The same with the format chosen at run time.
struct GgmlQuantizer {
  GgmlFormat format = GgmlFormat::iq4_nl;
  int bits = 4;
  Eigen::Index block_size = kGgmlBlock;

  GgmlQuantizer() = default;
  explicit GgmlQuantizer(GgmlFormat f) : format(f), bits(ggml_format_bits(f)) { ggml_levels(f); }
  ScaleMode scale_mode() const { return ScaleMode::absmax; }
  const std::vector<float>& codebook() const { return ggml_levels(format); }
  GgmlFormat ggml_format() const { return format; }
  std::string name() const { return ggml_format_name(format); }
};

}  // namespace loftq
