// Calibration throughput: lm::collect_statistics (common/lm/calibrate.hpp),
// the forward pass plus the input statistics of every linear, in tokens per
// second.
//
// Registered:
//   calibrate/stories260K/<mode>/T<T>   the llama2.c stories260K model (skipped
//                                       when the shared data is absent), 8
//                                       sequences of T tokens
//   calibrate/7b_layer/<mode>/T<T>      one LLaMA-7B-shaped decoder layer
//                                       (dim 4096, FFN 11008, 32 heads, vocab 256)
//                                       with realistic_matrix weights, 2 sequences
// with <mode> full or diag. Counters:
//   tokens_per_s     tokens through the whole call per second
//   linear_GFLOPs    2 x (multiply-adds of the seven linears) per token x tokens/s
//   stats_GFLOPs     the statistics' own flops: full, n (n + 1) per token and
//                    input (the lower triangle); diag, 2 n
//
// References, measured in the same run so that the calibration's rates can be
// read as fractions of what this machine's GEMM reaches at the same shapes:
//   gemm/f32/T<T>/<in>-><out>/<schedule>   Y = X W^T (X: T x in, W: out x in,
//       float), as a linear computes it; GFLOPs = 2 T in out per product
//   gram/f64/T<T>/n<n>/<schedule>          the full statistics' update of the
//       lower triangle of sum x x^T by T samples of n features; GFLOPs =
//       n (n + 1) T, as stats_GFLOPs counts it
// Schedules: `eigen` is one product on Eigen's own OpenMP threads (all of
// them: the machine's peak for one product); `per_thread` runs one serial
// product per thread on its own operands at once (the calibration's forward:
// sequences in parallel, each product serial); `serial` is one thread alone.
// The gram rows: `add` is InputStatistics::add (float samples, widened to
// double, fixed column blocks over the threads: what the calibration calls);
// `syrk` is Eigen's rank-k update of a self-adjoint view, serial; and
// gemm/f64 the unsymmetric double product X^T X (2 n^2 T flops) on Eigen's
// threads, the double precision peak.
#include "bench_common.hpp"

#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common/lm/calibrate.hpp"

#ifndef LOFTQ_SHARED_DATA_DIR
#define LOFTQ_SHARED_DATA_DIR ""
#endif

