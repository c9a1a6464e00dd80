// ggml's K formats as LoftQ quantizers (ggml_quantizer.hpp, ggml_format.hpp):
// the stored super-blocks decoded by an independent reading of ggml-common.h
// (common/ggml_layout.hpp) give Q bit for bit, the search never loses to
// ggml's block, LoftQ runs in each format, and with scale_search off the
// bytes are ggml's own, checked against ggml_quantize_chunk of a prebuilt
// llama.cpp when one is available.
#include <loftq/io/gguf.hpp>
#include <loftq/loftq.hpp>

#include <doctest/doctest.h>

#include <dlfcn.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "common/matrices.hpp"
#include "common/ggml_base_lib.hpp"
#include "support/ggml_chunk.hpp"
#include "common/ggml_layout.hpp"

namespace {

using RowMatrixF = loftq::RowMatrix<float>;
using loftq::GgmlFormat;

const GgmlFormat kFormats[] = {GgmlFormat::q2_K, GgmlFormat::q3_K, GgmlFormat::q4_K,
                               GgmlFormat::q5_K, GgmlFormat::q6_K, GgmlFormat::iq4_xs};

RowMatrixF realistic(Eigen::Index m, Eigen::Index n, std::uint64_t seed) {
  return loftq_common::realistic_matrix(m, n, seed);
}

bool same_bits(const float* a, const float* b, std::size_t n) { return std::memcmp(a, b, sizeof(float) * n) == 0; }

loftq::QuantizeOptions with_search(bool search, int threads = 0) {
  loftq::QuantizeOptions o;
  o.scale_search = search;
  o.threads = threads;
  return o;
}

// The stored super-blocks through the test's own decoder.
std::vector<float> decode_blocks(const loftq::PackedMatrix& P, GgmlFormat f) {
  return gguf_layout::decode(
      static_cast<std::uint32_t>(loftq::ggml_format_type_id(f)), P.ggml_blocks.data(),
      static_cast<std::uint64_t>(P.ggml_blocks.size() / loftq::ggml_format_block_bytes(f)) * 256);
}

// Squared error of super-block b.
double block_error(const RowMatrixF& W, const RowMatrixF& Q, Eigen::Index b) {
  double e = 0;
  for (Eigen::Index j = 256 * b; j < 256 * (b + 1); ++j) {
    const double d = static_cast<double>(W.data()[j]) - Q.data()[j];
    e += d * d;
  }
  return e;
}

}  // namespace

TEST_CASE("K formats: names, ggml type ids, block bytes and bits per weight as the file stores them") {
  struct Row {
    GgmlFormat f;
    const char* name;
    int type, bytes, bits;
    double bpw;
  };
  const Row rows[] = {{GgmlFormat::q2_K, "q2_K", 10, 84, 2, 2.625},   {GgmlFormat::q3_K, "q3_K", 11, 110, 3, 3.4375},
                      {GgmlFormat::q4_K, "q4_K", 12, 144, 4, 4.5},    {GgmlFormat::q5_K, "q5_K", 13, 176, 5, 5.5},
                      {GgmlFormat::q6_K, "q6_K", 14, 210, 6, 6.5625}, {GgmlFormat::iq4_xs, "iq4_xs", 23, 136, 4, 4.25}};
  for (const Row& r : rows) {
    CHECK(std::string(loftq::ggml_format_name(r.f)) == r.name);
    CHECK(loftq::ggml_format_type_id(r.f) == r.type);
    CHECK(loftq::ggml_format_block_bytes(r.f) == r.bytes);
    CHECK(loftq::ggml_format_block(r.f) == 256);
    CHECK(loftq::ggml_format_bits(r.f) == r.bits);
    CHECK(loftq::ggml_format_bits_per_weight(r.f) == r.bpw);
    std::uint64_t elems = 0, bytes = 0;
    gguf_layout::block_of(static_cast<std::uint32_t>(r.type), elems, bytes);
    CHECK(elems == 256);
    CHECK(bytes == static_cast<std::uint64_t>(r.bytes));
  }
  CHECK(loftq::ggml_format_bits_per_weight(GgmlFormat::q4_0) == 4.5);
  CHECK(loftq::ggml_format_bits_per_weight(GgmlFormat::iq4_nl) == 4.5);
  CHECK(loftq::ggml_format_bits_per_weight(GgmlFormat::q8_0) == 8.5);
  CHECK(loftq::ggml_format_type_id(GgmlFormat::q4_0) == 2);
  CHECK(loftq::ggml_format_type_id(GgmlFormat::iq4_nl) == 20);
}

