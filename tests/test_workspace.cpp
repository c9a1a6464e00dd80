#include <doctest/doctest.h>

#include <atomic>
#include <loftq/data_aware.hpp>
#include <loftq/ggml_quantizer.hpp>
#include <loftq/initialize.hpp>
#include <loftq/workspace.hpp>
#include <tuple>
#include <vector>

#include "support.hpp"

using loftq::InputStatistics;
using loftq::Options;
using loftq::Result;
using loftq::RowMatrix;
using loftq::StatsMode;
using loftq::Workspace;

namespace {

// Every field of a result, its packed codes and scales too.
template <class Scalar>
auto fields(const Result<Scalar>& r) {
  const loftq::PackedMatrix& p = r.packed;
  return std::tie(r.Q, r.A, r.B, r.history, r.best_iteration, r.qlora_error, p.rows, p.cols, p.block_size, p.bits,
                  p.scale_mode, p.ggml_format, p.codebook, p.codes, p.scales, p.mins, p.ggml_blocks, p.scale_dq.codes);
}

template <class Scalar>
void check_same(const Result<Scalar>& a, const Result<Scalar>& b) {
  CHECK(fields(a) == fields(b));
}

const loftq::Quantizer nf4(loftq::Quantizer::Kind::normal_float, 4);

// Rank 4, `iterations` steps: enough to pass every buffer through the loop.
Options rank4(int iterations) {
  Options o;
  o.rank = 4;
  o.iterations = iterations;
  return o;
}

struct Shape {
  Eigen::Index m, n;
};

// Growing, shrinking, and m x n followed by n x m (the same size, another shape).
const std::vector<Shape> kShapes = {{48, 64}, {128, 96}, {32, 40}, {96, 128}};

template <class Scalar>
RowMatrix<Scalar> weights(const Shape& s, std::uint64_t seed) {
  return loftq_test::structured(s.m, s.n, seed).cast<Scalar>();
}

// Options whose loops take every path that touches the buffers: the SVD start
// (with its fallback to the zero start), the zero start, the warm scale search.
std::vector<Options> option_sets(int threads) {
  Options svd_start;
  svd_start.rank = 8;
  svd_start.iterations = 2;
  Options zero = svd_start;
  zero.start = loftq::Start::zero;
  zero.scale_search = false;
  zero.keep_best = false;
  std::vector<Options> all = {svd_start, zero};
  for (Options& o : all) o.threads = threads;
  return all;
}

// Every other result is recycled, so calls meet both a workspace that lost
// buffers to the previous result and one that got them back.
template <class Scalar>
void data_free_sequence(int threads) {
  const loftq::Quantizer nf2(loftq::Quantizer::Kind::normal_float, 2);
  Workspace<Scalar> ws;
  std::uint64_t seed = 1;
  bool recycle = false;
  for (const Options& o : option_sets(threads)) {
    for (const Shape& s : kShapes) {
      const RowMatrix<Scalar> W = weights<Scalar>(s, seed++);
      for (const loftq::Quantizer* q : {&nf4, &nf2}) {
        INFO(s.m << "x" << s.n << " bits " << q->bits << " start " << static_cast<int>(o.start) << " threads "
                 << threads);
        const Result<Scalar> plain = loftq::initialize(W, *q, o);
        Result<Scalar> reused = loftq::initialize(W, *q, o, ws);
        check_same(reused, plain);
        if (recycle) ws.recycle(std::move(reused));
        recycle = !recycle;
      }
    }
  }
  CHECK(ws.bytes() > 0);
}

}  // namespace

TEST_CASE("workspace: data-free results are bit-identical with and without it, float and double") {
  for (int threads : {1, 2}) data_free_sequence<float>(threads);
  data_free_sequence<double>(2);  // double runs the same loop: one thread count is enough
}

