#pragma once
// lm_finetune's results: one row per method, width and rank, printed as the
// tables and targets, and written as summary.csv, curves.csv and SVGs.

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/svg_plot.hpp"

namespace lm_finetune {

struct Curve {
  std::vector<double> step, value;
};

struct RunResult {
  double init = 0, final = 0;
  Curve curve;
};

struct Row {
  std::string method;
  int bits_group = 0;  // the width the row is compared at (2, 3, 4); 0 for the mixed allocation
  double bits = 0;
  int rank = 0;
  double weight_error = 0;
  RunResult task[2];
  // tool_* rows: the largest relative difference of Q + s B A from the
  // in-process data_aware init at the same width and rank (-1 elsewhere).
  double init_vs_data_aware = -1;  // v, o, gate, up, down
  double qk_vs_data_aware = -1;    // q and k (through_tool.hpp's InitDiff)
};

inline std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

inline const Row* find(const std::vector<Row>& rows, const std::string& method, int group, int rank) {
  for (const auto& r : rows)
    if (r.method == method && r.rank == rank && (r.bits_group == group || method == "fp_lora")) return &r;
  return nullptr;
}

inline void print_tables(const std::vector<Row>& rows, int steps) {
  const char* task_name[2] = {"task 1 (recovery): held-out KL(p_fp || p_model), nats/token",
                              "task 2 (shift): held-out KL(p_teacher || p_model), nats/token"};
  for (int t = 0; t < 2; ++t) {
    std::printf("\n%s, after %d steps\n", task_name[t], steps);
    std::printf("%-5s %-4s %-20s %6s %8s %9s %9s %9s %9s\n", "bits", "rank", "method", "avg_b", "w_err", "init",
                "final", "init/QL", "final/QL");
    for (const auto& r : rows) {
      const int group = r.bits_group == 0 ? 2 : r.bits_group;  // mixed 2.5 bits is compared with QLoRA at 2
      const Row* q = find(rows, "qlora", group, r.rank);
      const double qi = q ? q->task[t].init : 0, qf = q ? q->task[t].final : 0;
      std::printf("%-5s %-4d %-20s %6.2f %8.4f %9.4f %9.4f %9s %9s\n",
                  r.bits_group == 0 ? "mix" : std::to_string(r.bits_group).c_str(), r.rank, r.method.c_str(), r.bits,
                  r.weight_error, r.task[t].init, r.task[t].final,
                  qi > 0 ? fmt("%.3f", r.task[t].init / qi).c_str() : "-",
                  qf > 0 ? fmt("%.3f", r.task[t].final / qf).c_str() : "-");
    }
  }
}

// The fine-tuning targets (default vs QLoRA, data-aware vs data-free), measured,
// not asserted: the numbers are the result.
inline void print_targets(const std::vector<Row>& rows, const std::vector<int>& ranks, const std::vector<int>& bits) {
  std::printf("\ntargets (loftq_default vs qlora, per rank):\n");
  for (int rank : ranks) {
    const Row *d2 = find(rows, "loftq_default", 2, rank), *q2 = find(rows, "qlora", 2, rank);
    if (d2 && q2)
      std::printf("  r%-2d 2 bits, task 1 after fine-tuning: default/QLoRA KL = %.3f (target <= 0.7): %s\n", rank,
                  d2->task[0].final / q2->task[0].final,
                  d2->task[0].final <= 0.7 * q2->task[0].final ? "met" : "NOT met");
    const Row *d4 = find(rows, "loftq_default", 4, rank), *q4 = find(rows, "qlora", 4, rank);
    if (d4 && q4) {
      for (int t = 0; t < 2; ++t)
        std::printf("  r%-2d 4 bits, task %d: init %.4f vs %.4f (%s), final %.4f vs %.4f (%s)\n", rank, t + 1,
                    d4->task[t].init, q4->task[t].init, d4->task[t].init < q4->task[t].init ? "better" : "NOT better",
                    d4->task[t].final, q4->task[t].final,
                    d4->task[t].final <= q4->task[t].final ? "no worse" : "WORSE");
    }
    for (int b : bits) {
      const Row *da = find(rows, "data_aware", b, rank), *d = find(rows, "loftq_default", b, rank);
      if (da && d)
        std::printf("  r%-2d %d bits, data-aware vs data-free init KL: %.4f vs %.4f (%s)\n", rank, b, da->task[0].init,
                    d->task[0].init, da->task[0].init <= d->task[0].init ? "met" : "NOT met");
      // Through the tool: data-aware (full) <= diagonal (imatrix) <= data-free after fine-tuning, both tasks.
      const Row *tf = find(rows, "tool_data_aware", b, rank), *ti = find(rows, "tool_imatrix", b, rank);
      const Row* q = find(rows, "qlora", b, rank);
      if (tf && q)
        std::printf("  r%-2d %d bits, through the tool: data-aware/QLoRA final KL = %.3f (task 1), %.3f (task 2)\n",
                    rank, b, tf->task[0].final / q->task[0].final, tf->task[1].final / q->task[1].final);
      if (tf && ti && d)
        for (int t = 0; t < 2; ++t)
          std::printf(
              "  r%-2d %d bits, task %d final KL: full %.4f <= diagonal %.4f <= data-free %.4f: %s\n", rank, b, t + 1,
              tf->task[t].final, ti->task[t].final, d->task[t].final,
              tf->task[t].final <= ti->task[t].final && ti->task[t].final <= d->task[t].final ? "met" : "NOT met");
    }
  }
}

inline void write_outputs(const std::vector<Row>& rows, const std::string& out, const std::vector<int>& bits,
                          const std::vector<int>& ranks) {
  namespace fs = std::filesystem;
  fs::create_directories(out);
  std::ofstream sum(fs::path(out) / "summary.csv"), cur(fs::path(out) / "curves.csv");
  sum << "method,bits_group,avg_bits,rank,weight_error,task1_kl_init,task1_kl_final,task2_kl_init,task2_kl_final,"
         "init_vs_data_aware,qk_vs_data_aware\n";
  cur << "task,method,bits_group,rank,step,value\n";
  for (const auto& r : rows) {
    sum << r.method << ',' << r.bits_group << ',' << r.bits << ',' << r.rank << ',' << r.weight_error << ','
        << r.task[0].init << ',' << r.task[0].final << ',' << r.task[1].init << ',' << r.task[1].final << ','
        << r.init_vs_data_aware << ',' << r.qk_vs_data_aware << '\n';
    for (int t = 0; t < 2; ++t)
      for (std::size_t i = 0; i < r.task[t].curve.step.size(); ++i)
        cur << (t == 0 ? "recovery" : "shift") << ',' << r.method << ',' << r.bits_group << ',' << r.rank << ','
            << r.task[t].curve.step[i] << ',' << r.task[t].curve.value[i] << '\n';
  }
  const char* colors[] = {"#000000", "#d62728", "#1f77b4", "#2ca02c", "#ff7f0e",
                          "#9467bd", "#8c564b", "#e377c2", "#17becf"};
  std::vector<int> groups = bits;
  groups.push_back(0);
  for (int t = 0; t < 2; ++t)
    for (int rank : ranks)
      for (int g : groups) {
        std::vector<loftq_common::Line> lines;
        for (const auto& r : rows) {
          if (r.rank != rank ||
              !(r.bits_group == g || r.method == "fp_lora" || (g == 0 && r.method == "qlora" && r.bits_group == 2)))
            continue;
          loftq_common::Line l;
          l.name = r.method;
          l.x = r.task[t].curve.step;
          l.y = r.task[t].curve.value;
          l.color = colors[lines.size() % 9];
          l.dashed = r.method == "fp_lora";
          lines.push_back(l);
        }
        if (lines.size() < 2) continue;
        const std::string tag = (g == 0 ? std::string("mix2.5") : "nf" + std::to_string(g));
        const std::string file =
            std::string(t == 0 ? "recovery" : "shift") + "_" + tag + "_r" + std::to_string(rank) + ".svg";
        loftq_common::write_line_plot(
            (fs::path(out) / file).string(),
            std::string(t == 0 ? "held-out KL to the fp model" : "held-out KL to the shifted teacher") + ", " + tag +
                ", rank " + std::to_string(rank),
            "Adam step", "KL (nats/token)", lines,
            /*log_y=*/false);  // full-precision LoRA starts at KL 0
      }
}

}  // namespace lm_finetune
