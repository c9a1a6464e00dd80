#pragma once
// ggml's block formats that LoftQ can quantize into (ggml-common.h,
// ggml-quants.c). The 32-element formats Q4_0, Q8_0 and IQ4_NL hold an fp16
// scale d and 32 codes; ggml dequantizes element j as d * level[code_j]:
//
//   Q4_0    level = code - 8, code 0..15        18 bytes: d, qs[16]
//   IQ4_NL  level = kvalues_iq4nl[code], 0..15  18 bytes: d, qs[16]
//   Q8_0    level = (int8) code                 34 bytes: d, qs[32]
//
// In a 4-bit block byte j holds element j in its low nibble and element
// j + 16 in its high nibble. The K formats hold super-blocks of 256 elements
// (QK_K) split into sub-blocks of 16 or 32, each with an integer scale sc (and
// for Q2_K, Q4_K, Q5_K an integer minimum m) under the super-block's fp16 d
// (and dmin); ggml dequantizes as (d * sc) * level - dmin * m in float:
//
//   Q2_K    16 x 16, sc, m 0..15, level 0..3            84 bytes
//   Q3_K    16 x 16, sc -32..31, level -4..3           110 bytes
//   Q4_K     8 x 32, sc, m 0..63, level 0..15          144 bytes
//   Q5_K     8 x 32, sc, m 0..63, level 0..31          176 bytes
//   Q6_K    16 x 16, sc -128..127, level -32..31       210 bytes
//   IQ4_XS   8 x 32, sc -32..31, level kvalues_iq4nl   136 bytes
//
// Inside the library the codes live in an ordinary PackedMatrix (packed.hpp)
// whose block is the (sub-)block, with the float d * sc as its scale (and
// dmin * m as its minimum, ScaleMode::affine) and the levels below as its
// codebook, so dequantize() gives ggml's values bit for bit. The 32-element
// formats' bytes are produced when a GGUF file is written (io/gguf.hpp); a K
// format's super-blocks are kept verbatim in PackedMatrix::ggml_blocks, since
// d * sc does not determine d and sc.

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "error.hpp"