TEST_CASE("workspace: one workspace across quantizers (mins, ggml super-blocks, other widths)") {
  // Code sets of every kind pass through the same workspace, as in a
  // quantization mix's consecutive targets: each must come out as a fresh one
  // would.
  const loftq::Quantizer asym3(loftq::Quantizer::Kind::uniform, 3, 64, /*sym=*/false);
  const loftq::GgmlQuantizer q4k(loftq::GgmlFormat::q4_K), q8(loftq::GgmlFormat::q8_0), q6k(loftq::GgmlFormat::q6_K),
      q2k(loftq::GgmlFormat::q2_K);
  const loftq::GgmlQuantizer iq4xs(loftq::GgmlFormat::iq4_xs), iq4nl(loftq::GgmlFormat::iq4_nl),
      q3k(loftq::GgmlFormat::q3_K), q5k(loftq::GgmlFormat::q5_K);
  Workspace<float> ws;
  Options o;
  o.rank = 8;
  o.iterations = 2;
  const RowMatrix<float> big = loftq_test::structured(24, 512, 7), small = loftq_test::structured(16, 256, 8);
  for (const RowMatrix<float>* W : {&big, &small, &big}) {
    INFO(W->rows() << "x" << W->cols());
    Result<float> a = loftq::initialize(*W, asym3, o, ws);
    check_same(a, loftq::initialize(*W, asym3, o));
    ws.recycle(std::move(a));
    Result<float> b = loftq::initialize(*W, q4k, o, ws);
    check_same(b, loftq::initialize(*W, q4k, o));
    CHECK(!b.packed.ggml_blocks.empty());
    ws.recycle(std::move(b));
    check_same(loftq::initialize(*W, q8, o, ws), loftq::initialize(*W, q8, o));
    check_same(loftq::initialize(*W, nf4, o, ws), loftq::initialize(*W, nf4, o));
    // A K format after another with other widths and no minimums, recycled in turn.
    Result<float> c = loftq::initialize(*W, q6k, o, ws);
    check_same(c, loftq::initialize(*W, q6k, o));
    ws.recycle(std::move(c));
    check_same(loftq::initialize(*W, q2k, o, ws), loftq::initialize(*W, q2k, o));
    // The other ggml formats: a non-uniform codebook per super-block and per block, and K formats of 3 and 5 bits.
    for (const loftq::GgmlQuantizer* g : {&iq4xs, &iq4nl, &q3k, &q5k}) {
      Result<float> d = loftq::initialize(*W, *g, o, ws);
      check_same(d, loftq::initialize(*W, *g, o));
      ws.recycle(std::move(d));
    }
  }
}

TEST_CASE("workspace: data-aware results are bit-identical with and without it, full and diagonal statistics") {
  const loftq::Quantizer nf2(loftq::Quantizer::Kind::normal_float, 2);
  for (int threads : {1, 2}) {
    const Options o = option_sets(threads)[0];  // the SVD start and the warm scale search
    Workspace<float> ws;
    std::uint64_t seed = 100;
    for (const Shape& s : {kShapes[0], kShapes[3], kShapes[2]}) {
      const RowMatrix<float> W = weights<float>(s, seed);
      for (StatsMode mode : {StatsMode::full, StatsMode::diagonal}) {
        InputStatistics stats(s.n, mode);
        stats.add(loftq_test::correlated_samples(2 * s.n, s.n, seed + 1));
        INFO(s.m << "x" << s.n << (mode == StatsMode::full ? " full" : " diagonal") << " threads " << threads);
        const Result<float> plain = loftq::initialize(W, nf2, stats, o);
        Result<float> reused = loftq::initialize(W, nf2, stats, o, loftq::DataAwareOptions{}, ws);
        check_same(reused, plain);
        ws.recycle(std::move(reused));
        // Data-free calls in between share the workspace.
        check_same(loftq::initialize(W, nf2, o, ws), loftq::initialize(W, nf2, o));
      }
      seed += 2;
    }
  }
}

TEST_CASE("workspace: the SVD start's fallback to the zero start, which runs a second loop on the same workspace") {
  // Twenty huge isolated weights make the SVD start lose to q(W) (test_initialize has the case).
  RowMatrix<float> W = loftq_test::gaussian(64, 96, 71) * 0.01f;
  for (int i = 0; i < 20; ++i) W((i * 7) % 64, (i * 13) % 96) = i % 2 ? 1000.0f : -1000.0f;
  Options o = rank4(3);
  o.start = loftq::Start::svd;
  Options zero = o;
  zero.start = loftq::Start::zero;
  const Result<float> plain = loftq::initialize(W, nf4, o);
  check_same(plain, loftq::initialize(W, nf4, zero));  // it did fall back
  for (int threads : {1, 2}) {
    o.threads = threads;
    Workspace<float> ws;
    for (int call = 0; call < 3; ++call) {
      Result<float> r = loftq::initialize(W, nf4, o, ws);
      check_same(r, plain);
      if (call == 1) ws.recycle(std::move(r));
    }
  }
}

TEST_CASE("workspace: a recycled result's Q is the next same-size result's storage") {
  Options o = rank4(2);
  Workspace<float> ws;
  Result<float> r1 = loftq::initialize(RowMatrix<float>(loftq_test::structured(64, 96, 1)), nf4, o, ws);
  const float* q1 = r1.Q.data();
  ws.recycle(std::move(r1));
  CHECK(r1.Q.size() == 0);
  CHECK(r1.packed.codes.empty());
  // 96 x 64 has 64 x 96's size: the storage fits.
  const Result<float> r2 = loftq::initialize(RowMatrix<float>(loftq_test::structured(96, 64, 2)), nf4, o, ws);
  CHECK(r2.Q.data() == q1);
  CHECK(r2.Q.rows() == 96);
  // r2 still owns it: the next call gets fresh storage, with the same results as without a workspace.
  const RowMatrix<float> W3 = loftq_test::structured(96, 64, 3);
  const Result<float> r3 = loftq::initialize(W3, nf4, o, ws);
  CHECK(r3.Q.data() != q1);
  check_same(r3, loftq::initialize(W3, nf4, o));
}

