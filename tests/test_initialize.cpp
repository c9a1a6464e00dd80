#include <doctest/doctest.h>

#include <Eigen/SVD>
#include <atomic>
#include <chrono>
#include <limits>
#include <thread>
#include <loftq/initialize.hpp>

#include "support.hpp"
#include "support/time_bound.hpp"

using loftq::NormalFloat;
using loftq::Options;
using loftq::RowMatrix;

namespace {

// The reference loop written the obvious way: argmin over the table, full SVD.
struct Reference {
  RowMatrix<float> Q;
  std::vector<double> history;
  std::vector<int> first_codes;
};

Reference reference_loftq(const RowMatrix<float>& W, const std::vector<float>& table, int rank, int T, int bs) {
  Reference out;
  const Eigen::Index m = W.rows(), n = W.cols(), N = W.size();
  RowMatrix<float> res = W, Q(m, n);
  for (int t = 1; t <= T; ++t) {
    for (Eigen::Index b = 0; b * bs < N; ++b) {
      const Eigen::Index e1 = std::min<Eigen::Index>(N, (b + 1) * bs);
      float amax = 0;
      for (Eigen::Index e = b * bs; e < e1; ++e) amax = std::max(amax, std::abs(res.data()[e]));
      for (Eigen::Index e = b * bs; e < e1; ++e) {
        const float y = amax == 0 ? 0.0f : res.data()[e] / amax;
        int best = 0;
        for (int i = 1; i < static_cast<int>(table.size()); ++i)
          if (std::abs(y - table[i]) < std::abs(y - table[best])) best = i;
        if (t == 1) out.first_codes.push_back(best);
        Q.data()[e] = table[best] * amax;
      }
    }
    const Eigen::MatrixXd R = (W - Q).cast<double>();
    Eigen::BDCSVD<Eigen::MatrixXd> svd(R, Eigen::ComputeThinU | Eigen::ComputeThinV);
    const Eigen::MatrixXd L = svd.matrixU().leftCols(rank) * svd.singularValues().head(rank).asDiagonal() *
                              svd.matrixV().leftCols(rank).transpose();
    out.history.push_back((R - L).norm() / W.cast<double>().norm());
    res = W - L.cast<float>();
  }
  out.Q = Q;
  return out;
}

double true_error(const RowMatrix<float>& W, const loftq::Result<float>& r) {
  const Eigen::MatrixXd D = W.cast<double>() - r.Q.cast<double>() - r.A.cast<double>() * r.B.cast<double>().transpose();
  return D.norm() / W.cast<double>().norm();
}

}  // namespace

TEST_CASE("matches a brute-force reference loop: T=1 codes exactly, errors to 1e-4") {
  const RowMatrix<float> W = loftq_test::structured(96, 160, 21);
  for (int bits : {2, 4}) {
    const loftq::Quantizer q(loftq::Quantizer::Kind::normal_float, bits);
    Options o;
    o.rank = 8;
    o.iterations = 5;
    o.svd.method = loftq::SVDMethod::exact;
    o.keep_best = false;
    o.scale_search = false;  // the reference's absmax scales and zero start
    o.start = loftq::Start::zero;
    Options o1 = o;
    o1.iterations = 1;
    const auto ref = reference_loftq(W, q.codebook(), 8, 5, 64);
    const auto r1 = loftq::initialize(W, q, o1);
    for (Eigen::Index e = 0; e < W.size(); ++e)
      REQUIRE(r1.packed.code(e) == ref.first_codes[static_cast<std::size_t>(e)]);
    const auto r = loftq::initialize(W, q, o);
    REQUIRE(r.history.size() == 5);
    for (int t = 0; t < 5; ++t) CHECK(r.history[t] == doctest::Approx(ref.history[t]).epsilon(1e-4));
    CHECK(r.best_iteration == 5);
  }
}

