// LoftQ against the QLoRA-style initialization, the project's main demo.
//
//   loftq_vs_qlora [output-directory]
//
// QLoRA starts LoRA from Q = q(W) with A B^T = 0, so the layer's error at step
// 0 is ||W - q(W)||. LoftQ alternates Q_t = q(W - A_{t-1} B_{t-1}^T) and
// A_t B_t^T = SVD_r(W - Q_t) so that Q + A B^T is closer to W. This program
// prints the relative error ||W - Q - A B^T||_F / ||W||_F of both for
// T = 1..5 alternating steps, with NF2 and NF4:
//   * on a built-in synthetic 1024 x 1024 "trained weight" (rank 16), and
//   * on the 36 real weight matrices of the stories260K llama2.c checkpoint
//     (rank 8; mean error and the number of matrices where LoftQ wins),
//     when LOFTQ_SHARED_DATA_DIR/stories260K.bin exists.
// It writes the same numbers to loftq_vs_qlora.csv and a plot to
// loftq_vs_qlora.svg, in the current directory or the one given.
//
// Each setting runs twice: as PEFT's LoftQ (absmax scales, zero start, last
// iterate) and with this library's defaults (scale search, SVD start, best
// iterate), at the same storage. One T = 5 run yields the errors after
// T = 1..5. Everything is deterministic.
#include <loftq/loftq.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "common/svg_plot.hpp"

#include "common/llama2c.hpp"
#include "common/matrices.hpp"

#ifndef LOFTQ_SHARED_DATA_DIR
#define LOFTQ_SHARED_DATA_DIR "../shared/data"
#endif