namespace {

using loftq_bench::Index;

const lm::Weights<float>* stories() {
  static std::unique_ptr<lm::Weights<float>> w;
  static bool tried = false;
  if (!tried) {
    tried = true;
    try {
      w = std::make_unique<lm::Weights<float>>(
          lm::read_checkpoint(std::string(LOFTQ_SHARED_DATA_DIR) + "/stories260K.bin"));
    } catch (const loftq::Error&) {
    }
  }
  return w.get();
}

// One decoder layer of LLaMA-7B's shape; weights from realistic_matrix, norms 1.
lm::Config config7b() {
  lm::Config c;
  c.dim = 4096;
  c.hidden_dim = 11008;
  c.n_layers = 1;
  c.n_heads = 32;
  c.n_kv_heads = 32;
  c.vocab_size = 256;
  c.seq_len = 4096;
  return c;
}

const lm::Weights<float>& layer7b() {
  static std::unique_ptr<lm::Weights<float>> w;
  if (!w) {
    w = std::make_unique<lm::Weights<float>>();
    w->config = config7b();
    const lm::Config& c = w->config;
    w->embedding = loftq_bench::realistic_matrix(c.vocab_size, c.dim, 100);
    w->rms_final = lm::Vec<float>::Ones(c.dim);
    w->layers.resize(1);
    auto& l = w->layers[0];
    l.rms_att = lm::Vec<float>::Ones(c.dim);
    l.rms_ffn = lm::Vec<float>::Ones(c.dim);
    for (int k = 0; k < lm::kKinds; ++k) {
      const auto s = lm::kind_shape(c, k);
      l.W[k] = loftq_bench::realistic_matrix(s[0], s[1], 200 + static_cast<std::uint64_t>(k));
    }
  }
  return *w;
}

double linear_flops_per_token(const lm::Config& c) {
  double f = 0;
  for (int k = 0; k < lm::kKinds; ++k) {
    const auto s = lm::kind_shape(c, k);
    f += 2.0 * s[0] * s[1];
  }
  return f * c.n_layers;
}

double stats_flops_per_token(const lm::Config& c, loftq::StatsMode mode) {
  auto one = [&](double n) { return mode == loftq::StatsMode::full ? n * (n + 1) : 2 * n; };
  return c.n_layers * (3 * one(c.dim) + one(c.hidden_dim));
}

void run(benchmark::State& state, const lm::Weights<float>& w, int n_seqs, int T, loftq::StatsMode mode) {
  std::mt19937 rng(1);
  std::uniform_int_distribution<int> id(0, w.config.vocab_size - 1);
  std::vector<std::vector<int>> seqs(static_cast<std::size_t>(n_seqs), std::vector<int>(static_cast<std::size_t>(T)));
  for (auto& s : seqs)
    for (int& t : s) t = id(rng);
  lm::CalibrationOptions o;
  o.mode = mode;
  for (auto _ : state) {
    const lm::Calibration c = lm::collect_statistics(w, seqs, o);
    benchmark::DoNotOptimize(c.tokens);
  }
  const double tokens = static_cast<double>(n_seqs) * T;
  state.counters["tokens_per_s"] = benchmark::Counter(tokens, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["linear_GFLOPs"] = benchmark::Counter(tokens * linear_flops_per_token(w.config) * 1e-9,
                                                       benchmark::Counter::kIsIterationInvariantRate);
  state.counters["stats_GFLOPs"] = benchmark::Counter(tokens * stats_flops_per_token(w.config, mode) * 1e-9,
                                                      benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = loftq::thread_count();
}

const char* mode_name(loftq::StatsMode m) { return m == loftq::StatsMode::full ? "full" : "diag"; }

// --- References.

enum class Schedule { eigen, per_thread, serial };

const char* schedule_name(Schedule s) {
  return s == Schedule::eigen ? "eigen" : s == Schedule::per_thread ? "per_thread" : "serial";
}

// Eigen's threads set for the benchmark's duration, then restored.
struct EigenThreads {
  int old = Eigen::nbThreads();
  explicit EigenThreads(int n) { Eigen::setNbThreads(n); }
  ~EigenThreads() { Eigen::setNbThreads(old); }
};

// Y = X W^T at a linear of the 7B layer, with its own weights.
void gemm_f32(benchmark::State& state, Index T, int kind, Schedule sched) {
  const lm::Mat<float>& W = layer7b().layers[0].W[kind];
  const int threads = sched == Schedule::serial ? 1 : loftq::thread_count();
  const int copies = sched == Schedule::per_thread ? threads : 1;
  std::vector<lm::Mat<float>> X, Y(static_cast<std::size_t>(copies));
  for (int i = 0; i < copies; ++i) X.push_back(lm::Mat<float>::Random(T, W.cols()));
  EigenThreads eigen(sched == Schedule::eigen ? threads : 1);
  for (auto _ : state) {
    loftq::detail::parallel_for(copies, copies, [&](std::int64_t i) {
      const auto k = static_cast<std::size_t>(i);
      Y[k].noalias() = X[k] * W.transpose();
    });
    benchmark::DoNotOptimize(Y[0].data());
  }
  state.counters["GFLOPs"] = benchmark::Counter(copies * 2.0 * static_cast<double>(T) * W.rows() * W.cols() * 1e-9,
                                                benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = threads;
}

enum class GramKind { add, syrk, gemm };

// sum x x^T over T samples of n features, in double.
void gram_f64(benchmark::State& state, Index T, Index n, GramKind kind) {
  const int threads = kind == GramKind::syrk ? 1 : loftq::thread_count();
  const lm::Mat<float> X = lm::Mat<float>::Random(T, n);
  const Eigen::MatrixXd Xd = X.cast<double>();
  double flops = static_cast<double>(n) * static_cast<double>(n + 1) * static_cast<double>(T);
  if (kind == GramKind::add) {
    loftq::InputStatistics st(n);
    for (auto _ : state) st.add(X, threads);
    benchmark::DoNotOptimize(st.count());
  } else {
    Eigen::MatrixXd S = Eigen::MatrixXd::Zero(n, n);
    EigenThreads eigen(threads);
    for (auto _ : state) {
      if (kind == GramKind::syrk)
        S.selfadjointView<Eigen::Lower>().rankUpdate(Xd.transpose());
      else
        S.noalias() += Xd.transpose() * Xd;
      benchmark::DoNotOptimize(S.data());
    }
    if (kind == GramKind::gemm) flops = 2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(T);
  }
  state.counters["GFLOPs"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["threads"] = threads;
}

void register_references() {
  for (Index T : {256, 512})
    for (int kind : {lm::kQ, lm::kGate, lm::kDown})
      for (Schedule sched : {Schedule::eigen, Schedule::per_thread, Schedule::serial}) {
        const auto s = lm::kind_shape(config7b(), kind);
        benchmark::RegisterBenchmark(("gemm/f32/T" + std::to_string(T) + "/" + std::to_string(s[1]) + "->" +
                                      std::to_string(s[0]) + "/" + schedule_name(sched))
                                         .c_str(),
                                     [=](benchmark::State& st) { gemm_f32(st, T, kind, sched); })
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
      }
  for (Index T : {256, 512})
    for (Index n : {4096, 11008}) {
      const std::string tag = "/T" + std::to_string(T) + "/n" + std::to_string(n);
      for (GramKind kind : {GramKind::add, GramKind::syrk})
        benchmark::RegisterBenchmark(("gram/f64" + tag + (kind == GramKind::add ? "/add" : "/syrk")).c_str(),
                                     [=](benchmark::State& st) { gram_f64(st, T, n, kind); })
            ->Unit(benchmark::kMillisecond)
            ->UseRealTime();
      benchmark::RegisterBenchmark(("gemm/f64" + tag + "/eigen").c_str(),
                                   [=](benchmark::State& st) { gram_f64(st, T, n, GramKind::gemm); })
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
    }
}

void register_all() {
  for (auto mode : {loftq::StatsMode::full, loftq::StatsMode::diagonal}) {
    const int T = 256;
    benchmark::RegisterBenchmark(
        (std::string("calibrate/stories260K/") + mode_name(mode) + "/T" + std::to_string(T)).c_str(),
        [=](benchmark::State& st) {
          const lm::Weights<float>* w = stories();
          if (!w) {
            st.SkipWithError("stories260K.bin is absent");
            return;
          }
          run(st, *w, 8, T, mode);
        })
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
    benchmark::RegisterBenchmark(
        (std::string("calibrate/7b_layer/") + mode_name(mode) + "/T" + std::to_string(T)).c_str(),
        [=](benchmark::State& st) { run(st, layer7b(), 2, T, mode); })
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  }
  register_references();
}

}  // namespace

int main(int argc, char** argv) { return loftq_bench::run_suite(argc, argv, register_all); }