namespace loftq {

enum class GgmlFormat { none, q4_0, q8_0, iq4_nl, q2_K, q3_K, q4_K, q5_K, q6_K, iq4_xs };

constexpr int kGgmlBlock = 32;
constexpr int kGgmlSuperBlock = 256;  // QK_K

constexpr bool ggml_is_k_format(GgmlFormat f) {
  return f == GgmlFormat::q2_K || f == GgmlFormat::q3_K || f == GgmlFormat::q4_K || f == GgmlFormat::q5_K ||
         f == GgmlFormat::q6_K || f == GgmlFormat::iq4_xs;
}
// Whether a format stores sub-block minimums (ScaleMode::affine).
constexpr bool ggml_has_min(GgmlFormat f) {
  return f == GgmlFormat::q2_K || f == GgmlFormat::q4_K || f == GgmlFormat::q5_K;
}

// ggml's 16 non-uniform IQ4_NL levels.
constexpr std::array<std::int8_t, 16> kIq4nlValues = {-127, -104, -83, -65, -49, -35, -22, -10,
                                                      1,    13,   25,  38,  53,  69,  89,  113};

// Bits of one code (the PackedMatrix's bit width).
constexpr int ggml_format_bits(GgmlFormat f) {
  switch (f) {
    case GgmlFormat::q8_0:
      return 8;
    case GgmlFormat::q2_K:
      return 2;
    case GgmlFormat::q3_K:
      return 3;
    case GgmlFormat::q5_K:
      return 5;
    case GgmlFormat::q6_K:
      return 6;
    default:
      return 4;
  }
}

// Elements per block as ggml stores it: 32, or a K format's super-block.
constexpr int ggml_format_block(GgmlFormat f) { return ggml_is_k_format(f) ? kGgmlSuperBlock : kGgmlBlock; }

// Elements per stored scale: the PackedMatrix's block_size.
inline int ggml_format_sub_block(GgmlFormat f) {
  return f == GgmlFormat::q2_K || f == GgmlFormat::q3_K || f == GgmlFormat::q6_K ? 16 : kGgmlBlock;
}

// Bytes per block (sizeof(block_q4_0), sizeof(block_q2_K), ...).
inline int ggml_format_block_bytes(GgmlFormat f) {
  switch (f) {
    case GgmlFormat::q4_0:
    case GgmlFormat::iq4_nl:
      return 18;
    case GgmlFormat::q8_0:
      return 34;
    case GgmlFormat::q2_K:
      return 84;
    case GgmlFormat::q3_K:
      return 110;
    case GgmlFormat::q4_K:
      return 144;
    case GgmlFormat::q5_K:
      return 176;
    case GgmlFormat::q6_K:
      return 210;
    case GgmlFormat::iq4_xs:
      return 136;
    case GgmlFormat::none:
      break;
  }
  detail::fail(Errc::invalid_argument, "ggml_format_block_bytes: not a ggml format");
}

// Bits per weight as a GGUF file stores the format: q4_0 4.5, q2_K 2.625, ...
inline double ggml_format_bits_per_weight(GgmlFormat f) {
  return 8.0 * ggml_format_block_bytes(f) / ggml_format_block(f);
}

// The ggml_type number (ggml.h: GGML_TYPE_Q4_0 = 2, GGML_TYPE_Q2_K = 10, ...).
inline int ggml_format_type_id(GgmlFormat f) {
  switch (f) {
    case GgmlFormat::q4_0:
      return 2;
    case GgmlFormat::q8_0:
      return 8;
    case GgmlFormat::iq4_nl:
      return 20;
    case GgmlFormat::q2_K:
      return 10;
    case GgmlFormat::q3_K:
      return 11;
    case GgmlFormat::q4_K:
      return 12;
    case GgmlFormat::q5_K:
      return 13;
    case GgmlFormat::q6_K:
      return 14;
    case GgmlFormat::iq4_xs:
      return 23;
    case GgmlFormat::none:
      break;
  }
  detail::fail(Errc::invalid_argument, "ggml_format_type_id: not a ggml format");
}

// llama.cpp's general.file_type (enum llama_ftype in llama.h) for a file whose
// quantized tensors are of format f: the value llama.cpp's model loader infers
// from a file's most common tensor type, so a uniform K format is "_M"
// (Q4_K -> LLAMA_FTYPE_MOSTLY_Q4_K_M = 15) as llama.cpp itself names it.
inline std::uint32_t ggml_format_llama_ftype(GgmlFormat f) {
  switch (f) {
    case GgmlFormat::q4_0:
      return 2;  // LLAMA_FTYPE_MOSTLY_Q4_0
    case GgmlFormat::q8_0:
      return 7;  // LLAMA_FTYPE_MOSTLY_Q8_0
    case GgmlFormat::iq4_nl:
      return 25;  // LLAMA_FTYPE_MOSTLY_IQ4_NL
    case GgmlFormat::q2_K:
      return 10;  // LLAMA_FTYPE_MOSTLY_Q2_K
    case GgmlFormat::q3_K:
      return 12;  // LLAMA_FTYPE_MOSTLY_Q3_K_M
    case GgmlFormat::q4_K:
      return 15;  // LLAMA_FTYPE_MOSTLY_Q4_K_M
    case GgmlFormat::q5_K:
      return 17;  // LLAMA_FTYPE_MOSTLY_Q5_K_M
    case GgmlFormat::q6_K:
      return 18;  // LLAMA_FTYPE_MOSTLY_Q6_K
    case GgmlFormat::iq4_xs:
      return 30;  // LLAMA_FTYPE_MOSTLY_IQ4_XS
    case GgmlFormat::none:
      break;
  }
  detail::fail(Errc::invalid_argument, "ggml_format_llama_ftype: not a ggml format");
}

// ggml's GGML_QNT_VERSION, written as general.quantization_version.
constexpr std::uint32_t kGgmlQuantizationVersion = 2;

inline const char* ggml_format_name(GgmlFormat f) {
  switch (f) {
    case GgmlFormat::q4_0:
      return "q4_0";
    case GgmlFormat::q8_0:
      return "q8_0";
    case GgmlFormat::iq4_nl:
      return "iq4_nl";
    case GgmlFormat::q2_K:
      return "q2_K";
    case GgmlFormat::q3_K:
      return "q3_K";
    case GgmlFormat::q4_K:
      return "q4_K";
    case GgmlFormat::q5_K:
      return "q5_K";
    case GgmlFormat::q6_K:
      return "q6_K";
    case GgmlFormat::iq4_xs:
      return "iq4_xs";
    case GgmlFormat::none:
      break;
  }
  return "none";
}

// Every format's name, in lower case as llama-quantize takes them ("q4_k").
inline const std::vector<std::string>& ggml_format_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n;
    for (GgmlFormat f : {GgmlFormat::iq4_nl, GgmlFormat::q4_0, GgmlFormat::q8_0, GgmlFormat::q2_K, GgmlFormat::q3_K,
                         GgmlFormat::q4_K, GgmlFormat::q5_K, GgmlFormat::q6_K, GgmlFormat::iq4_xs}) {
      std::string s = ggml_format_name(f);
      for (char& c : s) c = static_cast<char>(c == 'K' ? 'k' : c);
      n.push_back(s);
    }
    return n;
  }();
  return names;
}

