// Data-aware LoftQ (loftq/data_aware.hpp) against data-free LoftQ, in the
// layer's output metric.
//
// Weights: realistic_matrix (matrices.hpp). Inputs: CalibrationSource
// (calibration.hpp): channels correlated through 8 shared factors, 1% of them
// with 10-30x the standard deviation. Calibration set: 2n samples at n = 1024,
// n samples at n = 4096 (accumulating 2n there would take longer than the
// runs measured); a held-out set of the same size from the same source.
//
// Registered, each at 1024x1024 and 4096x4096, NF2 and NF4, rank 16, T = 5:
//   data_free/<mxn>/<q>/r16/T5        loftq::initialize(W, q, opt)
//   data_aware/full/<mxn>/<q>/r16/T5  loftq::initialize(W, q, stats, opt), full H
//   data_aware/diag/<mxn>/<q>/r16/T5  the same with diagonal statistics
// and stats/add/{full,diag}/<n>: InputStatistics::add of a 1024-sample batch.
// Two loop configurations, the same on both sides of each comparison:
//   .../T5             the reference loop: zero start, absmax scales
//   .../T5/svd_search  SVD start and scale search (Options::start = svd,
//                      Options::scale_search; data-aware weighs the search by diag(H))
//
// Counters, all measured after the timed loop on the sample sets themselves
// (not on the library's own history):
//   out_err           ||X (W - Q - A B^T)^T|| / ||X W^T|| on the calibration set
//   out_err_heldout   the same on the held-out set
//   out_err_datafree  out_err of data-free LoftQ with the same options
//   reduction_pct     100 (1 - out_err / out_err_datafree)
//   weight_err        ||W - Q - A B^T|| / ||W||
#include "bench_common.hpp"

#include <loftq/data_aware.hpp>

#include <map>
#include <memory>
#include <string>
#include <tuple>

#include "common/calibration.hpp"

