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
#include "common/lm/layer_source.hpp"
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
  std::fprintf(stderr, "\rcalibrate: %3.0f%% (sequences x layers)",
               100.0 * static_cast<double>(done) / static_cast<double>(total));
  if (done == total) std::fputc('\n', stderr);
  std::fflush(stderr);
}

// The statistics file's layout, known from the configuration before any
// sum: one entry per distinct input, named after its first reader, and for
// every other reader of that input the entry it shares (q/k/v read one
// input, gate/up another).
struct Layout {
  std::vector<loftq::io::StatisticsDecl> entries;
  std::map<std::string, std::string> shares;
};

Layout layout_of(const lm::Config& c, loftq::StatsMode mode) {
  static const std::vector<std::vector<int>> groups = {
      {lm::kQ, lm::kK, lm::kV}, {lm::kO}, {lm::kGate, lm::kUp}, {lm::kDown}};
  Layout out;
  for (int l = 0; l < c.n_layers; ++l)
    for (const auto& g : groups) {
      const std::string name = lm::module_path(l, g.front());
      out.entries.push_back({name, static_cast<Eigen::Index>(lm::kind_shape(c, g.front())[1]), mode});
      for (std::size_t i = 1; i < g.size(); ++i) out.shares[lm::module_path(l, g[i])] = name;
    }
  return out;
}

}  // namespace

int run_calibrate(const Args& a) {
  StagedOutput out(a.output, a.overwrite ? StagedOutput::Existing::replace : StagedOutput::Existing::refuse,
                   {a.input, a.tokens});
  apply_threads(a.threads);
  const auto t0 = std::chrono::steady_clock::now();

  // Headers only: every tensor is checked here, its values read as the
  // forward pass reaches its layer, one layer's weights held at a time.
  const lm::LayerSource model(a.input);
  const std::vector<std::vector<int>> seqs = lm::read_tokens(a.tokens, model.config());
  std::size_t width = 0;
  for (const auto& s : seqs) width = std::max(width, s.size());

  out.stage();  // from here a signal raises cancel_flag() instead of ending the process
  lm::CalibrationOptions opt;
  opt.mode = a.stats_full ? loftq::StatsMode::full : loftq::StatsMode::diagonal;
  opt.threads = a.threads;
  opt.cancel = cancel_flag();
  if (!a.quiet && isatty(STDERR_FILENO)) opt.progress = show_progress;
  // Each layer's statistics go to the file as the forward pass leaves the
  // layer: memory for one layer's full sums, not the model's. Float64 keeps
  // the sums exactly as they were added, so a model computed from the file
  // equals one computed from the statistics in memory.
  const Layout layout = layout_of(model.config(), opt.mode);
  loftq::io::StatisticsWriter writer(out.path(kStatisticsFile).string(), layout.entries, layout.shares,
                                     loftq::io::Dtype::F64);
  std::map<std::string, loftq::InputStatistics> diagonal;  // for the imatrix: n doubles per input
  opt.on_layer = [&](std::vector<lm::LinearInput>& layer) {
    for (const auto& in : layer) {
      writer.write(in.name, in.stats);
      if (a.imatrix) diagonal.emplace(in.name, in.stats.diagonal_statistics());
    }
  };
  const lm::Calibration cal = lm::collect_statistics(model, seqs, opt);
  check_interrupt();
  const std::int64_t tokens = cal.tokens, sequences = cal.sequences;
  writer.commit();
  check_interrupt();
  if (a.imatrix) {
    const std::string dataset = std::filesystem::path(a.tokens).filename().string();
    loftq::io::write_imatrix_gguf(out.path(kImatrixFile).string(), diagonal, {dataset},
                                  static_cast<std::uint32_t>(sequences), static_cast<std::uint32_t>(width),
                                  layout.shares);
  }
  out.publish();

  if (!a.quiet) {
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("loftq %s: %s, %lld sequences, %lld tokens -> %s\n", loftq::version().c_str(),
                printable(a.input).c_str(), static_cast<long long>(sequences), static_cast<long long>(tokens),
                printable(out.dir().string()).c_str());
    std::printf("  %zu inputs (%zu modules), %s statistics%s; %.3f s\n", layout.entries.size(),
                layout.entries.size() + layout.shares.size(), a.stats_full ? "full" : "diagonal",
                a.imatrix ? ", imatrix.gguf" : "", seconds);
    std::fflush(stdout);
  }
  return kExitOk;
}

}  // namespace loftq_cli
