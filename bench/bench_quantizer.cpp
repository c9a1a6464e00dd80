// Block-wise quantizer throughput on a 4096 x 4096 realistic weight (64 MB of
// fp32), with 1 and 2 threads passed through the `threads` argument.
//
//   fake_quantize/<q>/threads:T          W -> dequantize(quantize(W)) into a reused fp32 buffer
//   fake_quantize_alloc/<q>/threads:T    the same, returning a freshly allocated matrix
//   fake_quantize_search/<q>/threads:T   with QuantizeOptions::scale_search (LoftQ's default)
//   quantize/<q>/threads:T               W -> PackedMatrix (codes + fp32 block scales)
//   dequantize/<q>/threads:T             PackedMatrix -> fp32, reused buffer
//   quantize_dequantize/<q>/...          both, through real packed storage
//
// items/s counts weights; bytes/s counts the bytes read plus written by the
// pass (fp32 = 4 bytes, packed = codes + scales). The _alloc variant shows
// what a fresh 64 MB output costs in page faults; the others reuse theirs, as
// loftq::initialize does internally.
#include "bench_common.hpp"

#include <string>

namespace {

using loftq_bench::cached_matrix;
constexpr loftq_bench::Index kM = 4096, kN = 4096;

std::int64_t packed_size(const loftq::PackedMatrix& P) {
  return static_cast<std::int64_t>(P.codes.size() + 4 * (P.scales.size() + P.mins.size()));
}

template <class Q>
void register_quantizer(const Q& q) {
  const std::string name = q.name();
  for (int threads : {1, 2}) {
    const std::string suffix = "/" + name + "/threads:" + std::to_string(threads);

    for (const char* variant : {"", "_search"}) {
      const bool search = std::string(variant) == "_search";
      benchmark::RegisterBenchmark(("fake_quantize" + std::string(variant) + suffix).c_str(),
                                   [q, threads, search](benchmark::State& state) {
                                     const auto& W = cached_matrix(kM, kN);
                                     loftq::QuantizeOptions opt;
                                     opt.threads = threads;
                                     opt.scale_search = search;
                                     loftq::RowMatrix<float> F(W.rows(), W.cols());
                                     for (auto _ : state) {
                                       loftq::fake_quantize(W, q, F, opt);
                                       benchmark::DoNotOptimize(F.data());
                                       benchmark::ClobberMemory();
                                     }
                                     state.SetItemsProcessed(state.iterations() * W.size());
                                     state.SetBytesProcessed(state.iterations() * W.size() * 8);
                                     state.counters["rel_err"] = static_cast<double>((W - F).norm() / W.norm());
                                   })
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
    }

    benchmark::RegisterBenchmark(("fake_quantize_alloc" + suffix).c_str(),
                                 [q, threads](benchmark::State& state) {
                                   const auto& W = cached_matrix(kM, kN);
                                   for (auto _ : state) {
                                     auto F = loftq::fake_quantize(W, q, threads);
                                     benchmark::DoNotOptimize(F.data());
                                     benchmark::ClobberMemory();
                                   }
                                   state.SetItemsProcessed(state.iterations() * W.size());
                                   state.SetBytesProcessed(state.iterations() * W.size() * 8);
                                 })
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();

    benchmark::RegisterBenchmark(("quantize" + suffix).c_str(),
                                 [q, threads](benchmark::State& state) {
                                   const auto& W = cached_matrix(kM, kN);
                                   std::int64_t out_bytes = 0;
                                   for (auto _ : state) {
                                     auto P = loftq::quantize(W, q, threads);
                                     out_bytes = packed_size(P);
                                     benchmark::DoNotOptimize(P.codes.data());
                                     benchmark::ClobberMemory();
                                   }
                                   state.SetItemsProcessed(state.iterations() * W.size());
                                   state.SetBytesProcessed(state.iterations() * (W.size() * 4 + out_bytes));
                                   state.counters["bits_per_weight"] =
                                       8.0 * static_cast<double>(out_bytes) / static_cast<double>(W.size());
                                 })
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();

    benchmark::RegisterBenchmark(("dequantize" + suffix).c_str(),
                                 [q, threads](benchmark::State& state) {
                                   const auto& W = cached_matrix(kM, kN);
                                   const auto P = loftq::quantize(W, q, threads);
                                   loftq::RowMatrix<float> D;
                                   for (auto _ : state) {
                                     loftq::dequantize(P, D, threads);
                                     benchmark::DoNotOptimize(D.data());
                                     benchmark::ClobberMemory();
                                   }
                                   state.SetItemsProcessed(state.iterations() * W.size());
                                   state.SetBytesProcessed(state.iterations() * (packed_size(P) + W.size() * 4));
                                 })
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();

    benchmark::RegisterBenchmark(("quantize_dequantize" + suffix).c_str(),
                                 [q, threads](benchmark::State& state) {
                                   const auto& W = cached_matrix(kM, kN);
                                   std::int64_t packed = 0;
                                   loftq::RowMatrix<float> D;
                                   for (auto _ : state) {
                                     auto P = loftq::quantize(W, q, threads);
                                     loftq::dequantize(P, D, threads);
                                     packed = packed_size(P);
                                     benchmark::DoNotOptimize(D.data());
                                     benchmark::ClobberMemory();
                                   }
                                   state.SetItemsProcessed(state.iterations() * W.size());
                                   state.SetBytesProcessed(state.iterations() * 2 * (W.size() * 4 + packed));
                                   state.counters["rel_err"] = static_cast<double>((W - D).norm() / W.norm());
                                 })
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  }
}

}  // namespace

int main(int argc, char** argv) {
  return loftq_bench::run_suite(argc, argv, [] {
    register_quantizer(loftq::NormalFloat<4>{});
    register_quantizer(loftq::NormalFloat<2>{});
    register_quantizer(loftq::Uniform<4>{});
  });
}
