// io/ggml_dequantize.hpp: ggml's blocks back to floats, bit for bit against
// ggml's own dequantize_row_* of a prebuilt llama.cpp when one is available;
// without it, against the independent decoders of common/ggml_layout.hpp,
// blocks the test packs itself with known values, and the library's
// quantizers (what they write reads back as the values they report).
#include <loftq/io/gguf.hpp>
#include <loftq/loftq.hpp>

#include <doctest/doctest.h>

#include <dlfcn.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/ggml_base_lib.hpp"
#include "common/ggml_layout.hpp"
#include "common/matrices.hpp"

namespace {

namespace gio = loftq::io;
using RowMatrixF = loftq::RowMatrix<float>;
using T = gio::GgmlType;

const T kTypes[] = {T::F32,    T::F16,  T::BF16, T::Q4_0, T::Q4_1, T::Q5_0, T::Q5_1,  T::Q8_0,
                    T::IQ4_NL, T::Q2_K, T::Q3_K, T::Q4_K, T::Q5_K, T::Q6_K, T::IQ4_XS};

std::uint32_t id(T t) { return static_cast<std::uint32_t>(t); }
const gio::GgmlTypeTraits& traits(T t) { return *gio::ggml_type_traits(id(t)); }

// Random blocks whose fp16 and bf16 fields are finite: random bytes, then
// every half-precision field of the layout redrawn with a biased exponent
// below the maximum (F32 elements: random floats of moderate size).
std::vector<unsigned char> random_blocks(T t, std::size_t blocks, std::mt19937& rng) {
  const gio::GgmlTypeTraits& tt = traits(t);
  std::vector<unsigned char> b(blocks * tt.bytes);
  for (unsigned char& c : b) c = static_cast<unsigned char>(rng() & 0xff);
  auto half = [&](unsigned char* p) {
    // sign, exponent 0..30 (subnormals included), mantissa: any finite fp16.
    const std::uint16_t h = static_cast<std::uint16_t>(((rng() & 1u) << 15) | ((rng() % 31u) << 10) | (rng() & 0x3ffu));
    p[0] = static_cast<unsigned char>(h & 0xff);
    p[1] = static_cast<unsigned char>(h >> 8);
  };
  std::vector<int> fields;  // byte offsets of fp16 fields within a block
  switch (t) {
    case T::F32:
      for (std::size_t i = 0; i < blocks; ++i) {
        const float v = std::ldexp(static_cast<float>(static_cast<int>(rng() % 2000001) - 1000000), -20);
        std::memcpy(b.data() + 4 * i, &v, 4);
      }
      return b;
    case T::F16:
      for (std::size_t i = 0; i < blocks; ++i) half(b.data() + 2 * i);
      return b;
    case T::BF16:
      for (std::size_t i = 0; i < blocks; ++i) b[2 * i + 1] = static_cast<unsigned char>(b[2 * i + 1] & 0xbf);
      return b;
    default:
      break;
  }
  switch (t) {
    case T::Q4_0:
    case T::Q5_0:
    case T::Q8_0:
    case T::IQ4_NL:
    case T::IQ4_XS:
      fields = {0};
      break;
    case T::Q4_1:
    case T::Q5_1:
    case T::Q4_K:
    case T::Q5_K:
      fields = {0, 2};
      break;
    case T::Q2_K:
      fields = {80, 82};
      break;
    case T::Q3_K:
      fields = {108};
      break;
    case T::Q6_K:
      fields = {208};
      break;
    default:
      break;
  }
  for (std::size_t i = 0; i < blocks; ++i)
    for (int f : fields) half(b.data() + i * tt.bytes + static_cast<std::size_t>(f));
  return b;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), sizeof(float) * a.size()) == 0;
}

}  // namespace

