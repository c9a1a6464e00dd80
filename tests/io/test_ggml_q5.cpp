// io/ggml_q5.hpp: Q5_0 and Q5_1 blocks byte for byte as ggml_quantize_chunk
// of a prebuilt llama.cpp writes them when one is available; without it, the
// bytes read back (io/ggml_dequantize.hpp, itself checked against ggml's
// dequantize_row_q5_*) within half a step of the input,
// with codes and scales the test derives by hand on known blocks.
#include <loftq/io/ggml_dequantize.hpp>
#include <loftq/io/ggml_q5.hpp>

#include <doctest/doctest.h>

#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/ggml_base_lib.hpp"
#include "../support/ggml_chunk.hpp"
#include "common/ggml_layout.hpp"
#include "common/matrices.hpp"

namespace {

namespace gio = loftq::io;
using T = gio::GgmlType;

std::vector<float> test_values() {
  const auto W = loftq_common::realistic_matrix(16, 256, 11);
  std::vector<float> v(W.data(), W.data() + W.size());
  for (int j = 0; j < 32; ++j) v[static_cast<std::size_t>(j)] = 0.0f;    // an all-zero block
  for (int j = 32; j < 64; ++j) v[static_cast<std::size_t>(j)] = 0.25f;  // a constant one
  for (int j = 64; j < 96; ++j) v[static_cast<std::size_t>(j)] = std::fabs(v[static_cast<std::size_t>(j)]);  // > 0
  v[100] = 5.0f;  // an outlier
  return v;
}

}  // namespace

TEST_CASE("Q5_0 and Q5_1: block sizes, a known block, and every value within half a step of the input") {
  const std::vector<float> x = test_values();
  for (T t : {T::Q5_0, T::Q5_1}) {
    CAPTURE(static_cast<int>(t));
    const std::vector<unsigned char> b = gio::ggml_q5_blocks(t, x.data(), x.size());
    std::uint64_t elems = 0, bytes = 0;
    gguf_layout::block_of(static_cast<std::uint32_t>(t), elems, bytes);  // ggml-common.h's sizeof(block_q5_*)
    REQUIRE(b.size() == x.size() / elems * bytes);
    const std::vector<float> y = gio::ggml_dequantize(static_cast<std::uint32_t>(t), b.data(), b.size(), x.size());
    for (std::size_t blk = 0; blk < x.size() / 32; ++blk) {
      float lo = x[32 * blk], hi = lo, amax = 0, signed_max = 0;
      for (std::size_t j = 32 * blk; j < 32 * blk + 32; ++j) {
        lo = std::min(lo, x[j]);
        hi = std::max(hi, x[j]);
        if (std::fabs(x[j]) > amax) {
          amax = std::fabs(x[j]);
          signed_max = x[j];
        }
      }
      // The step, and what fp16 rounding of d (and the minimum) may add over a block's 31 or 16 steps.
      const double step = t == T::Q5_0 ? amax / 16.0 : (hi - lo) / 31.0;
      const double slack = 32 * step * std::ldexp(1.0, -11) + std::fabs(lo) * std::ldexp(1.0, -11) + 1e-7;
      for (std::size_t j = 32 * blk; j < 32 * blk + 32; ++j) {
        // Q5_0's levels run from -16 to 15 steps of d = max / -16: past 15.5 on the far side of the maximum the
        // code is capped at 31, a whole step short at worst.
        const bool capped = t == T::Q5_0 && amax > 0 && x[j] * (-16.0 / signed_max) > 15.5;
        REQUIRE(std::fabs(static_cast<double>(y[j]) - x[j]) <= (capped ? 1.0 : 0.5) * step + slack);
      }
    }
    // The zero block: d = 0, every element 0; the constant 0.25 block read back exactly.
    for (std::size_t j = 0; j < 32; ++j) CHECK(y[j] == 0.0f);
    for (std::size_t j = 32; j < 64; ++j) CHECK(y[j] == 0.25f);
  }
  // Q5_0 of the constant block: d = 0.25 / -16 (fp16 0xA400 = -2^-6), all codes 0: qs 0, qh 0.
  const std::vector<unsigned char> q0 = gio::ggml_q5_blocks(T::Q5_0, x.data() + 32, 32);
  CHECK(q0[0] == 0x00);
  CHECK(q0[1] == 0xA4);
  for (std::size_t i = 2; i < q0.size(); ++i) CHECK(q0[i] == 0);
  CHECK_THROWS(gio::ggml_q5_blocks(T::Q4_0, x.data(), 32));
  CHECK_THROWS(gio::ggml_q5_blocks(T::Q5_0, x.data(), 31));
}

// With no importance matrix ggml_quantize_chunk runs quantize_row_q5_0_ref and quantize_row_q5_1_ref.
TEST_CASE("Q5_0 and Q5_1 blocks are ggml_quantize_chunk's, byte for byte") {
  const loftq_common::GgmlQuantizeChunkLib ggml;
  const loftq_common::GgmlQuantizeChunk chunk = loftq_test::ggml_quantize_chunk_or_skip(ggml);
  if (!chunk) return;
  const std::vector<float> x = test_values();
  for (T t : {T::Q5_0, T::Q5_1}) {
    const std::vector<unsigned char> ours = gio::ggml_q5_blocks(t, x.data(), x.size());
    std::vector<unsigned char> ref(ours.size());
    REQUIRE(chunk(static_cast<int>(t), x.data(), ref.data(), 0, 16, 256, nullptr) == ours.size());
    CHECK(ref == ours);
  }
}
