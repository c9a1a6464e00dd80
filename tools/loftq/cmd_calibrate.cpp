// loftq calibrate: a llama-architecture model (Hugging Face safetensors, GGUF
// or llama2.c) and token ids in; the input statistics of every linear layer
// out, as the project's statistics file (and, on request, llama.cpp's imatrix
// GGUF), for `loftq model --calibration`.

#include <loftq/io/imatrix.hpp>
#include <loftq/io/statistics.hpp>
#include <loftq/loftq.hpp>

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "commands.hpp"
#include "common/lm/calibrate.hpp"
#include "common/lm/load.hpp"
#include "errors.hpp"
#include "staged_output.hpp"

namespace loftq_cli {

namespace {

// The files of one output directory.
constexpr const char* kStatisticsFile = "statistics.safetensors";
constexpr const char* kImatrixFile = "imatrix.gguf";

// Progress on a terminal only, on one line, as `model` shows it.
void show_progress(std::size_t done, std::size_t total) {
  std::fprintf(stderr, "\rcalibrate: %zu/%zu sequences", done, total);
  if (done == total) std::fputc('\n', stderr);
  std::fflush(stderr);
}

// One entry per distinct input, and for every other reader of that input the
// entry it shares (q/k/v read one input, gate/up another).
struct Collected {
  std::map<std::string, loftq::InputStatistics> stats;
  std::map<std::string, std::string> shares;
};

Collected by_module(lm::Calibration&& cal) {
  Collected c;
  for (auto& in : cal.inputs) {
    for (const auto& t : in.targets)
      if (t != in.name) c.shares[t] = in.name;
    c.stats.emplace(in.name, std::move(in.stats));
  }
  return c;
}

}  // namespace

int run_calibrate(const Args& a) {
  StagedOutput out(a.output, a.overwrite ? StagedOutput::Existing::replace : StagedOutput::Existing::refuse,
                   {a.input, a.tokens});
  apply_threads(a.threads);
  const auto t0 = std::chrono::steady_clock::now();

  const lm::Weights<float> w = lm::read_model(a.input);
  const std::vector<std::vector<int>> seqs = lm::read_tokens(a.tokens, w.config);
  std::size_t width = 0;
  for (const auto& s : seqs) width = std::max(width, s.size());

  out.stage();  // from here a signal raises cancel_flag() instead of ending the process
  lm::CalibrationOptions opt;
  opt.mode = a.stats_full ? loftq::StatsMode::full : loftq::StatsMode::diagonal;
  opt.threads = a.threads;
  opt.cancel = cancel_flag();
  if (!a.quiet && isatty(STDERR_FILENO)) opt.progress = show_progress;
  lm::Calibration cal = lm::collect_statistics(w, seqs, opt);
  check_interrupt();
  const std::int64_t tokens = cal.tokens, sequences = cal.sequences;
  const Collected c = by_module(std::move(cal));

  // Float64 keeps the sums exactly as they were added, so a model computed
  // from the file equals one computed from the statistics in memory.
  loftq::io::write_statistics(out.path(kStatisticsFile).string(), c.stats, c.shares, loftq::io::Dtype::F64);
  check_interrupt();
  if (a.imatrix) {
    const std::string dataset = std::filesystem::path(a.tokens).filename().string();
    loftq::io::write_imatrix_gguf(out.path(kImatrixFile).string(), c.stats, {dataset},
                                  static_cast<std::uint32_t>(sequences), static_cast<std::uint32_t>(width), c.shares);
  }
  out.publish();

  if (!a.quiet) {
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("loftq %s: %s, %lld sequences, %lld tokens -> %s\n", loftq::version().c_str(),
                printable(a.input).c_str(), static_cast<long long>(sequences), static_cast<long long>(tokens),
                printable(out.dir().string()).c_str());
    std::printf("  %zu inputs (%zu modules), %s statistics%s; %.3f s\n", c.stats.size(),
                c.stats.size() + c.shares.size(), a.stats_full ? "full" : "diagonal", a.imatrix ? ", imatrix.gguf" : "",
                seconds);
    std::fflush(stdout);
  }
  return kExitOk;
}

}  // namespace loftq_cli