// What a quantizer's PackedMatrix reports is what the GGUF file stores: the
// sizes of ggml-common.h's block structs (common/ggml_layout.hpp), and
// ggml_type_size / ggml_blck_size of a prebuilt llama.cpp when one is there.
TEST_CASE("PackedMatrix::bits_per_weight of every ggml format counts ggml's blocks, not fp32 scales") {
  const std::pair<GgmlFormat, double> bpw[] = {
      {GgmlFormat::q4_0, 4.5},   {GgmlFormat::iq4_nl, 4.5},  {GgmlFormat::q8_0, 8.5},
      {GgmlFormat::q2_K, 2.625}, {GgmlFormat::q3_K, 3.4375}, {GgmlFormat::q4_K, 4.5},
      {GgmlFormat::q5_K, 5.5},   {GgmlFormat::q6_K, 6.5625}, {GgmlFormat::iq4_xs, 4.25}};
  using Size = std::size_t (*)(int);
  using Blck = std::int64_t (*)(int);
  Size type_size = nullptr;
  Blck blck_size = nullptr;
  std::string why;
  void* lib = loftq_common::open_ggml_base(why);
  if (lib) {
    type_size = reinterpret_cast<Size>(dlsym(lib, "ggml_type_size"));
    blck_size = reinterpret_cast<Blck>(dlsym(lib, "ggml_blck_size"));
    REQUIRE((type_size && blck_size));
  } else {
    MESSAGE("ggml's own sizes skipped: " << why);
  }
  const RowMatrixF W = realistic(4, 512, 3);
  for (const auto& [f, want] : bpw) {
    CAPTURE(std::string(loftq::ggml_format_name(f)));
    const int type = loftq::ggml_format_type_id(f);
    std::uint64_t elems = 0, bytes = 0;
    gguf_layout::block_of(static_cast<std::uint32_t>(type), elems, bytes);
    CHECK(8.0 * static_cast<double>(bytes) / static_cast<double>(elems) == want);
    if (lib) CHECK(8.0 * static_cast<double>(type_size(type)) / static_cast<double>(blck_size(type)) == want);
    const loftq::PackedMatrix P = loftq::quantize(W, loftq::GgmlQuantizer(f));
    CHECK(P.ggml_format == f);
    CHECK(P.bits_per_weight() == want);
    CHECK(loftq::ggml_format_bits_per_weight(f) == want);
    // Through the alternation too: the Result's packed Q.
    loftq::Options o;
    o.rank = 4;
    o.iterations = 1;
    CHECK(loftq::initialize(W, loftq::GgmlQuantizer(f), o).packed.bits_per_weight() == want);
  }
  // A quantizer without a ggml format still counts its fp32 scales: 4 bits + 32 / 64.
  CHECK(loftq::quantize(W, loftq::Quantizer(loftq::Quantizer::Kind::uniform, 4, 64, true)).bits_per_weight() == 4.5);
  if (lib) dlclose(lib);
}

