#pragma once
// ggml's 32-element block formats that LoftQ can quantize into: Q4_0, Q8_0
// and IQ4_NL (ggml-common.h, ggml-quants.c). Each block holds an fp16 scale d
// and 32 codes; ggml dequantizes element j as d * level[code_j] in float:
//
//   Q4_0    level = code - 8, code 0..15        18 bytes: d, qs[16]
//   IQ4_NL  level = kvalues_iq4nl[code], 0..15  18 bytes: d, qs[16]
//   Q8_0    level = (int8) code                 34 bytes: d, qs[32]
//
// In a 4-bit block byte j holds element j in its low nibble and element
// j + 16 in its high nibble. Inside the library the codes of these formats
// live in an ordinary PackedMatrix (packed.hpp) with block_size 32, the fp16
// scale as its (exactly representable) float scale and the levels below as
// its codebook, so dequantize() gives ggml's values bit for bit; the byte
// layout above is produced only when a GGUF file is written (io/gguf.hpp).

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "error.hpp"

namespace loftq {

enum class GgmlFormat { none, q4_0, q8_0, iq4_nl };

constexpr int kGgmlBlock = 32;

// ggml's 16 non-uniform IQ4_NL levels.
constexpr std::array<std::int8_t, 16> kIq4nlValues = {-127, -104, -83, -65, -49, -35, -22, -10,
                                                      1,    13,   25,  38,  53,  69,  89,  113};

inline int ggml_format_bits(GgmlFormat f) { return f == GgmlFormat::q8_0 ? 8 : 4; }

inline const char* ggml_format_name(GgmlFormat f) {
  switch (f) {
    case GgmlFormat::q4_0: return "q4_0";
    case GgmlFormat::q8_0: return "q8_0";
    case GgmlFormat::iq4_nl: return "iq4_nl";
    case GgmlFormat::none: break;
  }
  return "none";
}

// The PackedMatrix codebook of a format: level[code], sorted. Q8_0's byte
// q (an int8) is stored as code q + 128, so its levels are -128..127.
inline const std::vector<float>& ggml_levels(GgmlFormat f) {
  static const std::vector<float> q4 = [] {
    std::vector<float> v;
    for (int c = 0; c < 16; ++c) v.push_back(static_cast<float>(c - 8));
    return v;
  }();
  static const std::vector<float> q8 = [] {
    std::vector<float> v;
    for (int c = 0; c < 256; ++c) v.push_back(static_cast<float>(c - 128));
    return v;
  }();
  static const std::vector<float> nl(kIq4nlValues.begin(), kIq4nlValues.end());
  switch (f) {
    case GgmlFormat::q4_0: return q4;
    case GgmlFormat::q8_0: return q8;
    case GgmlFormat::iq4_nl: return nl;
    case GgmlFormat::none: break;
  }
  detail::fail(Errc::invalid_argument, "ggml_levels: not a ggml format");
}

}  // namespace loftq