TEST_CASE("the result is consistent: history, Q, packed, A and B agree") {
  const RowMatrix<float> W = loftq_test::structured(200, 150, 3);
  Options o;
  o.rank = 12;
  const auto r = loftq::initialize(W, NormalFloat<2>{}, o);
  REQUIRE(r.history.size() == 5);
  CHECK(r.A.rows() == 200);
  CHECK(r.A.cols() == 12);
  CHECK(r.B.rows() == 150);
  CHECK(r.B.cols() == 12);
  CHECK(r.Q == loftq::dequantize<float>(r.packed));
  CHECK(true_error(W, r) == doctest::Approx(r.error()).epsilon(1e-5));
  CHECK(r.error() == *std::min_element(r.history.begin(), r.history.end()));
  CHECK(r.qlora_error ==
        doctest::Approx((W - loftq::fake_quantize(W, NormalFloat<2>{})).norm() / W.norm()).epsilon(1e-5));
  CHECK(r.history[0] < r.qlora_error);  // one SVD step can only help
  // The sqrt(S) split: A and B have equal column norms.
  for (Eigen::Index j = 0; j < 12; ++j) CHECK(r.A.col(j).norm() == doctest::Approx(r.B.col(j).norm()).epsilon(1e-4));
  // Requantizing Q reproduces its codes (fake and true quantization agree).
  CHECK(loftq::quantize(r.Q, NormalFloat<2>{}).codes == r.packed.codes);
}

TEST_CASE("keep_best returns the lowest-error iterate; keep_best=false the last") {
  const RowMatrix<float> W = loftq_test::structured(128, 128, 5);
  Options o;
  o.rank = 4;
  o.iterations = 6;
  o.keep_best = false;
  const auto last = loftq::initialize(W, NormalFloat<2>{}, o);
  CHECK(last.best_iteration == 6);
  CHECK(true_error(W, last) == doctest::Approx(last.history.back()).epsilon(1e-5));
  o.keep_best = true;
  const auto best = loftq::initialize(W, NormalFloat<2>{}, o);
  CHECK(best.history == last.history);
  const auto it = std::min_element(best.history.begin(), best.history.end());
  CHECK(best.best_iteration == 1 + (it - best.history.begin()));
  CHECK(true_error(W, best) == doctest::Approx(*it).epsilon(1e-5));
}

TEST_CASE("early stopping on the relative improvement") {
  const RowMatrix<float> W = loftq_test::structured(128, 96, 6);
  Options o;
  o.rank = 4;
  o.iterations = 20;
  o.tolerance = 0.5;  // nothing improves by 50%: stops after the second iteration
  CHECK(loftq::initialize(W, NormalFloat<4>{}, o).history.size() == 2);
  o.tolerance = 0;
  CHECK(loftq::initialize(W, NormalFloat<4>{}, o).history.size() == 20);
}

TEST_CASE("input layouts and scalar types give the same result") {
  const Eigen::MatrixXf Wc = loftq_test::structured(90, 130, 8);
  const RowMatrix<float> Wr = Wc;
  Options o;
  o.rank = 6;
  const auto a = loftq::initialize(Wc, NormalFloat<4>{}, o);
  const auto b = loftq::initialize(Wr, NormalFloat<4>{}, o);
  const auto c = loftq::initialize(Eigen::Map<const RowMatrix<float>>(Wr.data(), 90, 130), NormalFloat<4>{}, o);
  const auto d = loftq::initialize(Eigen::Ref<const Eigen::MatrixXf>(Wc), NormalFloat<4>{}, o);
  for (const auto* x : {&b, &c, &d}) {
    CHECK(x->Q == a.Q);
    CHECK(x->A == a.A);
    CHECK(x->B == a.B);
    CHECK(x->history == a.history);
  }
  const auto e = loftq::initialize(Wc.cast<double>(), NormalFloat<4>{}, o);
  CHECK(e.error() == doctest::Approx(a.error()).epsilon(1e-3));
  CHECK(e.Q.cast<float>().isApprox(a.Q, 1e-3f));
}

