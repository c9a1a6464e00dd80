// The stages of one LoftQ run against this machine's bounds: how fast it
// copies memory and multiplies float matrices, and how long each stage of
// detail::Alternation (detail/alternation.hpp) takes on an m x n realistic
// matrix with the library's defaults (NF4, blocks of 64, rank 16, scale
// search, randomized SVD: 24 columns cold with 3 power iterations, 20 warm
// with none from 1024 up).
//
//   copy/<MB>MB                     a parallel stream copy (2 threads), bytes = read + written
//   gemm/f32/<m>x<n>x<k>            Eigen's float GEMM C = A B (m x n by n x k) on 2 threads
//   stage/<m>x<n>/quantize_cold     quantize_flat with the scale search scanning every block's grid
//   stage/<m>x<n>/quantize_warm     the same, each block starting from its last scale (the iterations)
//   stage/<m>x<n>/mul/k<k>          Y = M X: the range finder's first product
//   stage/<m>x<n>/mul_t/k<k>        Z = M^T Y: a power step's first half, and the last product
//   stage/<m>x<n>/orthonormalize/k<k>  the thin QR of the m x k block
//   stage/<m>x<n>/error             ||R - A B^T||^2, A B^T formed in row chunks (the last sweep)
//   stage/<m>x<n>/requantize        the same, then R := W - q(W - A B^T) with its codes (other sweeps)
//
// Counters: bytes_per_second for the memory traffic each stage needs at
// least (bench/README.md derives it), flops for the arithmetic.
#include "bench_common.hpp"

#include <array>
#include <cstring>
#include <string>
#include <vector>

namespace {

using loftq_bench::Index;
using RowF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ColF = Eigen::MatrixXf;

void copy_case(benchmark::State& state, std::size_t mb) {
  const std::size_t n = mb << 18;  // floats
  std::vector<float> a(n, 1.0f), b(n, 0.0f);
  const int t = loftq_bench::default_threads();
  for (auto _ : state) {
    loftq::detail::parallel_for(t, t, [&](std::int64_t i) {
      const std::size_t lo = n * static_cast<std::size_t>(i) / static_cast<std::size_t>(t);
      const std::size_t hi = n * static_cast<std::size_t>(i + 1) / static_cast<std::size_t>(t);
      std::memcpy(b.data() + lo, a.data() + lo, (hi - lo) * sizeof(float));
    });
    benchmark::DoNotOptimize(b.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * 2 * n * sizeof(float)));
}

void gemm_case(benchmark::State& state, Index m, Index n, Index k) {
  const ColF A = ColF::Random(m, n), B = ColF::Random(n, k);
  ColF C(m, k);
  for (auto _ : state) {
    C.noalias() = A * B;
    benchmark::DoNotOptimize(C.data());
  }
  state.counters["flops"] = benchmark::Counter(2.0 * static_cast<double>(m) * static_cast<double>(n) *
                                                   static_cast<double>(k) * static_cast<double>(state.iterations()),
                                               benchmark::Counter::kIsRate);
}

struct Stage {
  Index m, n;
  const RowF& W;
  loftq::NormalFloat<4> q{64};
  loftq::detail::QuantSpec spec = loftq::detail::spec_of(q);
  std::vector<float> fractions;
  RowF R;
  ColF A, B;
  Stage(Index m_, Index n_) : m(m_), n(n_), W(loftq_bench::cached_matrix(m_, n_)) {
    spec.search = true;
    R = W;
    // Factors of the size LoftQ's are: the top of the spectrum carries most of W.
    loftq::SVDOptions o;
    const loftq::TruncatedSVD<ColF> svd(W, 16, o);
    A = svd.matrixU() * svd.singularValues().cwiseSqrt().asDiagonal();
    B = svd.matrixV() * svd.singularValues().cwiseSqrt().asDiagonal();
  }
  double elems() const { return static_cast<double>(m) * static_cast<double>(n); }
};

void rates(benchmark::State& state, double bytes, double flops) {
  const double it = static_cast<double>(state.iterations());
  state.SetBytesProcessed(static_cast<std::int64_t>(bytes * it));
  if (flops > 0) state.counters["flops"] = benchmark::Counter(flops * it, benchmark::Counter::kIsRate);
}

void quantize_case(benchmark::State& state, Index m, Index n, bool warm) {
  Stage s(m, n);
  const std::int64_t N = static_cast<std::int64_t>(m) * n;
  loftq::PackedMatrix P = loftq::detail::make_packed(m, n, s.spec);
  if (warm) {
    s.fractions.assign(static_cast<std::size_t>(P.num_blocks()), 0.0f);
    s.spec.fractions = s.fractions.data();
    loftq::detail::quantize_flat(s.W.data(), s.R.data(), &P, N, s.spec, 0, s.W.data());  // the fractions
  }
  for (auto _ : state) {
    std::fill(P.codes.begin(), P.codes.end(), std::uint8_t{0});
    loftq::detail::quantize_flat(s.W.data(), s.R.data(), &P, N, s.spec, 0, s.W.data());
    benchmark::DoNotOptimize(s.R.data());
  }
  // Reads W, writes R = W - q(W) and the codes (half a byte per weight).
  rates(state, s.elems() * (4 + 4 + 0.5), 0);
}

void mul_case(benchmark::State& state, Index m, Index n, Index k, bool transposed) {
  Stage s(m, n);
  ColF X = ColF::Random(transposed ? m : n, k), Y;
  for (auto _ : state) {
    if (transposed)
      loftq::detail::chunked_mul_t(s.R, X, Y, 0);
    else
      loftq::detail::chunked_mul(s.R, X, Y, 0);
    benchmark::DoNotOptimize(Y.data());
  }
  rates(state, s.elems() * 4, 2 * s.elems() * static_cast<double>(k));
}

void orthonormalize_case(benchmark::State& state, Index m, Index k) {
  const ColF Y0 = ColF::Random(m, k);
  ColF Y;
  for (auto _ : state) {
    Y = Y0;
    loftq::detail::orthonormalize(Y);
    benchmark::DoNotOptimize(Y.data());
  }
  // Householder QR and forming the thin Q: about 4 m k^2 flops.
  rates(state, static_cast<double>(m * k) * 4 * 2, 4.0 * static_cast<double>(m) * static_cast<double>(k * k));
}

void sweep_case(benchmark::State& state, Index m, Index n, bool requantize) {
  Stage s(m, n);
  loftq::PackedMatrix P = loftq::detail::make_packed(m, n, s.spec);
  s.fractions.assign(static_cast<std::size_t>(P.num_blocks()), 0.0f);
  s.spec.fractions = s.fractions.data();
  const loftq::detail::Requantize into{&P, &s.spec};
  loftq::detail::requantize_residual(s.W.data(), s.R, s.A, s.B, 0, into);  // warm fractions, a LoftQ residual
  for (auto _ : state) {
    double e;
    if (requantize) {
      std::fill(P.codes.begin(), P.codes.end(), std::uint8_t{0});
      e = loftq::detail::requantize_residual(s.W.data(), s.R, s.A, s.B, 0, into);
    } else {
      e = loftq::detail::residual_error(s.R, s.A, s.B, 0);
    }
    benchmark::DoNotOptimize(e);
  }
  // error: reads R. requantize: reads R and W, writes R and the codes.
  rates(state, s.elems() * (requantize ? 12.5 : 4), 2 * s.elems() * 16);
}

}  // namespace