TEST_CASE("ggml formats: general.file_type is llama.h's LLAMA_FTYPE, as llama.cpp's loader infers it") {
  // enum llama_ftype: MOSTLY_Q4_0 2, Q8_0 7, Q2_K 10, Q3_K_M 12, Q4_K_M 15, Q5_K_M 17, Q6_K 18, IQ4_NL 25, IQ4_XS 30.
  const std::pair<GgmlFormat, std::uint32_t> ftypes[] = {
      {GgmlFormat::q4_0, 2},  {GgmlFormat::q8_0, 7},    {GgmlFormat::q2_K, 10},
      {GgmlFormat::q3_K, 12}, {GgmlFormat::q4_K, 15},   {GgmlFormat::q5_K, 17},
      {GgmlFormat::q6_K, 18}, {GgmlFormat::iq4_nl, 25}, {GgmlFormat::iq4_xs, 30}};
  for (const auto& f : ftypes) CHECK(loftq::ggml_format_llama_ftype(f.first) == f.second);
  CHECK(loftq::kGgmlQuantizationVersion == 2);
  CHECK_THROWS_AS(loftq::ggml_format_llama_ftype(GgmlFormat::none), loftq::Error);
}

TEST_CASE("K formats: the stored super-blocks decode to Q bit for bit, and quantize/fake_quantize/dequantize agree") {
  const RowMatrixF W = realistic(6, 512, 1);
  for (GgmlFormat f : kFormats)
    for (bool search : {false, true}) {
      const std::string fname = loftq::ggml_format_name(f);
      CAPTURE(fname);
      CAPTURE(search);
      const loftq::GgmlQuantizer q(f);
      const loftq::PackedMatrix P = loftq::quantize(W, q, with_search(search));
      const RowMatrixF F = loftq::fake_quantize(W, q, with_search(search));
      const RowMatrixF D = loftq::dequantize(P);
      const std::size_t n = static_cast<std::size_t>(W.size());
      REQUIRE(P.ggml_blocks.size() == n / 256 * static_cast<std::size_t>(loftq::ggml_format_block_bytes(f)));
      CHECK(P.block_size == loftq::ggml_format_sub_block(f));
      CHECK(P.scale_mode == (loftq::ggml_has_min(f) ? loftq::ScaleMode::affine : loftq::ScaleMode::absmax));
      CHECK(same_bits(F.data(), D.data(), n));
      const std::vector<float> G = decode_blocks(P, f);
      CHECK(same_bits(G.data(), F.data(), n));
      // A sanity bound: the quantization error is well below the signal.
      CHECK((W - F).squaredNorm() < 0.2 * W.squaredNorm());
    }
}

TEST_CASE("K formats: a double matrix quantizes as its float values, and fake_quantize equals dequantize<double>") {
  const RowMatrixF W = realistic(4, 256, 11);
  const loftq::RowMatrix<double> Wd = W.cast<double>();
  for (GgmlFormat f : kFormats) {
    const loftq::GgmlQuantizer q(f);
    const loftq::PackedMatrix P = loftq::quantize(Wd, q, with_search(true));
    const loftq::PackedMatrix Pf = loftq::quantize(W, q, with_search(true));
    CHECK(P.ggml_blocks == Pf.ggml_blocks);
    const loftq::RowMatrix<double> F = loftq::fake_quantize(Wd, q, with_search(true));
    const loftq::RowMatrix<double> D = loftq::dequantize<double>(P);
    CHECK(std::memcmp(F.data(), D.data(), sizeof(double) * static_cast<std::size_t>(W.size())) == 0);
    // Each value is within float roundings (of the product and the
    // difference, relative to the matrix's scale) of ggml's float value.
    const RowMatrixF G = loftq::dequantize(Pf);
    const double tol = 1e-6 * static_cast<double>(W.cwiseAbs().maxCoeff());
    for (Eigen::Index i = 0; i < W.size(); ++i) CHECK(std::fabs(D.data()[i] - G.data()[i]) <= tol);
  }
}