TEST_CASE("bit-identical for 1 and 2 threads") {
  const RowMatrix<float> W = loftq_test::structured(520, 700, 10);
  for (auto method : {loftq::SVDMethod::randomized, loftq::SVDMethod::exact}) {
    Options o;
    o.svd.method = method;
    o.threads = 1;
    const auto r1 = loftq::initialize(W, NormalFloat<4>{}, o);
    o.threads = 2;
    const auto r2 = loftq::initialize(W, NormalFloat<4>{}, o);
    loftq_test::check_identical(r1, r2);
  }
}

TEST_CASE("Options::cancel: a raised flag stops the call with Errc::cancelled; a lowered one changes nothing") {
  const Eigen::MatrixXf W = loftq_test::structured(192, 160, 11);
  const NormalFloat<2> q{};
  Options o;
  o.rank = 8;
  const auto plain = loftq::initialize(W, q, o);
  std::atomic<bool> flag{false};
  o.cancel = &flag;
  loftq_test::check_identical(plain, loftq::initialize(W, q, o));
  flag = true;
  for (loftq::Start s : {loftq::Start::zero, loftq::Start::svd}) {
    o.start = s;
    try {
      (void)loftq::initialize(W, q, o);
      FAIL("no exception");
    } catch (const loftq::Error& e) {
      CHECK(e.code() == loftq::Errc::cancelled);
    }
  }
  // Raised from another thread during a long run: it stops within a step,
  // not after the 100000 iterations asked for.
  flag = false;
  o.iterations = 100000;
  std::thread raiser([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    flag = true;
  });
  const auto t0 = std::chrono::steady_clock::now();
  CHECK_THROWS_AS(loftq::initialize(W, q, o), loftq::Error);
  const double seconds = loftq_test::seconds_since(t0);
  raiser.join();
  CHECK(seconds < loftq_test::time_bound(5.0));
}

TEST_CASE("randomized SVD stays within 0.5% of exact") {
  const RowMatrix<float> W = loftq_test::structured(512, 384, 12);
  for (int bits : {2, 4}) {
    const loftq::Quantizer q(loftq::Quantizer::Kind::normal_float, bits);
    Options o;
    const auto rnd = loftq::initialize(W, q, o);
    o.svd.method = loftq::SVDMethod::exact;
    const auto ex = loftq::initialize(W, q, o);
    CHECK(rnd.error() <= ex.error() * 1.005);
  }
}

