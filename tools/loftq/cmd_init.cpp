// loftq init: one .npy matrix in, Q.npy, A.npy, B.npy and report.json out.

#include "commands.hpp"
#include "errors.hpp"
#include "report.hpp"
#include "staged_output.hpp"

#include <loftq/io/npy.hpp>
#include <loftq/loftq.hpp>

#include <chrono>
#include <cstdio>

namespace loftq_cli {

namespace {

void print_summary(const Args& a, const InitFacts& facts, const loftq::Result<float>& r,
                   const loftq::DoubleQuantEffect& dq, const StagedOutput& out) {
  const int threads = loftq::thread_count(a.threads);
  std::printf("loftq %s: %s (%ldx%ld %s) -> %s\n", loftq::version().c_str(), printable(a.input).c_str(),
              static_cast<long>(facts.rows), static_cast<long>(facts.cols), facts.dtype.c_str(),
              printable(out.dir().string()).c_str());
  std::printf("  %s%d, block %ld, scale %s, rank %ld, svd %s, start %s, seed %llu, threads %d\n",
              quantizer_name(a.kind), a.bits, static_cast<long>(a.block_size), scale_name(a.scale_search),
              static_cast<long>(a.rank), loftq::to_string(a.svd), start_name(a.start),
              static_cast<unsigned long long>(a.seed), threads);
  std::printf("  QLoRA  rel. error %.6f\n", r.qlora_error);
  const std::size_t iters = iterations_run(r, a.double_quant);
  for (std::size_t t = 0; t < r.history.size(); ++t) {
    const char* mark = static_cast<int>(t + 1) == r.best_iteration ? "  <- returned" : "";
    if (t >= iters)
      std::printf("  double-quant rel. error %.6f%s\n", r.history[t], mark);
    else
      std::printf("  iter %-2zu rel. error %.6f%s\n", t + 1, r.history[t], mark);
  }
  if (a.double_quant) {
    std::printf("  double quantization: %.4f -> %.4f bits/weight, rel. error %.6f -> %.6f (%.6f before the refit)\n",
                dq.bits_per_weight_before, dq.bits_per_weight_after, dq.error_before, dq.error_after, dq.error_rounded);
    std::printf("  returned the double-quantized %s iterate, rel. error %.6f; %.3f s\n", a.keep_best ? "best" : "last",
                r.error(), facts.seconds);
  } else {
    std::printf("  returned iteration %d (%s), rel. error %.6f; %.3f s\n", r.best_iteration,
                a.keep_best ? "best" : "last", r.error(), facts.seconds);
  }
  std::fflush(stdout);
}

}  // namespace

int run_init(const Args& a) {
  StagedOutput out(a.output, StagedOutput::Existing::update, {a.input}, {"Q.npy", "A.npy", "B.npy", "report.json"});

  // Validates bits (unsupported -> loftq::Error) before the input is read.
  const loftq::Quantizer quantizer = [&] {
    try {
      return loftq::Quantizer(a.kind, a.bits, a.block_size, /*symmetric=*/true);
    } catch (const loftq::Error& e) {
      throw InputError{"--bits " + std::to_string(a.bits) + ": " + e.what()};
    }
  }();

  InitFacts facts;
  int itemsize = 4;
  loftq::io::NpyMatrix<float> W = loftq::io::read_npy_matrix<float>(a.input, &itemsize);
  facts.dtype = itemsize == 8 ? "float64" : "float32";
  facts.rows = W.rows();
  facts.cols = W.cols();

  const loftq::Options opt = library_options(a);
  apply_threads(a.threads);

  const auto t0 = std::chrono::steady_clock::now();
  loftq::Result<float> r;
  loftq::DoubleQuantEffect dq;
  try {
    r = loftq::initialize(W, quantizer, opt);
    if (a.double_quant) dq = loftq::double_quantize(W, r, opt);
  } catch (const loftq::Error& e) {
    throw InputError{a.input + ": " + numeric_failure(e, W)};
  }
  if (!result_finite(r, opt.threads)) throw InputError{a.input + ": " + numeric_failure(not_finite_result(), W)};
  facts.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  W.resize(0, 0);

  const std::string json = init_report(a, facts, r, dq);
  out.stage();
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  // Row-major float32 on a little-endian host is the .npy data as it is:
  // written from Q itself, not from a 64 MB image of it (at 4096x4096).
  out.write_file("Q.npy",
                 loftq::io::npy_header_f32(static_cast<std::size_t>(r.Q.rows()), static_cast<std::size_t>(r.Q.cols())),
                 r.Q.data(), static_cast<std::size_t>(r.Q.size()) * sizeof(float));
#else
  out.write_file("Q.npy", loftq::io::npy_image(r.Q));
#endif
  out.write_file("A.npy", loftq::io::npy_image(r.A));
  out.write_file("B.npy", loftq::io::npy_image(r.B));
  out.write_file("report.json", json);
  out.publish();

  if (!a.quiet) print_summary(a, facts, r, dq, out);
  return kExitOk;
}

}  // namespace loftq_cli