TEST_CASE("K formats: a shape that is not whole super-blocks quantizes as if padded with zeros") {
  const RowMatrixF W = realistic(3, 100, 2);  // 300 elements: one full super-block and 44 more
  RowMatrixF Wp = RowMatrixF::Zero(1, 512);
  std::memcpy(Wp.data(), W.data(), sizeof(float) * 300);
  for (GgmlFormat f : kFormats) {
    const std::string fname = loftq::ggml_format_name(f);
    CAPTURE(fname);
    const loftq::GgmlQuantizer q(f);
    for (bool search : {false, true}) {
      const loftq::PackedMatrix P = loftq::quantize(W, q, with_search(search));
      const RowMatrixF D = loftq::dequantize(P), F = loftq::fake_quantize(W, q, with_search(search));
      CHECK(same_bits(D.data(), F.data(), 300));
      REQUIRE(P.ggml_blocks.size() == 2 * static_cast<std::size_t>(loftq::ggml_format_block_bytes(f)));
      const std::vector<float> G = decode_blocks(P, f);
      CHECK(same_bits(G.data(), F.data(), 300));
      if (!search) {  // ggml's choice sees the padding zeros
        const loftq::PackedMatrix Pp = loftq::quantize(Wp, q, with_search(false));
        CHECK(Pp.ggml_blocks == P.ggml_blocks);
      }
    }
  }
}

TEST_CASE("K formats: the search never loses to ggml's block, super-block by super-block") {
  const RowMatrixF W = realistic(32, 1024, 3);
  for (GgmlFormat f : kFormats) {
    const loftq::GgmlQuantizer q(f);
    const RowMatrixF A = loftq::fake_quantize(W, q, with_search(false)),
                     B = loftq::fake_quantize(W, q, with_search(true));
    int better = 0;
    for (Eigen::Index b = 0; b < W.size() / 256; ++b) {
      const double ea = block_error(W, A, b), eb = block_error(W, B, b);
      CHECK(eb <= ea);
      better += eb < ea;
    }
    CHECK(better > 0);
    MESSAGE(std::string(loftq::ggml_format_name(f))
            << ": searched / ggml squared error " << (W - B).squaredNorm() / (W - A).squaredNorm() << ", " << better
            << " of " << W.size() / 256 << " super-blocks improved");
  }
}

TEST_CASE("K formats: with column weights the search never loses to ggml's block in the weighted error") {
  const RowMatrixF W = realistic(8, 512, 8);
  std::vector<float> w(512);
  for (std::size_t j = 0; j < w.size(); ++j) w[j] = j % 7 == 0 ? 25.0f : 0.5f + static_cast<float>(j % 5);
  auto weighted = [&](const RowMatrixF& Q, Eigen::Index b) {
    double e = 0;
    for (Eigen::Index j = 256 * b; j < 256 * (b + 1); ++j) {
      const double d = static_cast<double>(W.data()[j]) - Q.data()[j];
      e += static_cast<double>(w[static_cast<std::size_t>(j % 512)]) * d * d;
    }
    return e;
  };
  for (GgmlFormat f : kFormats) {
    loftq::detail::QuantSpec s = loftq::detail::spec_of(loftq::GgmlQuantizer(f));
    RowMatrixF A(W.rows(), W.cols()), B(W.rows(), W.cols()), U(W.rows(), W.cols());
    loftq::detail::quantize_flat<float>(W.data(), A.data(), nullptr, W.size(), s, 1);
    s.search = true;
    loftq::detail::quantize_flat<float>(W.data(), U.data(), nullptr, W.size(), s, 1);
    s.col_weights = w.data();
    s.cols = 512;
    loftq::detail::quantize_flat<float>(W.data(), B.data(), nullptr, W.size(), s, 1);
    double ea = 0, eb = 0, eu = 0;
    for (Eigen::Index b = 0; b < W.size() / 256; ++b) {
      CHECK(weighted(B, b) <= weighted(A, b));
      ea += weighted(A, b);
      eb += weighted(B, b);
      eu += weighted(U, b);
    }
    // The weights steer the search: better in the weighted error than the unweighted search.
    CHECK(eb < eu);
    MESSAGE(std::string(loftq::ggml_format_name(f)) << ": weighted error, column-weighted search / ggml " << eb / ea
                                                    << ", unweighted search / ggml " << eu / ea);
  }
}