TEST_CASE("the fused residual-and-quantize sweep equals the two passes it replaces, bit for bit") {
  struct Case {
    Eigen::Index m, n;
    int bits;
    Eigen::Index bs;
  };
  // Chunks of residual_rows(n) rows: block- and byte-aligned (fused) for the
  // first, third and last case; not for the others (separate pass).
  for (const Case c : {Case{200, 640, 4, 64}, Case{70, 1000, 4, 64}, Case{90, 768, 3, 64}, Case{50, 1300, 2, 100},
                       Case{64, 2000, 2, 100}}) {
    INFO(c.m << "x" << c.n << " nf" << c.bits << " block " << c.bs);
    const RowMatrix<float> W = loftq_test::structured(c.m, c.n, 5);
    const Eigen::MatrixXf A = loftq_test::gaussian(c.m, 6, 1) * 0.1f, B = loftq_test::gaussian(c.n, 6, 2) * 0.1f;
    const loftq::Quantizer q(loftq::Quantizer::Kind::normal_float, c.bits, c.bs);
    const std::int64_t N = W.size();
    loftq::detail::QuantSpec spec = loftq::detail::spec_of(q);
    spec.search = true;
    std::vector<float> f1(static_cast<std::size_t>((N + c.bs - 1) / c.bs), 0.0f), f2 = f1;
    RowMatrix<float> R1 = W - loftq::fake_quantize(W, q), R2 = R1;
    loftq::PackedMatrix P1 = loftq::detail::make_packed(c.m, c.n, spec), P2 = P1;
    spec.fractions = f1.data();
    const double s1 = loftq::detail::requantize_residual(W.data(), R1, A, B, 2, loftq::detail::Requantize{&P1, &spec});
    // The same steps as separate passes: the error, R := W - A B^T (with the
    // sweep's own chunked products), then the quantization.
    spec.fractions = f2.data();
    const double s2 = loftq::detail::residual_error(R2, A, B, 2);
    loftq::detail::residual_sweep<float>(c.m, c.n, A, B, 2, [&](Eigen::Index r0, Eigen::Index len, const float* Pc) {
      for (Eigen::Index i = 0; i < len * c.n; ++i) R2.data()[r0 * c.n + i] = W.data()[r0 * c.n + i] - Pc[i];
      return 0.0;
    });
    loftq::detail::quantize_flat(R2.data(), R2.data(), &P2, N, spec, 2, W.data());
    CHECK(s1 == s2);
    CHECK(R1 == R2);
    CHECK(P1.codes == P2.codes);
    CHECK(P1.scales == P2.scales);
    CHECK(f1 == f2);
    // And what the sweep computes: ||R - A B^T||^2, then R := W - q(W - A B^T).
    const RowMatrix<float> AB = A * B.transpose(), R0 = W - loftq::fake_quantize(W, q);
    CHECK(s1 == doctest::Approx((R0 - AB).cast<double>().squaredNorm()).epsilon(1e-5));
    CHECK((R1 - (W - loftq::dequantize(P1))).cwiseAbs().maxCoeff() <= 1e-6f * W.cwiseAbs().maxCoeff());
  }
}

TEST_CASE("interleaved_row_sum adds in interleaved_sum's order, bit for bit, at any width") {
  // Terms of very different magnitudes make the sum order-sensitive.
  const Eigen::VectorXf v = loftq_test::gaussian(4000, 1, 3).array().exp().pow(3.0f);
  for (Eigen::Index n : {1, 3, 7, 8, 9, 16, 21, 40}) {
    CAPTURE(n);
    const Eigen::Index rows = 4000 / n;
    const double flat = loftq::detail::interleaved_sum(static_cast<std::int64_t>(rows) * n,
                                                       [&](std::int64_t i) { return static_cast<double>(v(i)); });
    const double by_row = loftq::detail::interleaved_row_sum(
        rows, n, [&](Eigen::Index i, Eigen::Index j) { return static_cast<double>(v(i * n + j)); });
    CHECK(flat == by_row);
    double serial = 0;
    for (Eigen::Index i = 0; i < rows * n; ++i) serial += v(i);
    CHECK(std::abs(flat - serial) <= 1e-12 * serial);
  }
}

TEST_CASE("warm_power_iterations = -1 (default): 1 below kWarmNoPowerFrom, 0 from there") {
  CHECK(Options{}.warm_power_iterations == -1);
  const auto same = [](const loftq::Result<float>& a, const loftq::Result<float>& b) {
    return a.Q == b.Q && a.A == b.A && a.B == b.B && a.history == b.history;
  };
  const NormalFloat<4> q;
  Options o, one, zero;
  one.warm_power_iterations = 1;
  zero.warm_power_iterations = 0;
  for (Options* p : {&o, &one, &zero}) p->iterations = 2;
  const RowMatrix<float> S = loftq_test::structured(300, 200, 4);
  CHECK(same(loftq::initialize(S, q, o), loftq::initialize(S, q, one)));
  CHECK_FALSE(same(loftq::initialize(S, q, o), loftq::initialize(S, q, zero)));
  const Eigen::Index big = loftq::kWarmNoPowerFrom;
  const RowMatrix<float> L = loftq_test::structured(big, big, 4);
  CHECK(same(loftq::initialize(L, q, o), loftq::initialize(L, q, zero)));
  CHECK_FALSE(same(loftq::initialize(L, q, o), loftq::initialize(L, q, one)));
}