namespace {

using loftq_bench::Index;
using loftq_bench::RowMatrixXf;

constexpr std::uint64_t kSourceSeed = 7, kCalibrationSeed = 1, kHeldOutSeed = 2;

Index samples_for(Index n) { return n <= 1024 ? 2 * n : n; }

const loftq_bench::CalibrationSource& source(Index n) {
  static std::map<Index, std::unique_ptr<loftq_bench::CalibrationSource>> cache;
  auto& slot = cache[n];
  if (!slot) slot = std::make_unique<loftq_bench::CalibrationSource>(n, kSourceSeed);
  return *slot;
}

const RowMatrixXf& samples(Index n, std::uint64_t seed) {
  static std::map<std::pair<Index, std::uint64_t>, std::unique_ptr<RowMatrixXf>> cache;
  auto& slot = cache[std::make_pair(n, seed)];
  if (!slot) slot = std::make_unique<RowMatrixXf>(source(n).sample(samples_for(n), seed));
  return *slot;
}

const loftq::InputStatistics& stats(Index n, loftq::StatsMode mode) {
  static std::map<std::pair<Index, int>, std::unique_ptr<loftq::InputStatistics>> cache;
  auto& slot = cache[std::make_pair(n, static_cast<int>(mode))];
  if (!slot) {
    slot = std::make_unique<loftq::InputStatistics>(n, mode);
    slot->add(samples(n, kCalibrationSeed));
  }
  return *slot;
}

// ||X (W - Q - A B^T)^T|| / ||X W^T||, float GEMMs, double sums.
double output_error(const RowMatrixXf& W, const loftq::Result<float>& r, const RowMatrixXf& X) {
  RowMatrixXf D = W - r.Q;
  D.noalias() -= r.A * r.B.transpose();
  const Eigen::MatrixXf XD = X * D.transpose(), XW = X * W.transpose();
  return std::sqrt(XD.cast<double>().squaredNorm() / XW.cast<double>().squaredNorm());
}

double weight_error(const RowMatrixXf& W, const loftq::Result<float>& r) {
  RowMatrixXf D = W - r.Q;
  D.noalias() -= r.A * r.B.transpose();
  return std::sqrt(D.cast<double>().squaredNorm() / W.cast<double>().squaredNorm());
}

struct Config {
  Index n = 1024;
  int bits = 2;
  bool search = false;
  int fixed_iterations = 0;
};

loftq::Options options(const Config& c) {
  loftq::Options o;
  o.rank = 16;
  o.iterations = 5;
  o.start = c.search ? loftq::Start::svd : loftq::Start::zero;
  o.scale_search = c.search;
  return o;
}

template <class F>
loftq::Result<float> with_bits(int bits, F&& f) {
  return bits == 2 ? f(loftq::NormalFloat<2>{}) : f(loftq::NormalFloat<4>{});
}

// The data-free output error for a configuration, computed once.
double datafree_out_err(const Config& c) {
  static std::map<std::tuple<Index, int, bool>, double> cache;
  const auto key = std::make_tuple(c.n, c.bits, c.search);
  const auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  const auto& W = loftq_bench::cached_matrix(c.n, c.n);
  const auto r = with_bits(c.bits, [&](const auto& q) { return loftq::initialize(W, q, options(c)); });
  return cache[key] = output_error(W, r, samples(c.n, kCalibrationSeed));
}

enum class Variant { data_free, full, diagonal };

const char* name_of(Variant v) {
  return v == Variant::data_free ? "data_free" : v == Variant::full ? "data_aware/full" : "data_aware/diag";
}

void run(benchmark::State& state, const Config& c, Variant v) {
  const auto& W = loftq_bench::cached_matrix(c.n, c.n);
  const loftq::Options opt = options(c);
  const loftq::InputStatistics* st =
      v == Variant::data_free ? nullptr
                              : &stats(c.n, v == Variant::full ? loftq::StatsMode::full : loftq::StatsMode::diagonal);
  loftq::Result<float> res;
  for (auto _ : state) {
    res = with_bits(
        c.bits, [&](const auto& q) { return st ? loftq::initialize(W, q, *st, opt) : loftq::initialize(W, q, opt); });
    benchmark::DoNotOptimize(res.Q.data());
  }
  const double out = output_error(W, res, samples(c.n, kCalibrationSeed));
  const double free = st ? datafree_out_err(c) : out;
  state.counters["out_err"] = out;
  state.counters["out_err_heldout"] = output_error(W, res, samples(c.n, kHeldOutSeed));
  state.counters["out_err_datafree"] = free;
  state.counters["reduction_pct"] = free > 0 ? 100.0 * (1.0 - out / free) : 0.0;
  state.counters["weight_err"] = weight_error(W, res);
  state.counters["best_iteration"] = res.best_iteration;
}

void run_add(benchmark::State& state, Index n, loftq::StatsMode mode) {
  const RowMatrixXf batch = samples(n, kCalibrationSeed).topRows(1024);
  for (auto _ : state) {
    loftq::InputStatistics s(n, mode);
    s.add(batch);
    benchmark::DoNotOptimize(s.count());
  }
  state.SetItemsProcessed(state.iterations() * batch.rows());
}

void register_all() {
  for (const Index n : {Index(1024), Index(4096)})
    for (const bool search : {false, true})
      for (const int bits : {2, 4}) {
        Config c;
        c.n = n;
        c.bits = bits;
        c.search = search;
        c.fixed_iterations = n >= 4096 ? 1 : 0;
        const std::string tail =
            "/" + loftq_bench::shape(n, n) + "/nf" + std::to_string(bits) + "/r16/T5" + (search ? "/svd_search" : "");
        for (const Variant v : {Variant::data_free, Variant::full, Variant::diagonal}) {
          const std::string name = name_of(v) + tail;
          auto* b = benchmark::RegisterBenchmark(name.c_str(), [c, v](benchmark::State& s) { run(s, c, v); });
          b->Unit(benchmark::kMillisecond)->UseRealTime();
          if (c.fixed_iterations > 0) b->Iterations(c.fixed_iterations);
        }
      }
  for (const Index n : {Index(1024), Index(4096)})
    for (const auto mode : {loftq::StatsMode::full, loftq::StatsMode::diagonal}) {
      const std::string name =
          std::string("stats/add/") + (mode == loftq::StatsMode::full ? "full/" : "diag/") + std::to_string(n);
      benchmark::RegisterBenchmark(name.c_str(), [n, mode](benchmark::State& s) { run_add(s, n, mode); })
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
    }
}

}  // namespace

int main(int argc, char** argv) { return loftq_bench::run_suite(argc, argv, register_all); }