// ggml's own dequantizers, loaded from a prebuilt llama.cpp
// (@node-llama-cpp/linux-x64@3.22.1: bins/linux-x64/libggml-base.so exports
// dequantize_row_<type>, ggml_fp16_to_fp32_row and ggml_bf16_to_fp32_row).
TEST_CASE("ggml_dequantize gives the floats of ggml's dequantize_row_* bit for bit, every type") {
  std::string why;
  void* lib = loftq_common::open_ggml_base(why);
  if (!lib) {
    MESSAGE("skipped: " << why);
    return;
  }
  using Row = void (*)(const void*, float*, std::int64_t);
  std::mt19937 rng(20261207);
  for (T t : kTypes) {
    const gio::GgmlTypeTraits& tt = traits(t);
    CAPTURE(std::string(tt.name));
    const std::size_t blocks = tt.block == 1 ? 4096 : 512;
    const std::vector<unsigned char> bytes = random_blocks(t, blocks, rng);
    const std::uint64_t n = blocks * tt.block;
    std::vector<float> ref(n, -1.0f);
    if (t == T::F32) {
      std::memcpy(ref.data(), bytes.data(), bytes.size());
    } else {
      std::string name = t == T::F16    ? "ggml_fp16_to_fp32_row"
                         : t == T::BF16 ? "ggml_bf16_to_fp32_row"
                                        : "dequantize_row_" + std::string(tt.name);
      if (t != T::F16 && t != T::BF16)
        for (char& c : name)
          if (c >= 'A' && c <= 'Z' && c != 'K') c = static_cast<char>(c - 'A' + 'a');
      void* sym = dlsym(lib, name.c_str());
      REQUIRE_MESSAGE(sym != nullptr, name);
      reinterpret_cast<Row>(sym)(bytes.data(), ref.data(), static_cast<std::int64_t>(n));
    }
    const std::vector<float> ours = gio::ggml_dequantize(id(t), bytes.data(), bytes.size(), n);
    std::size_t differ = 0;
    for (std::size_t i = 0; i < n; ++i) differ += std::memcmp(&ours[i], &ref[i], sizeof(float)) != 0;
    CHECK(differ == 0);
    std::size_t finite = 0;
    for (float v : ours) finite += std::isfinite(v);
    CHECK(finite == n);
  }
  dlclose(lib);
}

TEST_CASE("ggml_dequantize agrees with the independent decoders of common/ggml_layout.hpp") {
  std::mt19937 rng(5);
  for (T t :
       {T::F32, T::F16, T::BF16, T::Q4_0, T::Q8_0, T::IQ4_NL, T::Q2_K, T::Q3_K, T::Q4_K, T::Q5_K, T::Q6_K, T::IQ4_XS}) {
    const gio::GgmlTypeTraits& tt = traits(t);
    CAPTURE(std::string(tt.name));
    const std::size_t blocks = tt.block == 1 ? 1024 : 64;
    const std::vector<unsigned char> bytes = random_blocks(t, blocks, rng);
    const std::uint64_t n = blocks * tt.block;
    CHECK(same_bits(gio::ggml_dequantize(id(t), bytes.data(), bytes.size(), n),
                    gguf_layout::decode(id(t), bytes.data(), n)));
  }
}

// Q4_1, Q5_0 and Q5_1 packed by the test from ggml-common.h's structs
// (block_q4_1: d, m, qs[16]; block_q5_0: d, qh[4], qs[16]; block_q5_1: d, m,
// qh[4], qs[16]; element j's low nibble in qs[j % 16] (high half for j >= 16),
// its fifth bit in bit j of qh), with scales and minimums that are powers of
// two so every value is exact: x = q d + m (Q5_0: (q - 16) d).
TEST_CASE("Q4_1, Q5_0, Q5_1: known codes, scales and minimums read back exactly") {
  std::mt19937 rng(11);
  for (T t : {T::Q4_1, T::Q5_0, T::Q5_1}) {
    const gio::GgmlTypeTraits& tt = traits(t);
    CAPTURE(std::string(tt.name));
    const bool five = t != T::Q4_1, has_min = t != T::Q5_0;
    const int blocks = 40;
    std::vector<unsigned char> bytes(static_cast<std::size_t>(blocks) * tt.bytes, 0);
    std::vector<float> want(static_cast<std::size_t>(blocks) * 32);
    for (int b = 0; b < blocks; ++b) {
      unsigned char* p = bytes.data() + static_cast<std::size_t>(b) * tt.bytes;
      const int e = static_cast<int>(rng() % 20) - 14, em = static_cast<int>(rng() % 20) - 14;
      const float d = std::ldexp(1.0f, e), m = has_min ? std::ldexp(rng() % 2 ? 1.0f : -1.0f, em) : 0.0f;
      // fp16 of a power of two 2^e, -14 <= e <= 5: exponent field e + 15, no mantissa.
      auto put_pow2 = [](unsigned char* q, int ex, bool neg) {
        const int h = ((ex + 15) << 10) | (neg ? 0x8000 : 0);
        q[0] = static_cast<unsigned char>(h & 0xff);
        q[1] = static_cast<unsigned char>(h >> 8);
      };
      put_pow2(p, e, false);
      if (has_min) put_pow2(p + 2, em, m < 0);
      unsigned char* qh = p + (has_min ? 4 : 2);
      unsigned char* qs = five ? qh + 4 : p + 4;
      for (int j = 0; j < 32; ++j) {
        const int q = static_cast<int>(rng() % (five ? 32u : 16u));
        qs[j % 16] = static_cast<unsigned char>(qs[j % 16] | ((q & 0xF) << (j < 16 ? 0 : 4)));
        if (five && (q & 16)) qh[j / 8] = static_cast<unsigned char>(qh[j / 8] | (1 << (j % 8)));
        want[static_cast<std::size_t>(32 * b + j)] =
            has_min ? static_cast<float>(q) * d + m : static_cast<float>(q - 16) * d;
      }
    }
    CHECK(same_bits(gio::ggml_dequantize(id(t), bytes.data(), bytes.size(), want.size()), want));
  }
}