TEST_CASE("edge cases: rank = min(m, n), all-zero W, a single outlier, svd start") {
  const RowMatrix<float> W = loftq_test::structured(40, 24, 2);
  Options o;
  o.rank = 24;
  CHECK(loftq::initialize(W, NormalFloat<2>{}, o).error() < 1e-5);
  o.rank = 4;
  const RowMatrix<float> Z = RowMatrix<float>::Zero(16, 64);
  const auto z = loftq::initialize(Z, NormalFloat<4>{}, o);
  CHECK(z.Q.isZero(0));
  CHECK(z.A.isZero(0));
  CHECK(z.B.isZero(0));
  CHECK(z.error() == 0.0);
  RowMatrix<float> O = W;
  O(3, 5) = 1e6f;
  const auto out = loftq::initialize(O, NormalFloat<4>{}, o);
  CHECK(out.Q.allFinite());
  CHECK(out.error() <= out.qlora_error);
  o.start = loftq::Start::svd;
  const auto s = loftq::initialize(W, NormalFloat<2>{}, o);
  CHECK(s.error() < s.qlora_error);
  o.start = loftq::Start::zero;
  CHECK(s.qlora_error == doctest::Approx(loftq::initialize(W, NormalFloat<2>{}, o).qlora_error));
}

TEST_CASE("the SVD start falls back to the zero start where it loses to q(W)") {
  // Twenty huge isolated weights (see the data-aware twin of this test).
  RowMatrix<float> W = loftq_test::gaussian(64, 96, 71) * 0.01f;
  for (int i = 0; i < 20; ++i) W((i * 7) % 64, (i * 13) % 96) = i % 2 ? 1000.0f : -1000.0f;
  Options o;
  o.rank = 4;
  o.iterations = 3;
  o.start = loftq::Start::svd;
  o.keep_best = false;  // no fallback
  const auto alone = loftq::initialize(W, NormalFloat<4>{}, o);
  CHECK(alone.error() > 10 * alone.qlora_error);
  o.keep_best = true;
  const auto svd = loftq::initialize(W, NormalFloat<4>{}, o);
  o.start = loftq::Start::zero;
  const auto zero = loftq::initialize(W, NormalFloat<4>{}, o);
  CHECK(svd.error() <= svd.qlora_error);
  loftq_test::check_identical(svd, zero);
}

TEST_CASE("qlora_init: Q = q(W), A = 0, B Kaiming-uniform and seeded") {
  const RowMatrix<float> W = loftq_test::structured(64, 100, 4);
  Options o;
  o.rank = 8;
  const auto r = loftq::qlora_init(W, NormalFloat<4>{}, o);
  CHECK(r.Q == loftq::fake_quantize(W, NormalFloat<4>{}));
  CHECK(r.A.isZero(0));
  CHECK((r.A * r.B.transpose()).isZero(0));
  CHECK(r.B.rows() == 100);
  CHECK(r.B.cols() == 8);
  CHECK(r.B.cwiseAbs().maxCoeff() <= 1.0f / std::sqrt(100.0f));
  CHECK(r.B.cwiseAbs().maxCoeff() > 0.8f / std::sqrt(100.0f));  // spread over the whole interval
  CHECK(r.error() == r.qlora_error);
  CHECK(loftq::qlora_init(W, NormalFloat<4>{}, o).B == r.B);
  o.svd.seed = 5;
  CHECK(loftq::qlora_init(W, NormalFloat<4>{}, o).B != r.B);
}