// The format of a name, in either case ("q4_K" or "q4_k"); Errc::invalid_argument otherwise.
inline GgmlFormat ggml_format_from_name(const std::string& name) {
  for (GgmlFormat f : {GgmlFormat::iq4_nl, GgmlFormat::q4_0, GgmlFormat::q8_0, GgmlFormat::q2_K, GgmlFormat::q3_K,
                       GgmlFormat::q4_K, GgmlFormat::q5_K, GgmlFormat::q6_K, GgmlFormat::iq4_xs}) {
    std::string s = ggml_format_name(f);
    if (s == name) return f;
    for (char& c : s) c = static_cast<char>(c == 'K' ? 'k' : c);
    if (s == name) return f;
  }
  detail::fail(Errc::invalid_argument, "unknown ggml format '" + name + "'");
}

// The PackedMatrix codebook of a format: level[code], sorted. Q8_0's byte
// q (an int8) is stored as code q + 128, so its levels are -128..127; in the
// K formats the code is the stored unsigned quant (Q3_K: q + 4, Q6_K: q + 32).
inline const std::vector<float>& ggml_levels(GgmlFormat f) {
  auto range = [](int lo, int n) {
    std::vector<float> v;
    v.reserve(static_cast<std::size_t>(n));
    for (int c = 0; c < n; ++c) v.push_back(static_cast<float>(lo + c));
    return v;
  };
  static const std::vector<float> k2 = range(0, 4), k3 = range(-4, 8), k4 = range(0, 16), k5 = range(0, 32),
                                  k6 = range(-32, 64);
  static const std::vector<float> q4 = [] {
    std::vector<float> v;
    v.reserve(16);
    for (int c = 0; c < 16; ++c) v.push_back(static_cast<float>(c - 8));
    return v;
  }();
  static const std::vector<float> q8 = [] {
    std::vector<float> v;
    v.reserve(256);
    for (int c = 0; c < 256; ++c) v.push_back(static_cast<float>(c - 128));
    return v;
  }();
  static const std::vector<float> nl(kIq4nlValues.begin(), kIq4nlValues.end());
  switch (f) {
    case GgmlFormat::q4_0:
      return q4;
    case GgmlFormat::q8_0:
      return q8;
    case GgmlFormat::iq4_nl:
    case GgmlFormat::iq4_xs:
      return nl;
    case GgmlFormat::q2_K:
      return k2;
    case GgmlFormat::q3_K:
      return k3;
    case GgmlFormat::q4_K:
      return k4;
    case GgmlFormat::q5_K:
      return k5;
    case GgmlFormat::q6_K:
      return k6;
    case GgmlFormat::none:
      break;
  }
  detail::fail(Errc::invalid_argument, "ggml_levels: not a ggml format");
}

}  // namespace loftq
