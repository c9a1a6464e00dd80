#pragma once
// PackedMatrix: real low-bit storage of a block-quantized matrix.
//
// Layout (stable, documented for engines that read it directly):
//   * Elements are numbered in the row-major flattening of the rows x cols
//     matrix: element e = i * cols + j.
//   * Block b holds elements [b * block_size, min((b + 1) * block_size, rows * cols)).
//     The tail block may be shorter.
//   * codes is an LSB-first bit stream: code of element e occupies stream bits
//     [e * bits, (e + 1) * bits), least significant bit first, and stream bit
//     s is bit (s % 8) of byte s / 8. For 2-bit this puts element 4k in bits
//     0-1 of byte k; for 4-bit element 2k is the low nibble of byte k. 3-bit
//     codes straddle bytes. Unused high bits of the last byte are zero.
//   * absmax scaling: value = codebook[code] * scales[b].
//   * minmax scaling (asymmetric): with t = codebook[code] in [0, 1],
//     value = mins[b] * (1 - t) + scales[b] * t, so scales[b] is the block's
//     maximum and mins[b] its minimum; both endpoints are reproduced exactly.
//   * affine scaling (ggml's K formats with minimums):
//     value = codebook[code] * scales[b] - mins[b], the product rounded to
//     float before the subtraction, as ggml's dequantize_row_q4_K computes.
//   * ggml_blocks (optional): a ggml K format's super-blocks byte for byte
//     (ggml_format.hpp), which codes, scales and mins decode; kept because
//     the float scale d * sc does not determine the stored d and sc.
//   * Double-quantized scales (optional, absmax only; QLoRA's scheme, encoder
//     in double_quant.hpp): when scale_dq is present, storage holds no fp32
//     scales but one 8-bit code per scale, one fp32 absmax per scale_dq.block_size
//     (256) consecutive scales and one fp32 mean:
//       step[k]  = absmax[k] / 127                       (exact, see below)
//       scale[b] = mean + (codes[b] - 128) * step[b / scale_dq.block_size]   in fp32
//     codes are 1..255 (q + 128 for q in -127..127). The encoder gives step at
//     most 17 significant bits, so absmax = 127 * step, absmax / 127 and
//     q * step are all exact in fp32 and the one rounding is the final add:
//     every reader (with or without FMA contraction) recovers the same bits.
//     `scales` then holds these recovered values, so everything that reads
//     `scales` (dequantize included) sees exactly what the storage implies.

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "error.hpp"
#include "ggml_format.hpp"

namespace loftq {

enum class ScaleMode : std::uint8_t { absmax = 0, minmax = 1, affine = 2 };

// Second-level quantization of the block scales (see the layout above).
// Empty codes: the scales are stored as plain fp32.
struct DoubleQuantScales {
  Eigen::Index block_size = 256;    // scales per second-level block
  float mean = 0.0f;                // subtracted from every scale before quantizing
  std::vector<std::uint8_t> codes;  // one per scale: q + 128, q in -127..127
  std::vector<float> absmax;        // one per second-level block: 127 * step

  bool empty() const { return codes.empty(); }
  std::size_t num_blocks() const {
    return block_size > 0
               ? (codes.size() + static_cast<std::size_t>(block_size) - 1) / static_cast<std::size_t>(block_size)
               : 0;
  }
  // Storage: 8-bit codes, fp32 absmax per block, the fp32 mean.
  double storage_bits() const {
    return empty() ? 0.0 : 8.0 * static_cast<double>(codes.size() + 4 * absmax.size() + 4);
  }
  // Scale i as the layout defines it. Kept to plain float operations whose
  // operands make every step exact but the last add (see the layout).
  float scale(std::size_t i) const {
    const float step = absmax[i / static_cast<std::size_t>(block_size)] / 127.0f;
    return mean + static_cast<float>(static_cast<int>(codes[i]) - 128) * step;
  }
};

struct PackedMatrix {
  Eigen::Index rows = 0, cols = 0;
  Eigen::Index block_size = 64;
  int bits = 4;
  ScaleMode scale_mode = ScaleMode::absmax;
  std::vector<float> codebook;                // 2^bits normalized levels, sorted
  std::vector<std::uint8_t> codes;            // bit stream, see above
  std::vector<float> scales;                  // one per block
  std::vector<float> mins;                    // one per block for minmax and affine, else empty
  DoubleQuantScales scale_dq;                 // when present, what storage holds instead of fp32 scales
  std::vector<std::uint8_t> ggml_blocks;      // a K format's super-blocks as ggml stores them, else empty
  GgmlFormat ggml_format = GgmlFormat::none;  // the ggml format quantized to: storage is then its blocks