TEST_CASE("to_peft compensates PEFT's lora_alpha / r scaling") {
  const RowMatrix<float> W = loftq_test::structured(48, 80, 4);
  Options o;
  o.rank = 8;
  const auto r = loftq::initialize(W, NormalFloat<4>{}, o);
  for (double alpha : {8.0, 16.0, 32.0, 1.0}) {
    const auto p = loftq::to_peft(r, alpha);
    CHECK(p.lora_A.rows() == 8);
    CHECK(p.lora_A.cols() == 80);
    CHECK(p.lora_B.rows() == 48);
    CHECK(p.lora_B.cols() == 8);
    CHECK(p.scaling == alpha / 8);
    const Eigen::MatrixXf applied = static_cast<float>(p.scaling) * p.lora_B * p.lora_A;
    CHECK(applied.isApprox(r.A * r.B.transpose(), 1e-5f));
  }
  CHECK_THROWS_AS(loftq::to_peft(r, 0.0), loftq::Error);
  CHECK_THROWS_AS(loftq::to_peft(r, std::numeric_limits<double>::quiet_NaN()), loftq::Error);
}

TEST_CASE("bad input gets a typed error and no result") {
  RowMatrix<float> W = loftq_test::structured(20, 30, 1);
  auto code_of = [&](const RowMatrix<float>& M, Options o, int bits = 4, Eigen::Index bs = 64) {
    try {
      loftq::initialize(M, loftq::Quantizer(loftq::Quantizer::Kind::normal_float, bits, bs), o);
    } catch (const loftq::Error& e) {
      return e.code();
    }
    return static_cast<loftq::Errc>(0);
  };
  Options o;
  o.rank = 0;
  CHECK(code_of(W, o) == loftq::Errc::invalid_argument);
  o.rank = 21;
  CHECK(code_of(W, o) == loftq::Errc::invalid_argument);
  o.rank = 4;
  o.iterations = 0;
  CHECK(code_of(W, o) == loftq::Errc::invalid_argument);
  o.iterations = 2;
  o.warm_power_iterations = -2;
  CHECK(code_of(W, o) == loftq::Errc::invalid_argument);
  o.warm_power_iterations = -1;
  o.warm_oversampling = -1;
  CHECK(code_of(W, o) == loftq::Errc::invalid_argument);
  o.warm_oversampling = 4;
  CHECK(code_of(RowMatrix<float>(0, 30), o) == loftq::Errc::invalid_argument);
  CHECK(code_of(W, o, 4, 0) == loftq::Errc::invalid_argument);
  CHECK(code_of(W, o, 1) == loftq::Errc::unsupported);
  CHECK(code_of(W, o, 9) == loftq::Errc::unsupported);
  W(1, 1) = std::numeric_limits<float>::infinity();
  CHECK(code_of(W, o) == loftq::Errc::non_finite);
  W(1, 1) = std::numeric_limits<float>::quiet_NaN();
  CHECK(code_of(W, o) == loftq::Errc::non_finite);
  CHECK_THROWS_AS(loftq::qlora_init(W, NormalFloat<4>{}, o), loftq::Error);
}

TEST_CASE("defaults (scale search, SVD start) beat the reference configuration on a structured matrix") {
  const RowMatrix<float> W = loftq_test::structured(256, 512, 12);
  Options ours;
  Options ref;
  ref.scale_search = false;
  ref.start = loftq::Start::zero;
  ref.keep_best = false;
  for (int bits : {2, 4}) {
    const loftq::Quantizer q(loftq::Quantizer::Kind::normal_float, bits);
    const auto a = loftq::initialize(W, q, ours), b = loftq::initialize(W, q, ref);
    INFO("nf" << bits << ": " << a.error() << " vs reference " << b.error());
    // Measured 0.65x (NF2) and 0.91x (NF4) here: half of this matrix's
    // structure lies beyond rank 16 and its noise floor is Gaussian, where
    // only the scale search helps. Realistic and real weights gain more
    // (test_real_weights, bench/README.md).
    CHECK(a.error() < (bits == 2 ? 0.75 : 0.95) * b.error());
    CHECK(a.qlora_error == b.qlora_error);                   // the baseline is QLoRA's absmax q(W) either way
    CHECK(loftq::quantize(a.Q, q).codes == a.packed.codes);  // storage readable by plain absmax
  }
}
