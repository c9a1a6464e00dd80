#pragma once
// ggml tensor types as GGUF files hold them: their numbers and block sizes,
// the bytes of a tensor, and the block bytes of a PackedMatrix in a ggml
// format (ggml.h, ggml-common.h).

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "loftq/detail/ggml_kquant_layout.hpp"
#include "loftq/detail/half.hpp"
#include "loftq/error.hpp"
#include "loftq/ggml_format.hpp"
#include "loftq/packed.hpp"

namespace loftq {
namespace io {

// ggml tensor types this library knows the block size of (ggml.h numbering).
enum class GgmlType : std::uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  IQ4_NL = 20,
  IQ4_XS = 23,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  BF16 = 30,
};

struct GgmlTypeTraits {
  GgmlType type;
  const char* name;
  std::uint32_t block;  // elements per block
  std::uint32_t bytes;  // bytes per block
};

// nullptr for a type number this library does not know.
inline const GgmlTypeTraits* ggml_type_traits(std::uint32_t t) {
  static const GgmlTypeTraits table[] = {
      {GgmlType::F32, "F32", 1, 4},           {GgmlType::F16, "F16", 1, 2},       {GgmlType::Q4_0, "Q4_0", 32, 18},
      {GgmlType::Q4_1, "Q4_1", 32, 20},       {GgmlType::Q5_0, "Q5_0", 32, 22},   {GgmlType::Q5_1, "Q5_1", 32, 24},
      {GgmlType::Q8_0, "Q8_0", 32, 34},       {GgmlType::Q8_1, "Q8_1", 32, 36},   {GgmlType::Q2_K, "Q2_K", 256, 84},
      {GgmlType::Q3_K, "Q3_K", 256, 110},     {GgmlType::Q4_K, "Q4_K", 256, 144}, {GgmlType::Q5_K, "Q5_K", 256, 176},
      {GgmlType::Q6_K, "Q6_K", 256, 210},     {GgmlType::Q8_K, "Q8_K", 256, 292}, {GgmlType::IQ4_NL, "IQ4_NL", 32, 18},
      {GgmlType::IQ4_XS, "IQ4_XS", 256, 136}, {GgmlType::I8, "I8", 1, 1},         {GgmlType::I16, "I16", 1, 2},
      {GgmlType::I32, "I32", 1, 4},           {GgmlType::I64, "I64", 1, 8},       {GgmlType::F64, "F64", 1, 8},
      {GgmlType::BF16, "BF16", 1, 2},
  };
  for (const auto& e : table)
    if (static_cast<std::uint32_t>(e.type) == t) return &e;
  return nullptr;
}

inline GgmlType ggml_type_of(GgmlFormat f) {
  switch (f) {
    case GgmlFormat::q4_0:
      return GgmlType::Q4_0;
    case GgmlFormat::q8_0:
      return GgmlType::Q8_0;
    case GgmlFormat::iq4_nl:
      return GgmlType::IQ4_NL;
    case GgmlFormat::q2_K:
      return GgmlType::Q2_K;
    case GgmlFormat::q3_K:
      return GgmlType::Q3_K;
    case GgmlFormat::q4_K:
      return GgmlType::Q4_K;
    case GgmlFormat::q5_K:
      return GgmlType::Q5_K;
    case GgmlFormat::q6_K:
      return GgmlType::Q6_K;
    case GgmlFormat::iq4_xs:
      return GgmlType::IQ4_XS;
    case GgmlFormat::none:
      break;
  }
  ::loftq::detail::fail(Errc::invalid_argument, "ggml_type_of: not a ggml format");
}

// Bytes of a tensor of `type` with dimensions ne; fails (parse_error, naming
// `what`) on an unknown type, a row that is not whole blocks, or overflow.
inline std::uint64_t ggml_nbytes(std::uint32_t type, const std::vector<std::uint64_t>& ne, const std::string& what) {
  const GgmlTypeTraits* tt = ggml_type_traits(type);
  if (!tt)
    ::loftq::detail::fail(Errc::unsupported,
                          what + " has ggml type " + std::to_string(type) + ", which is not supported");
  ::loftq::detail::require(!ne.empty() && ne[0] % tt->block == 0, Errc::parse_error,
                           what + ": row length " + (ne.empty() ? std::string("?") : std::to_string(ne[0])) +
                               " is not a multiple of the " + tt->name + " block of " + std::to_string(tt->block));
  const std::uint64_t max = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  std::uint64_t bytes = ne[0] / tt->block;
  auto mul = [&](std::uint64_t f) {
    ::loftq::detail::require(f == 0 || bytes <= max / f, Errc::parse_error, what + ": size overflows");
    bytes *= f;
  };
  mul(tt->bytes);
  for (std::size_t i = 1; i < ne.size(); ++i) mul(ne[i]);
  return bytes;
}

// ---------------------------------------------------------------------------
// ggml blocks

// The bytes of a PackedMatrix in ggml format f (rows of whole 32-element
// blocks, or of 256-element super-blocks for a K format), as a GGUF tensor
// with ne = [cols, rows] of ggml_type_of(f) holds them: per block the fp16
// scale, then the codes (4-bit: element j in the low nibble of byte j,
// element j + 16 in its high nibble; Q8_0: int8); a K format's super-blocks
// as the quantizer kept them (PackedMatrix::ggml_blocks).
inline std::vector<unsigned char> ggml_block_bytes(const PackedMatrix& P, GgmlFormat f) {
  ::loftq::detail::validate(P);
  if (ggml_is_k_format(f)) {
    // K formats: the super-blocks the quantizer kept, verbatim.
    const std::size_t want =
        static_cast<std::size_t>(P.size() / kGgmlSuperBlock) * static_cast<std::size_t>(ggml_format_block_bytes(f));
    ::loftq::detail::require(P.cols % kGgmlSuperBlock == 0, Errc::invalid_argument,
                             "ggml_block_bytes: rows of " + std::to_string(P.cols) + " are not whole blocks of 256");
    ::loftq::detail::require(P.block_size == ggml_format_sub_block(f) && P.bits == ggml_format_bits(f) &&
                                 P.codebook == ggml_levels(f) && P.ggml_blocks.size() == want,
                             Errc::invalid_argument,
                             std::string("ggml_block_bytes: the matrix holds no ") + ggml_format_name(f) + " blocks");
    // The bytes must decode to the codes, scales and minimums the matrix
    // carries, or the file and the dequantized values would tell different
    // stories.
    const std::size_t bytes = static_cast<std::size_t>(ggml_format_block_bytes(f));
    const ::loftq::detail::KFormat F = ::loftq::detail::kformat(f);
    const bool has_min = ggml_has_min(f);
    auto same = [](float a, float b) { return a == b && std::signbit(a) == std::signbit(b); };
    std::uint8_t codes[kGgmlSuperBlock];
    ::loftq::detail::KBlock k;
    for (std::size_t b = 0; b * bytes < want; ++b) {
      ::loftq::detail::kblock_unpack(f, P.ggml_blocks.data() + b * bytes, k);
      ::loftq::detail::unpack_codes(P.codes.data(), P.codes.size(), static_cast<std::int64_t>(b) * kGgmlSuperBlock,
                                    codes, kGgmlSuperBlock, P.bits);
      bool ok = std::memcmp(codes, k.q, kGgmlSuperBlock) == 0;
      for (int i = 0; i < F.nsub && ok; ++i) {
        const std::size_t s = b * static_cast<std::size_t>(F.nsub) + static_cast<std::size_t>(i);
        ok = same(::loftq::detail::kblock_scale(k, i), P.scales[s]) &&
             (!has_min || same(::loftq::detail::kblock_min(k, i), P.mins[s]));
      }
      if (!ok)
        ::loftq::detail::fail(Errc::invalid_argument, "ggml_block_bytes: super-block " + std::to_string(b) +
                                                          " disagrees with the codes and scales");
    }
    return std::vector<unsigned char>(P.ggml_blocks.begin(), P.ggml_blocks.end());
  }
  ::loftq::detail::require(
      f != GgmlFormat::none && P.block_size == kGgmlBlock && P.bits == ggml_format_bits(f) &&
          P.codebook == ggml_levels(f) && P.scale_mode == ScaleMode::absmax && !P.double_quantized(),
      Errc::invalid_argument, std::string("ggml_block_bytes: the codes are not in ") + ggml_format_name(f) + " form");
  ::loftq::detail::require(P.cols % kGgmlBlock == 0, Errc::invalid_argument,
                           "ggml_block_bytes: rows of " + std::to_string(P.cols) + " are not whole blocks of 32");
  const bool q8 = f == GgmlFormat::q8_0;
  const std::size_t block_bytes = q8 ? 34 : 18, nb = static_cast<std::size_t>(P.num_blocks());
  std::vector<unsigned char> out(nb * block_bytes);
  std::uint8_t codes[kGgmlBlock];
  for (std::size_t b = 0; b < nb; ++b) {
    unsigned char* o = out.data() + b * block_bytes;
    const std::uint16_t dh = ::loftq::detail::float_to_half(P.scales[b]);
    const float back = ::loftq::detail::half_to_float(dh);
    ::loftq::detail::require(back == P.scales[b] && std::signbit(back) == std::signbit(P.scales[b]),
                             Errc::invalid_argument,
                             "ggml_block_bytes: scale " + std::to_string(b) + " is not an fp16 value");
    o[0] = static_cast<unsigned char>(dh & 0xff);
    o[1] = static_cast<unsigned char>(dh >> 8);
    ::loftq::detail::unpack_codes(P.codes.data(), P.codes.size(), static_cast<std::int64_t>(b) * kGgmlBlock, codes,
                                  kGgmlBlock, P.bits);
    if (q8) {
      for (int j = 0; j < kGgmlBlock; ++j) o[2 + j] = static_cast<unsigned char>(codes[j] ^ 0x80u);  // c - 128 as int8
    } else {
      for (int j = 0; j < 16; ++j) o[2 + j] = static_cast<unsigned char>(codes[j] | (codes[j + 16] << 4));
    }
  }
  return out;
}

}  // namespace io
}  // namespace loftq
