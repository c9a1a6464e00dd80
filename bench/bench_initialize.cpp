// loftq::initialize against loftq::qlora_init on realistic weights.
//
// Not the full cross product (sizes x bits x ranks x T would take hours on two
// cores). Registered:
//   sweep   initialize/1024x1024/nf{2,4}/r{8,16,64}/T{1..5}     bits x rank x T at 1024^2
//           qlora_init/1024x1024/nf{2,4}
//   size    initialize/<mxn>/nf4/r16/T5 and qlora_init/<mxn>/nf4 for
//           2048^2, 4096^2, 4096x11008 (1024^2 is in the sweep),
//           plus initialize/4096x4096/nf4/r16/T1 (per-iteration cost = (T5 - T1) / 4)
//   warm    initialize/4096x4096/nf4/r16/T5/warm_start:{0,1}
//   svd     initialize/1024x1024/nf4/r16/T5/svd:{exact,randomized}
//   beyond  beyond/{1024x1024,4096x4096}/nf{2,4}/r16/T5/{reference,search,svd_start,search+svd_start}
//           reference = absmax scales, zero start, last iterate (PEFT's LoftQ)
//
// Every benchmark reports rel_err (the returned iterate's ||W - Q - A B^T|| /
// ||W||; Options::keep_best is on, the library default), qlora_err (||W - q(W)||
// / ||W||) and reduction_pct = 100 (1 - rel_err / qlora_err). Options otherwise
// keep their defaults: randomized SVD with 3 cold power iterations, warm
// starts with 1, all threads.
#include "bench_common.hpp"

#include <string>