TEST_CASE("ggml_dequantize reads back what the library's ggml quantizers write, as they dequantize it") {
  const RowMatrixF W = loftq_common::realistic_matrix(8, 512, 3);
  for (loftq::GgmlFormat f : {loftq::GgmlFormat::q4_0, loftq::GgmlFormat::q8_0, loftq::GgmlFormat::iq4_nl,
                              loftq::GgmlFormat::q2_K, loftq::GgmlFormat::q3_K, loftq::GgmlFormat::q4_K,
                              loftq::GgmlFormat::q5_K, loftq::GgmlFormat::q6_K, loftq::GgmlFormat::iq4_xs})
    for (bool search : {false, true}) {
      CAPTURE(std::string(loftq::ggml_format_name(f)));
      CAPTURE(search);
      loftq::QuantizeOptions o;
      o.scale_search = search;
      const loftq::PackedMatrix P = loftq::quantize(W, loftq::GgmlQuantizer(f), o);
      const std::vector<unsigned char> bytes = gio::ggml_block_bytes(P, f);
      const RowMatrixF D = loftq::dequantize(P);
      const std::vector<float> back =
          gio::ggml_dequantize(static_cast<std::uint32_t>(loftq::ggml_format_type_id(f)), bytes.data(), bytes.size(),
                               static_cast<std::uint64_t>(W.size()));
      REQUIRE(back.size() == static_cast<std::size_t>(D.size()));
      CHECK(std::memcmp(back.data(), D.data(), sizeof(float) * back.size()) == 0);
      // And it is a quantization of W: well within the signal.
      double err = 0;
      for (Eigen::Index i = 0; i < W.size(); ++i)
        err += std::pow(double(W.data()[i]) - back[static_cast<std::size_t>(i)], 2);
      CHECK(err < 0.2 * W.squaredNorm());
    }
}

TEST_CASE("ggml_dequantize refuses unknown types and byte counts that do not match") {
  std::vector<unsigned char> b(34 * 2, 0);
  for (std::uint32_t t : {id(T::Q8_1), id(T::Q8_K), id(T::I32), id(T::F64), 99u}) {
    CAPTURE(t);
    CHECK_FALSE(gio::ggml_can_dequantize(t));
    try {
      gio::ggml_dequantize(t, b.data(), b.size(), 64);
      FAIL("no exception");
    } catch (const loftq::Error& e) {
      CHECK(e.code() == loftq::Errc::unsupported);
    }
  }
  for (T t : kTypes) CHECK(gio::ggml_can_dequantize(id(t)));
  auto code_of = [&](std::size_t bytes, std::uint64_t n) {
    try {
      gio::ggml_dequantize(id(T::Q8_0), b.data(), bytes, n);
    } catch (const loftq::Error& e) {
      return e.code();
    }
    return loftq::Errc::unsupported;  // not reached when it throws; fails the checks below
  };
  CHECK(code_of(68, 48) == loftq::Errc::invalid_argument);  // not whole blocks
  CHECK(code_of(67, 64) == loftq::Errc::invalid_argument);  // one byte short
  CHECK(code_of(68, 32) == loftq::Errc::invalid_argument);  // bytes to spare
  CHECK(gio::ggml_dequantize(id(T::Q8_0), b.data(), 0, 0).empty());
  CHECK(gio::ggml_dequantize(id(T::Q8_0), b.data(), 68, 64) == std::vector<float>(64, 0.0f));
}