TEST_CASE("workspace: what it keeps is bounded, and release() frees it") {
  Options o = rank4(1);
  Workspace<float> ws;
  CHECK(ws.bytes() == 0);
  const Eigen::Index m = 64, n = 96;
  const RowMatrix<float> W = loftq_test::structured(m, n, 5);
  std::vector<Result<float>> held;
  for (int i = 0; i < 10; ++i) held.push_back(loftq::initialize(W, nf4, o, ws));
  for (Result<float>& r : held) ws.recycle(std::move(r));
  // Per matrix: m n floats; per code set: m n / 2 bytes of codes and one float scale per 64 weights
  // (vector capacities may exceed sizes, so allow for each at most double).
  const std::size_t matrix = m * n * sizeof(float), codes = m * n / 2 + m * n / 64 * sizeof(float);
  CHECK(ws.bytes() >= Workspace<float>::kSpareMatrices * matrix);
  CHECK(ws.bytes() <= Workspace<float>::kSpareMatrices * matrix + Workspace<float>::kSparePacked * 2 * codes +
                          2 * (m * n / 64) * sizeof(float));
  ws.release();
  CHECK(ws.bytes() == 0);
  check_same(loftq::initialize(W, nf4, o, ws), loftq::initialize(W, nf4, o));
}

TEST_CASE("workspace: a call that must allocate first frees the spares that do not fit") {
  Options o = rank4(1);
  Workspace<float> ws;
  const RowMatrix<float> W = loftq_test::structured(64, 96, 11);
  Result<float> r = loftq::initialize(W, nf4, o, ws);
  ws.recycle(std::move(r));
  // Held: the 64 x 96 residual and three code sets of 64 x 96 at 4 bits.
  const std::size_t matrix = 64 * 96 * sizeof(float), codes = 64 * 96 / 2;
  const std::size_t held = ws.bytes();
  REQUIRE(held >= matrix + 3 * codes);
  // 40 x 32 needs a residual of another size: the spare one is freed, not kept
  // beside the new one; the code sets are large enough and serve again.
  const RowMatrix<float> small = loftq_test::structured(40, 32, 12);
  const Result<float> s = loftq::initialize(small, nf4, o, ws);
  check_same(s, loftq::initialize(small, nf4, o));
  CHECK(ws.bytes() <= held - matrix);
  CHECK(ws.bytes() >= 2 * codes);  // current and next, back in the workspace
  // 128 x 96 at 8 bits needs larger code sets than any held: all are freed first,
  // and what is held afterwards is this call's two (no 64 x 96 set beside them).
  const loftq::Quantizer int8(loftq::Quantizer::Kind::uniform, 8);
  const RowMatrix<float> big = loftq_test::structured(128, 96, 13);
  const Result<float> b = loftq::initialize(big, int8, o, ws);
  check_same(b, loftq::initialize(big, int8, o));
  const std::size_t big_codes = 128 * 96;
  CHECK(ws.bytes() >= 2 * big_codes);
  CHECK(ws.bytes() < 2 * big_codes + codes);
}

TEST_CASE("workspace: a call on a workspace in use throws invalid_argument, and an aborted call leaves it usable") {
  Options o = rank4(2);
  const RowMatrix<float> W = loftq_test::structured(64, 96, 9);
  Workspace<float> ws;
  {
    // What another thread's call holds while it runs.
    loftq::detail::WorkspaceLease<float> busy(&ws);
    CHECK(loftq_test::code_of([&] { loftq::initialize(W, nf4, o, ws); }) == loftq::Errc::invalid_argument);
    InputStatistics stats(96);
    stats.add(loftq_test::correlated_samples(200, 96, 1));
    CHECK(loftq_test::code_of([&] { loftq::initialize(W, nf4, stats, o, {}, ws); }) == loftq::Errc::invalid_argument);
    Result<float> r;
    CHECK(loftq_test::code_of([&] { ws.recycle(std::move(r)); }) == loftq::Errc::invalid_argument);
    CHECK(loftq_test::code_of([&] { ws.release(); }) == loftq::Errc::invalid_argument);
  }
  // Cancelled mid-way: the buffers it held go back, and the next call is unaffected.
  std::atomic<bool> cancel{true};
  Options cancelled = o;
  cancelled.cancel = &cancel;
  CHECK(loftq_test::code_of([&] { loftq::initialize(W, nf4, cancelled, ws); }) == loftq::Errc::cancelled);
  // Invalid options are refused before the workspace is touched.
  Options bad = o;
  bad.rank = 0;
  CHECK(loftq_test::code_of([&] { loftq::initialize(W, nf4, bad, ws); }) == loftq::Errc::invalid_argument);
  check_same(loftq::initialize(W, nf4, o, ws), loftq::initialize(W, nf4, o));
}
