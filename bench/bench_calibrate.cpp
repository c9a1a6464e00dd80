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
const lm::Weights<float>& layer7b() {
  static std::unique_ptr<lm::Weights<float>> w;
  if (!w) {
    w = std::make_unique<lm::Weights<float>>();
    lm::Config& c = w->config;
    c.dim = 4096;
    c.hidden_dim = 11008;
    c.n_layers = 1;
    c.n_heads = 32;
    c.n_kv_heads = 32;
    c.vocab_size = 256;
    c.seq_len = 4096;
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
}

}  // namespace

int main(int argc, char** argv) { return loftq_bench::run_suite(argc, argv, register_all); }