TEST_CASE("K formats: data-aware LoftQ gives the format's Q and beats q(W) in the output error") {
  const RowMatrixF W = realistic(32, 256, 9);
  RowMatrixF X = realistic(300, 256, 10);
  for (int j = 0; j < 8; ++j) X.col(j * 31) *= 10.0f;  // a few loud input channels
  loftq::InputStatistics stats(256, loftq::StatsMode::diagonal);
  stats.add(X);
  loftq::Options opt;
  opt.rank = 4;
  opt.iterations = 3;
  for (GgmlFormat f : {GgmlFormat::q4_K, GgmlFormat::q3_K}) {
    const auto r = loftq::initialize(W, loftq::GgmlQuantizer(f), stats, opt);
    const RowMatrixF D = loftq::dequantize(r.packed);
    CHECK(same_bits(r.Q.data(), D.data(), static_cast<std::size_t>(W.size())));
    const std::vector<float> G = decode_blocks(r.packed, f);
    CHECK(same_bits(G.data(), r.Q.data(), static_cast<std::size_t>(W.size())));
    CHECK(r.error() < r.qlora_error);
  }
}

TEST_CASE("K formats: LoftQ in each format beats QLoRA in its first step and does not depend on threads") {
  const RowMatrixF W = realistic(64, 512, 4);
  loftq::Options opt;
  opt.rank = 8;
  opt.iterations = 3;
  for (GgmlFormat f : kFormats)
    for (bool search : {true, false}) {
      const std::string fname = loftq::ggml_format_name(f);
      CAPTURE(fname);
      CAPTURE(search);
      opt.scale_search = search;
      opt.threads = 1;
      const auto r1 = loftq::initialize(W, loftq::GgmlQuantizer(f), opt);
      opt.threads = 2;
      const auto r2 = loftq::initialize(W, loftq::GgmlQuantizer(f), opt);
      const std::size_t n = static_cast<std::size_t>(W.size());
      CHECK(same_bits(r1.Q.data(), r2.Q.data(), n));
      CHECK(r1.packed.codes == r2.packed.codes);
      CHECK(r1.packed.ggml_blocks == r2.packed.ggml_blocks);
      CHECK(r1.A == r2.A);
      CHECK(r1.B == r2.B);
      CHECK(r1.Q.allFinite());
      CHECK(r1.A.allFinite());
      CHECK(r1.B.allFinite());
      const RowMatrixF D = loftq::dequantize(r1.packed);
      CHECK(same_bits(r1.Q.data(), D.data(), n));
      const std::vector<float> G = decode_blocks(r1.packed, f);
      CHECK(same_bits(G.data(), r1.Q.data(), n));
      REQUIRE(!r1.history.empty());
      CHECK(r1.history.front() < r1.qlora_error);
      CHECK(r1.error() < r1.qlora_error);
    }
  // The typed quantizers are the same as the runtime one.
  opt.scale_search = true;
  const auto a = loftq::initialize(W, loftq::GgmlQ4_K{}, opt),
             b = loftq::initialize(W, loftq::GgmlQuantizer(GgmlFormat::q4_K), opt);
  CHECK(a.packed.ggml_blocks == b.packed.ggml_blocks);
}

TEST_CASE("K formats: 1 and 2 threads give the same bytes in quantize") {
  const RowMatrixF W = realistic(130, 256, 5);  // 130 super-blocks: more than one task
  for (GgmlFormat f : kFormats)
    for (bool search : {false, true}) {
      const loftq::PackedMatrix P1 = loftq::quantize(W, loftq::GgmlQuantizer(f), with_search(search, 1));
      const loftq::PackedMatrix P2 = loftq::quantize(W, loftq::GgmlQuantizer(f), with_search(search, 2));
      CHECK(P1.ggml_blocks == P2.ggml_blocks);
      CHECK(P1.codes == P2.codes);
      CHECK(P1.scales == P2.scales);
      CHECK(P1.mins == P2.mins);
    }
}