namespace {

constexpr int kIterations = 5;

// One line of the table: a data set, a quantizer and a rank.
struct Series {
  std::string dataset;    // "synthetic" or "stories260K"
  std::string quantizer;  // "nf2", "nf4"
  long rank = 0;
  int matrices = 0;           // how many matrices the means are over
  double qlora = 0;           // mean QLoRA-style error
  std::vector<double> loftq;  // mean LoftQ error after t = 1..T
  std::vector<int> wins;      // matrices with LoftQ error < QLoRA error after t
  std::string method;         // "reference" (PEFT's LoftQ) or "default" (this library's)
  double returned = 0;        // mean error of the iterate initialize returns
  std::string label() const { return dataset + " " + method; }
};

// PEFT's LoftQ: absmax scales, zero start, last iterate.
loftq::Options reference_options() {
  loftq::Options o;
  o.scale_search = false;
  o.start = loftq::Start::zero;
  o.keep_best = false;
  return o;
}

template <class Q>
Series run(const std::string& dataset, const std::vector<const loftq_common::RowMatrixXf*>& Ws, const Q& q, long rank,
           bool reference) {
  Series s;
  s.dataset = dataset;
  s.method = reference ? "reference" : "default";
  s.quantizer = q.name();
  s.rank = rank;
  s.matrices = static_cast<int>(Ws.size());
  s.loftq.assign(kIterations, 0.0);
  s.wins.assign(kIterations, 0);
  loftq::Options opt = reference ? reference_options() : loftq::Options{};
  opt.rank = rank;
  opt.iterations = kIterations;
  for (const auto* W : Ws) {
    const auto r = loftq::initialize(*W, q, opt);
    s.qlora += r.qlora_error;
    s.returned += r.error();
    for (int t = 0; t < kIterations; ++t) {
      // tolerance is 0, so every run has all T entries
      const double e = r.history[static_cast<std::size_t>(t)];
      s.loftq[static_cast<std::size_t>(t)] += e;
      if (e < r.qlora_error) ++s.wins[static_cast<std::size_t>(t)];
    }
  }
  const double count = std::max(1, s.matrices);
  s.qlora /= count;
  s.returned /= count;
  for (double& e : s.loftq) e /= count;
  return s;
}

void print_table(const std::vector<Series>& all) {
  std::printf("%-12s %-9s %-5s %4s %4s  %-7s", "dataset", "loftq", "quant", "rank", "mats", "QLoRA");
  for (int t = 1; t <= kIterations; ++t) std::printf("  T=%-5d", t);
  std::printf("  %-8s %-12s %s\n", "returned", "vs QLoRA", "vs reference");
  for (const Series& s : all) {
    std::printf("%-12s %-9s %-5s %4ld %4d  %.5f", s.dataset.c_str(), s.method.c_str(), s.quantizer.c_str(), s.rank,
                s.matrices, s.qlora);
    for (double e : s.loftq) std::printf("  %.5f", e);
    std::printf("  %.5f  %6.2f%%", s.returned, 100.0 * (1.0 - s.returned / s.qlora));
    for (const Series& r : all)
      if (r.method == "reference" && s.method != "reference" && r.dataset == s.dataset && r.quantizer == s.quantizer)
        std::printf("      %6.2f%%", 100.0 * (1.0 - s.returned / r.returned));
    std::printf("\n");
  }
  for (const Series& s : all) {
    if (s.matrices <= 1) continue;
    std::printf("%s %s %s: matrices where LoftQ beats QLoRA, T=1..%d:", s.dataset.c_str(), s.method.c_str(),
                s.quantizer.c_str(), kIterations);
    for (int w : s.wins) std::printf(" %d/%d", w, s.matrices);
    std::printf("\n");
  }
}

bool write_csv(const std::string& path, const std::vector<Series>& all) {
  std::ofstream f(path);
  f << "dataset,method,quantizer,rank,matrices,iteration,qlora_error,loftq_error,loftq_wins\n";
  char buf[256];
  for (const Series& s : all)
    for (int t = 0; t < kIterations; ++t) {
      std::snprintf(buf, sizeof buf, "%s,%s,%s,%ld,%d,%d,%.7f,%.7f,%d\n", s.dataset.c_str(), s.method.c_str(),
                    s.quantizer.c_str(), s.rank, s.matrices, t + 1, s.qlora, s.loftq[static_cast<std::size_t>(t)],
                    s.wins[static_cast<std::size_t>(t)]);
      f << buf;
    }
  return static_cast<bool>(f);
}

// ---- A small SVG writer: one panel per quantizer, error against iteration.

std::string fmt(double v, int decimals = 2) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

bool write_svg(const std::string& path, const std::vector<Series>& all) {
  std::vector<std::string> quantizers, datasets;
  for (const Series& s : all) {
    if (std::find(quantizers.begin(), quantizers.end(), s.quantizer) == quantizers.end())
      quantizers.push_back(s.quantizer);
    if (std::find(datasets.begin(), datasets.end(), s.label()) == datasets.end()) datasets.push_back(s.label());
  }
  static const char* const colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"};
  auto color_of = [&](const std::string& d) {
    const auto i = static_cast<std::size_t>(std::find(datasets.begin(), datasets.end(), d) - datasets.begin());
    return colors[i % 5];
  };

  const double pw = 380, ph = 260;  // plot area per panel
  const double left = 70, top = 76, gap = 110, bottom = 60;
  const double legend_h = 22.0 * static_cast<double>(datasets.size()) + 30;
  const double W = left + static_cast<double>(quantizers.size()) * (pw + gap) - gap + 30;
  const double H = top + ph + bottom + legend_h;
  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << fmt(W, 0) << "\" height=\"" << fmt(H, 0)
    << "\" viewBox=\"0 0 " << fmt(W, 0) << " " << fmt(H, 0) << "\" font-family=\"Helvetica, Arial, sans-serif\">\n";
  o << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  o << "<text x=\"" << fmt(W / 2, 1) << "\" y=\"26\" text-anchor=\"middle\" font-size=\"16\" font-weight=\"bold\">"
    << "LoftQ vs QLoRA initialization: relative error ||W - Q - AB&#7488;||/||W||</text>\n";
  o << "<text x=\"" << fmt(W / 2, 1) << "\" y=\"44\" text-anchor=\"middle\" font-size=\"12\" fill=\"#555\">"
    << "solid: LoftQ error after T alternating steps (reference = PEFT settings, default = this library); dashed: "
       "QLoRA q(W)</text>\n";

  for (std::size_t pi = 0; pi < quantizers.size(); ++pi) {
    const double x0 = left + static_cast<double>(pi) * (pw + gap), y0 = top;
    double lo = std::numeric_limits<double>::infinity(), hi = -lo;
    for (const Series& s : all) {
      if (s.quantizer != quantizers[pi]) continue;
      lo = std::min(lo, s.qlora);
      hi = std::max(hi, s.qlora);
      for (double e : s.loftq) {
        lo = std::min(lo, e);
        hi = std::max(hi, e);
      }
    }
    const loftq_common::RoundAxis axis = loftq_common::round_axis(lo, hi, 5);
    const double step = axis.step;
    lo = axis.lo;
    hi = axis.hi;
    auto X = [&](double it) { return x0 + (it - 0.5) / (kIterations)*pw; };  // iterations 1..T in (0.5, T + 0.5)
    auto Y = [&](double e) { return y0 + ph - (e - lo) / (hi - lo) * ph; };

    o << "<g>\n";
    o << "<text x=\"" << fmt(x0 + pw / 2) << "\" y=\"" << fmt(y0 - 8) << "\" text-anchor=\"middle\" font-size=\"14\">"
      << loftq_common::svg_escape(quantizers[pi]) << "</text>\n";
    const int dec = axis.decimals;
    for (double v = lo; v <= hi + step * 1e-6; v += step) {
      const double y = Y(v);
      o << "<line x1=\"" << fmt(x0) << "\" y1=\"" << fmt(y) << "\" x2=\"" << fmt(x0 + pw) << "\" y2=\"" << fmt(y)
        << "\" stroke=\"#e5e5e5\"/>\n";
      o << "<text x=\"" << fmt(x0 - 6) << "\" y=\"" << fmt(y + 4) << "\" text-anchor=\"end\" font-size=\"11\">"
        << fmt(v, dec) << "</text>\n";
    }
    o << "<rect x=\"" << fmt(x0) << "\" y=\"" << fmt(y0) << "\" width=\"" << fmt(pw) << "\" height=\"" << fmt(ph)
      << "\" fill=\"none\" stroke=\"#333\"/>\n";
    for (int t = 1; t <= kIterations; ++t) {
      const double x = X(t);
      o << "<line x1=\"" << fmt(x) << "\" y1=\"" << fmt(y0 + ph) << "\" x2=\"" << fmt(x) << "\" y2=\""
        << fmt(y0 + ph + 5) << "\" stroke=\"#333\"/>\n";
      o << "<text x=\"" << fmt(x) << "\" y=\"" << fmt(y0 + ph + 19) << "\" text-anchor=\"middle\" font-size=\"11\">"
        << t << "</text>\n";
    }
    o << "<text x=\"" << fmt(x0 + pw / 2) << "\" y=\"" << fmt(y0 + ph + 40)
      << "\" text-anchor=\"middle\" font-size=\"12\">LoftQ iteration T</text>\n";
    o << "<text transform=\"translate(" << fmt(x0 - 52) << "," << fmt(y0 + ph / 2)
      << ") rotate(-90)\" text-anchor=\"middle\" font-size=\"12\">relative error</text>\n";
    for (const Series& s : all) {
      if (s.quantizer != quantizers[pi]) continue;
      const char* c = color_of(s.label());
      o << "<line x1=\"" << fmt(x0) << "\" y1=\"" << fmt(Y(s.qlora)) << "\" x2=\"" << fmt(x0 + pw) << "\" y2=\""
        << fmt(Y(s.qlora)) << "\" stroke=\"" << c << "\" stroke-width=\"1.5\" stroke-dasharray=\"6,4\"/>\n";
      o << "<polyline fill=\"none\" stroke=\"" << c << "\" stroke-width=\"2\" points=\"";
      for (int t = 1; t <= kIterations; ++t)
        o << (t > 1 ? " " : "") << fmt(X(t)) << "," << fmt(Y(s.loftq[static_cast<std::size_t>(t - 1)]));
      o << "\"/>\n";
      for (int t = 1; t <= kIterations; ++t)
        o << "<circle cx=\"" << fmt(X(t)) << "\" cy=\"" << fmt(Y(s.loftq[static_cast<std::size_t>(t - 1)]))
          << "\" r=\"3\" fill=\"" << c << "\"/>\n";
    }
    o << "</g>\n";
  }

  // Legend: one entry per data set (solid LoftQ, dashed QLoRA).
  double ly = top + ph + bottom + 10;
  for (const std::string& d : datasets) {
    const Series* s = nullptr;
    for (const Series& x : all)
      if (x.label() == d) s = &x;
    const char* c = color_of(d);
    const std::string what = s->matrices == 1 ? d + " (1024x1024), rank " + std::to_string(s->rank)
                                              : d + ": mean of " + std::to_string(s->matrices) + " matrices, rank " +
                                                    std::to_string(s->rank);
    o << "<line x1=\"" << fmt(left) << "\" y1=\"" << fmt(ly) << "\" x2=\"" << fmt(left + 30) << "\" y2=\"" << fmt(ly)
      << "\" stroke=\"" << c << "\" stroke-width=\"2\"/>\n";
    o << "<circle cx=\"" << fmt(left + 15) << "\" cy=\"" << fmt(ly) << "\" r=\"3\" fill=\"" << c << "\"/>\n";
    o << "<text x=\"" << fmt(left + 38) << "\" y=\"" << fmt(ly + 4) << "\" font-size=\"12\">LoftQ, "
      << loftq_common::svg_escape(what) << "</text>\n";
    const double lx = left + 430;
    o << "<line x1=\"" << fmt(lx) << "\" y1=\"" << fmt(ly) << "\" x2=\"" << fmt(lx + 30) << "\" y2=\"" << fmt(ly)
      << "\" stroke=\"" << c << "\" stroke-width=\"1.5\" stroke-dasharray=\"6,4\"/>\n";
    o << "<text x=\"" << fmt(lx + 38) << "\" y=\"" << fmt(ly + 4) << "\" font-size=\"12\">QLoRA, "
      << loftq_common::svg_escape(d) << "</text>\n";
    ly += 22;
  }
  o << "</svg>\n";
  std::ofstream f(path);
  f << o.str();
  return static_cast<bool>(f);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::filesystem::path out_dir = argc > 1 ? std::filesystem::path(argv[1]) : std::filesystem::path(".");
    if (!out_dir.empty()) std::filesystem::create_directories(out_dir);

    std::vector<Series> all;
    const auto W = loftq_common::realistic_matrix(1024, 1024, /*seed=*/2024);
    for (bool ref : {true, false}) {
      all.push_back(run("synthetic", {&W}, loftq::NormalFloat<2>{}, 16, ref));
      all.push_back(run("synthetic", {&W}, loftq::NormalFloat<4>{}, 16, ref));
    }

    const std::string ckpt = std::string(LOFTQ_SHARED_DATA_DIR) + "/stories260K.bin";
    std::string why;
    std::vector<lm::NamedMatrix> real;
    try {
      real = lm::named_matrices(lm::read_checkpoint(ckpt));
    } catch (const loftq::Error& e) {
      why = e.what();
    }
    if (!real.empty()) {
      std::vector<const loftq_common::RowMatrixXf*> ptrs;
      for (const auto& nm : real) ptrs.push_back(&nm.W);
      for (bool ref : {true, false}) {
        all.push_back(run("stories260K", ptrs, loftq::NormalFloat<2>{}, 8, ref));
        all.push_back(run("stories260K", ptrs, loftq::NormalFloat<4>{}, 8, ref));
      }
    }

    std::printf("LoftQ vs QLoRA-style init: relative error ||W - Q - A B^T||_F / ||W||_F (lower is better)\n");
    std::printf("synthetic = realistic 1024x1024 matrix (seed 2024, heavy tails, 1%% outlier columns), rank 16\n");
    if (real.empty())
      std::printf("stories260K: skipped (%s)\n", why.c_str());
    else
      std::printf("stories260K = mean over its %zu weight matrices (64x64 .. 512x64), rank 8\n", real.size());
    std::printf("reference = PEFT's LoftQ (absmax scales, zero start, last iterate); default = this library's\n");
    std::printf("defaults (error-optimal block scales, start from the top-r SVD of W, best iterate), same storage\n");
    std::printf("T = per-iteration error; returned = the iterate initialize returns\n\n");
    print_table(all);

    const std::string csv = (out_dir / "loftq_vs_qlora.csv").string(), svg = (out_dir / "loftq_vs_qlora.svg").string();
    if (!write_csv(csv, all) || !write_svg(svg, all)) {
      std::fprintf(stderr, "loftq_vs_qlora: cannot write %s / %s\n", csv.c_str(), svg.c_str());
      return 1;
    }
    std::printf("\nwrote %s and %s\n", csv.c_str(), svg.c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "loftq_vs_qlora: %s\n", e.what());
    return 1;
  }
}