int main(int argc, char** argv) {
  return loftq_bench::run_suite(argc, argv, [] {
    auto ms = [](benchmark::internal::Benchmark* b) { b->Unit(benchmark::kMillisecond)->UseRealTime(); };
    for (std::size_t mb : {64, 512})
      ms(benchmark::RegisterBenchmark(("copy/" + std::to_string(mb) + "MB").c_str(),
                                      [mb](benchmark::State& st) { copy_case(st, mb); }));
    const std::vector<std::array<Index, 3>> gemms = {{1024, 1024, 1024}, {4096, 4096, 24}, {4096, 4096, 256}};
    for (const auto& g : gemms)
      ms(benchmark::RegisterBenchmark(
          ("gemm/f32/" + std::to_string(g[0]) + "x" + std::to_string(g[1]) + "x" + std::to_string(g[2])).c_str(),
          [g](benchmark::State& st) { gemm_case(st, g[0], g[1], g[2]); }));
    for (const auto& mn : std::vector<std::pair<Index, Index>>{{4096, 4096}, {11008, 4096}}) {
      const Index m = mn.first, n = mn.second;
      const std::string p = "stage/" + loftq_bench::shape(m, n) + "/";
      for (bool warm : {false, true})
        ms(benchmark::RegisterBenchmark((p + (warm ? "quantize_warm" : "quantize_cold")).c_str(),
                                        [=](benchmark::State& st) { quantize_case(st, m, n, warm); }));
      for (Index k : {24, 20}) {
        ms(benchmark::RegisterBenchmark((p + "mul/k" + std::to_string(k)).c_str(),
                                        [=](benchmark::State& st) { mul_case(st, m, n, k, false); }));
        ms(benchmark::RegisterBenchmark((p + "mul_t/k" + std::to_string(k)).c_str(),
                                        [=](benchmark::State& st) { mul_case(st, m, n, k, true); }));
      }
      ms(benchmark::RegisterBenchmark((p + "orthonormalize/k24").c_str(),
                                      [=](benchmark::State& st) { orthonormalize_case(st, m, 24); }));
      for (bool rq : {false, true})
        ms(benchmark::RegisterBenchmark((p + (rq ? "requantize" : "error")).c_str(),
                                        [=](benchmark::State& st) { sweep_case(st, m, n, rq); }));
    }
  });
}