namespace {

using loftq_bench::Index;

struct Config {
  Index m = 1024, n = 1024;
  int bits = 4;
  Index rank = 16;
  int iterations = 5;
  bool warm_start = true;
  loftq::SVDMethod method = loftq::SVDMethod::randomized;
  int fixed_iterations = 0;  // 0: let the library pick
  loftq::Options base;       // scale search, start, keep_best: library defaults unless a group sets them
};

template <class Q>
void run_initialize(benchmark::State& state, const Config& c, const Q& q) {
  const auto& W = loftq_bench::cached_matrix(c.m, c.n);
  loftq::Options opt = c.base;
  opt.rank = c.rank;
  opt.iterations = c.iterations;
  opt.warm_start = c.warm_start;
  opt.svd.method = c.method;
  // One untimed call first. The first call in a process also pays one-time
  // costs (the kernel first backing transparent huge pages, the heap
  // growing) that would land in whichever repetition comes first;
  // bench/README.md reports them separately. Debian's Google Benchmark 1.7
  // has no MinWarmUpTime.
  loftq::Result<float> res = loftq::initialize(W, q, opt);
  for (auto _ : state) {
    res = loftq::initialize(W, q, opt);
    benchmark::DoNotOptimize(res.Q.data());
  }
  loftq_bench::report_errors(state, res.error(), res.qlora_error);
  state.counters["best_iteration"] = res.best_iteration;
  state.SetItemsProcessed(state.iterations() * W.size());
}

template <class Q>
void run_qlora(benchmark::State& state, const Config& c, const Q& q) {
  const auto& W = loftq_bench::cached_matrix(c.m, c.n);
  loftq::Options opt;
  opt.rank = c.rank;
  loftq::Result<float> res = loftq::qlora_init(W, q, opt);  // untimed, as in run_initialize
  for (auto _ : state) {
    res = loftq::qlora_init(W, q, opt);
    benchmark::DoNotOptimize(res.Q.data());
  }
  loftq_bench::report_errors(state, res.error(), res.qlora_error);
  state.SetItemsProcessed(state.iterations() * W.size());
}

void finish(benchmark::internal::Benchmark* b, const Config& c) {
  b->Unit(benchmark::kMillisecond)->UseRealTime();
  if (c.fixed_iterations > 0) b->Iterations(c.fixed_iterations);
}

// Registers run(state, c, q) with q NF2 or NF4 as c.bits says.
template <class Run>
void add(const std::string& name, const Config& c, Run run) {
  auto* b = benchmark::RegisterBenchmark(name.c_str(), [c, run](benchmark::State& state) {
    if (c.bits == 2)
      run(state, c, loftq::NormalFloat<2>{});
    else
      run(state, c, loftq::NormalFloat<4>{});
  });
  finish(b, c);
}

void add_initialize(const std::string& name, const Config& c) {
  add(name, c, [](benchmark::State& state, const Config& cc, auto q) { run_initialize(state, cc, q); });
}

void add_qlora(const std::string& name, const Config& c) {
  add(name, c, [](benchmark::State& state, const Config& cc, auto q) { run_qlora(state, cc, q); });
}

std::string nf(int bits) { return "nf" + std::to_string(bits); }

void register_all() {
  // Sweep: bits x rank x T at 1024^2.
  for (int bits : {2, 4}) {
    Config c;
    c.bits = bits;
    add_qlora("qlora_init/1024x1024/" + nf(bits), c);
    for (Index rank : {Index(8), Index(16), Index(64)})
      for (int t = 1; t <= 5; ++t) {
        c.rank = rank;
        c.iterations = t;
        add_initialize("initialize/1024x1024/" + nf(bits) + "/r" + std::to_string(rank) + "/T" + std::to_string(t), c);
      }
  }

  // Size: NF4, rank 16, T = 5. Long runs get a small fixed iteration count.
  struct Size {
    Index m, n;
    int iters;
  };
  for (const Size s : {Size{2048, 2048, 0}, Size{4096, 4096, 3}, Size{4096, 11008, 2}}) {
    Config c;
    c.m = s.m;
    c.n = s.n;
    c.fixed_iterations = s.iters;
    const std::string sh = loftq_bench::shape(s.m, s.n);
    add_qlora("qlora_init/" + sh + "/nf4", c);
    add_initialize("initialize/" + sh + "/nf4/r16/T5", c);
  }
  {
    Config c;
    c.m = c.n = 4096;
    c.iterations = 1;
    c.fixed_iterations = 5;
    add_initialize("initialize/4096x4096/nf4/r16/T1", c);
  }

  // Warm start on / off at 4096^2.
  for (bool warm : {false, true}) {
    Config c;
    c.m = c.n = 4096;
    c.warm_start = warm;
    c.fixed_iterations = 3;
    add_initialize(std::string("initialize/4096x4096/nf4/r16/T5/warm_start:") + (warm ? "1" : "0"), c);
  }

  // Beyond LoftQ: each improvement alone and together against the reference
  // configuration, same storage, NF2 and NF4, r16, T5.
  for (Index size : {Index(1024), Index(4096)})
    for (int bits : {2, 4}) {
      struct Variant {
        const char* name;
        bool search;
        loftq::Start start;
        bool keep_best;
      };
      for (const Variant v :
           {Variant{"reference", false, loftq::Start::zero, false}, Variant{"search", true, loftq::Start::zero, true},
            Variant{"svd_start", false, loftq::Start::svd, true},
            Variant{"search+svd_start", true, loftq::Start::svd, true}}) {
        Config c;
        c.m = c.n = size;
        c.bits = bits;
        c.base.scale_search = v.search;
        c.base.start = v.start;
        c.base.keep_best = v.keep_best;
        if (size == 4096) c.fixed_iterations = 3;
        add_initialize("beyond/" + loftq_bench::shape(size, size) + "/" + nf(bits) + "/r16/T5/" + v.name, c);
      }
    }

  // Exact against randomized SVD at 1024^2.
  for (loftq::SVDMethod method : {loftq::SVDMethod::exact, loftq::SVDMethod::randomized}) {
    Config c;
    c.method = method;
    if (method == loftq::SVDMethod::exact) c.fixed_iterations = 2;
    add_initialize(std::string("initialize/1024x1024/nf4/r16/T5/svd:") + loftq::to_string(method), c);
  }
}

}  // namespace

int main(int argc, char** argv) { return loftq_bench::run_suite(argc, argv, register_all); }