  Eigen::Index size() const { return rows * cols; }
  Eigen::Index num_blocks() const { return block_size > 0 ? (size() + block_size - 1) / block_size : 0; }
  bool double_quantized() const { return !scale_dq.empty(); }
  // Storage cost per weight: a ggml format's blocks as a GGUF file stores
  // them (fp16 d, packed sub-block scales: q4_0 4.5, q2_K 2.625); otherwise
  // codes, plus fp32 scales (and mins), or the double-quantized scales
  // instead of the fp32 ones.
  double bits_per_weight() const {
    if (size() == 0) return 0.0;
    if (ggml_format != GgmlFormat::none && !double_quantized()) {
      const Eigen::Index block = ggml_format_block(ggml_format), blocks = (size() + block - 1) / block;
      return 8.0 * ggml_format_block_bytes(ggml_format) * static_cast<double>(blocks) / static_cast<double>(size());
    }
    const double scale_bits = double_quantized() ? scale_dq.storage_bits() : 32.0 * static_cast<double>(scales.size());
    return (8.0 * static_cast<double>(codes.size()) + scale_bits + 32.0 * static_cast<double>(mins.size())) /
           static_cast<double>(size());
  }
  // Code of element e (row-major index).
  int code(Eigen::Index e) const {
    const std::uint64_t bit = static_cast<std::uint64_t>(e) * static_cast<std::uint64_t>(bits);
    const std::size_t byte = static_cast<std::size_t>(bit >> 3);
    unsigned window = codes[byte];
    if (byte + 1 < codes.size()) window |= static_cast<unsigned>(codes[byte + 1]) << 8;
    return static_cast<int>((window >> (bit & 7)) & ((1u << bits) - 1u));
  }
};

namespace detail {

inline std::size_t packed_bytes(Eigen::Index n, int bits) {
  return static_cast<std::size_t>((static_cast<std::uint64_t>(n) * static_cast<std::uint64_t>(bits) + 7) / 8);
}

// Writes n codes starting at element `first` into a zeroed stream. Callers
// give each thread a byte-aligned range, so the OR never races.
inline void pack_codes(std::uint8_t* stream, std::int64_t first, const std::uint8_t* codes, std::int64_t n, int bits) {
  if (bits == 4 && (first & 1) == 0) {
    std::uint8_t* out = stream + first / 2;
    std::int64_t i = 0;
    for (; i + 1 < n; i += 2) out[i / 2] = static_cast<std::uint8_t>(codes[i] | (codes[i + 1] << 4));
    if (i < n) out[i / 2] |= codes[i];
    return;
  }
  if (bits == 2 && (first & 3) == 0) {
    std::uint8_t* out = stream + first / 4;
    std::int64_t i = 0;
    for (; i + 3 < n; i += 4)
      out[i / 4] =
          static_cast<std::uint8_t>(codes[i] | (codes[i + 1] << 2) | (codes[i + 2] << 4) | (codes[i + 3] << 6));
    for (int k = 0; i < n; ++i, ++k) out[i / 4] |= static_cast<std::uint8_t>(codes[i] << (2 * k));
    return;
  }
  if (bits == 8) {
    for (std::int64_t i = 0; i < n; ++i) stream[first + i] = codes[i];
    return;
  }
  for (std::int64_t i = 0; i < n; ++i) {
    const std::uint64_t bit = static_cast<std::uint64_t>(first + i) * static_cast<std::uint64_t>(bits);
    const std::size_t byte = static_cast<std::size_t>(bit >> 3);
    const unsigned shift = static_cast<unsigned>(bit & 7);
    const unsigned v = static_cast<unsigned>(codes[i]) << shift;
    stream[byte] |= static_cast<std::uint8_t>(v & 0xffu);
    if (shift + static_cast<unsigned>(bits) > 8) stream[byte + 1] |= static_cast<std::uint8_t>(v >> 8);
  }
}

inline void unpack_codes(const std::uint8_t* stream, std::size_t stream_bytes, std::int64_t first, std::uint8_t* codes,
                         std::int64_t n, int bits) {
  if (bits == 4 && (first & 1) == 0) {
    const std::uint8_t* in = stream + first / 2;
    for (std::int64_t i = 0; i < n; ++i) codes[i] = static_cast<std::uint8_t>((in[i / 2] >> (4 * (i & 1))) & 0xf);
    return;
  }
  if (bits == 2 && (first & 3) == 0) {
    const std::uint8_t* in = stream + first / 4;
    for (std::int64_t i = 0; i < n; ++i) codes[i] = static_cast<std::uint8_t>((in[i / 4] >> (2 * (i & 3))) & 0x3);
    return;
  }
  const unsigned mask = (1u << bits) - 1u;
  for (std::int64_t i = 0; i < n; ++i) {
    const std::uint64_t bit = static_cast<std::uint64_t>(first + i) * static_cast<std::uint64_t>(bits);
    const std::size_t byte = static_cast<std::size_t>(bit >> 3);
    unsigned window = stream[byte];
    if (byte + 1 < stream_bytes) window |= static_cast<unsigned>(stream[byte + 1]) << 8;
    codes[i] = static_cast<std::uint8_t>((window >> (bit & 7)) & mask);
  }
}

// The payload must decode to exactly the `scales` the matrix carries, or the
// stored bits and the dequantized values would tell different stories.
inline void validate_dq(const DoubleQuantScales& D, const std::vector<float>& scales, ScaleMode mode) {
  require(mode == ScaleMode::absmax, Errc::unsupported, "PackedMatrix: double-quantized scales need absmax scaling");
  require(D.block_size >= 1, Errc::invalid_argument, "PackedMatrix: scale_dq.block_size must be >= 1");
  require(D.codes.size() == scales.size(), Errc::invalid_argument,
          "PackedMatrix: expected one scale_dq code per block");
  require(D.absmax.size() == D.num_blocks(), Errc::invalid_argument,
          "PackedMatrix: expected one scale_dq absmax per " + std::to_string(D.block_size) + " scales");
  require(std::isfinite(D.mean), Errc::non_finite, "PackedMatrix: scale_dq mean is not finite");
  for (float a : D.absmax)
    require(std::isfinite(a) && a >= 0.0f, Errc::invalid_argument,
            "PackedMatrix: scale_dq absmax must be finite and >= 0");
  for (std::size_t i = 0; i < scales.size(); ++i) {
    if (D.codes[i] == 0) fail(Errc::invalid_argument, "PackedMatrix: scale_dq code 0 is outside 1..255");
    const float s = D.scale(i);
    // Compared as bits: -0.0 vs 0.0 or NaN must not slip through.
    if (!(s == scales[i] && std::signbit(s) == std::signbit(scales[i])))
      fail(Errc::invalid_argument,
           "PackedMatrix: scale " + std::to_string(i) + " disagrees with its double-quantized code");
  }
}

// A PackedMatrix from outside (a file, a user) is checked before any index is
// trusted.
inline void validate(const PackedMatrix& P) {
  require(P.rows >= 0 && P.cols >= 0, Errc::invalid_argument, "PackedMatrix: negative shape");
  require(P.block_size >= 1, Errc::invalid_argument, "PackedMatrix: block_size must be >= 1");
  require(P.bits >= 1 && P.bits <= 8, Errc::unsupported, "PackedMatrix: bits must be 1..8");
  require(P.codebook.size() == (std::size_t{1} << P.bits), Errc::invalid_argument,
          "PackedMatrix: codebook must have 2^bits entries");
  require(P.codes.size() == packed_bytes(P.size(), P.bits), Errc::invalid_argument,
          "PackedMatrix: codes has " + std::to_string(P.codes.size()) + " bytes, expected " +
              std::to_string(packed_bytes(P.size(), P.bits)));
  require(P.scales.size() == static_cast<std::size_t>(P.num_blocks()), Errc::invalid_argument,
          "PackedMatrix: expected one scale per block");
  require(P.scale_mode == ScaleMode::absmax ? P.mins.empty() : P.mins.size() == P.scales.size(), Errc::invalid_argument,
          "PackedMatrix: mins must be empty for absmax and one per block for minmax and affine");
  if (P.double_quantized()) validate_dq(P.scale_dq, P.scales, P.scale_mode);
}

}  // namespace detail
}  // namespace loftq