TEST_CASE("K formats: NaN or Inf in W is rejected") {
  RowMatrixF W = realistic(2, 256, 6);
  for (float bad : {std::nanf(""), INFINITY}) {
    W(1, 7) = bad;
    for (GgmlFormat f : kFormats) {
      CHECK_THROWS_AS(loftq::quantize(W, loftq::GgmlQuantizer(f), with_search(false)), loftq::Error);
      try {
        loftq::fake_quantize(W, loftq::GgmlQuantizer(f), with_search(true));
        FAIL("no exception");
      } catch (const loftq::Error& e) {
        CHECK(e.code() == loftq::Errc::non_finite);
      }
    }
  }
}

// ggml's own quantization, loaded from a prebuilt llama.cpp
// (@node-llama-cpp/linux-x64@3.22.1: bins/linux-x64/libggml-base.so). With
// imatrix = nullptr, ggml_quantize_chunk calls quantize_q2_K ... quantize_q6_K,
// which then run quantize_row_q*_K_ref on the whole chunk, and quantize_iq4_xs,
// which runs quantize_row_iq4_nl_impl with no quant weights (weights x^2):
// exactly what scale_search = false reproduces.
TEST_CASE("scale_search = false writes ggml_quantize_chunk's bytes, K formats and the 32-element ones") {
  const loftq_common::GgmlQuantizeChunkLib ggml;
  const loftq_common::GgmlQuantizeChunk chunk = loftq_test::ggml_quantize_chunk_or_skip(ggml);
  if (!chunk) return;

  // Realistic rows, plus super-blocks that take ggml's special paths: all
  // zero, one constant, all positive, tiny values, one huge outlier.
  RowMatrixF W = realistic(24, 1024, 7);
  W.row(0).segment(0, 256).setZero();
  W.row(0).segment(256, 256).setConstant(0.01f);
  W.row(1).segment(0, 256) = W.row(1).segment(0, 256).cwiseAbs();
  W.row(1).segment(256, 256) *= 1e-12f;
  W(2, 17) = 3.0f;
  W.row(2).segment(512, 32).setZero();
  for (GgmlFormat f : kFormats) {
    const std::string fname = loftq::ggml_format_name(f);
    CAPTURE(fname);
    const loftq::PackedMatrix P = loftq::quantize(W, loftq::GgmlQuantizer(f), with_search(false));
    std::vector<unsigned char> ref(P.ggml_blocks.size() + 64, 0xAB);
    const std::size_t written =
        chunk(loftq::ggml_format_type_id(f), W.data(), ref.data(), 0, W.rows(), W.cols(), nullptr);
    REQUIRE(written == P.ggml_blocks.size());
    ref.resize(written);
    const std::size_t nb = written / static_cast<std::size_t>(loftq::ggml_format_block_bytes(f));
    std::size_t differ = 0;
    for (std::size_t b = 0; b < nb; ++b) {
      const std::size_t bytes = static_cast<std::size_t>(loftq::ggml_format_block_bytes(f));
      differ += std::memcmp(ref.data() + b * bytes, P.ggml_blocks.data() + b * bytes, bytes) != 0;
    }
    CHECK(differ == 0);
    MESSAGE(std::string(loftq::ggml_format_name(f))
            << ": " << nb - differ << " of " << nb << " super-blocks identical to ggml's");
  }
  // The 32-element formats too (ggml_quantize_chunk: quantize_row_q4_0_ref,
  // quantize_row_q8_0_ref, quantize_iq4_nl with no quant weights), through
  // the GGUF writer's bytes.
  for (GgmlFormat f : {GgmlFormat::q4_0, GgmlFormat::q8_0, GgmlFormat::iq4_nl}) {
    const std::string fname = loftq::ggml_format_name(f);
    CAPTURE(fname);
    const std::vector<unsigned char> ours =
        loftq::io::ggml_block_bytes(loftq::quantize(W, loftq::GgmlQuantizer(f), with_search(false)), f);
    std::vector<unsigned char> ref(ours.size());
    REQUIRE(chunk(loftq::ggml_format_type_id(f), W.data(), ref.data(), 0, W.rows(), W.cols(), nullptr) == ours.size());
    CHECK(ref == ours);
  }
}
