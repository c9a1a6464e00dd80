// LoRA fine-tuning in miniature, in plain Eigen: does a better initialization
// give a better fine-tune?
//
// A teacher layer W + dW (W a realistic trained-looking matrix, dW a small
// low-rank "task" update) is imitated by a student Q + s * lora_B * lora_A with
// Q frozen and the LoRA factors trained by Adam on random inputs, PEFT style
// (s = lora_alpha / r). The same run starts once from QLoRA's init (Q = q(W),
// lora_B = 0) and once from LoftQ's (via loftq::to_peft), at NF2 and NF4.
//
// Prints the held-out loss of each run at the start and the end, and the floor:
// the best loss any rank-r update could reach with that Q. Writes the loss
// curves to finetune.csv and finetune.svg (current directory or argv[1]).

#include <loftq/loftq.hpp>

#include <Eigen/SVD>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "matrices.hpp"
#include "support/svg_plot.hpp"

namespace {

using Mat = Eigen::MatrixXf;

Mat gaussian(Eigen::Index rows, Eigen::Index cols, std::mt19937_64& g) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  Mat M(rows, cols);
  for (Eigen::Index i = 0; i < M.size(); ++i) {
    const double a = u(g) + 1e-300, b = u(g);
    M.data()[i] = static_cast<float>(std::sqrt(-2 * std::log(a)) * std::cos(6.283185307179586 * b));
  }
  return M;
}

struct Adam {
  Mat m, v;
  int t = 0;
  void step(Mat& p, const Mat& g, float lr) {
    if (m.size() == 0) {
      m = Mat::Zero(p.rows(), p.cols());
      v = Mat::Zero(p.rows(), p.cols());
    }
    ++t;
    const float b1 = 0.9f, b2 = 0.999f;
    m = b1 * m + (1 - b1) * g;
    v = b2 * v + (1 - b2) * g.cwiseAbs2();
    const float c1 = 1 - std::pow(b1, static_cast<float>(t)), c2 = 1 - std::pow(b2, static_cast<float>(t));
    p.array() -= lr * (m.array() / c1) / ((v.array() / c2).sqrt() + 1e-8f);
  }
};

struct Run {
  std::string name;
  std::vector<double> steps, loss;
  double floor = 0;
};

// Mean squared output error per output element on inputs X.
float loss_on(const Mat& Q, const Mat& lora_A, const Mat& lora_B, float s, const Mat& target, const Mat& X) {
  const Mat E = Q * X + s * (lora_B * (lora_A * X)) - target * X;
  return E.squaredNorm() / static_cast<float>(E.size());
}

Run train(const std::string& name, const Mat& Q, Mat lora_A, Mat lora_B, float s, const Mat& target, const Mat& Xeval,
          int steps, std::uint64_t seed) {
  Run run{name, {}, {}, 0};
  std::mt19937_64 g(seed);  // the same input stream for every run
  Adam opt_A, opt_B;
  const int batch = 128;
  const float lr = 2e-3f;
  for (int step = 0; step <= steps; ++step) {
    if (step % 10 == 0) {
      run.steps.push_back(step);
      run.loss.push_back(loss_on(Q, lora_A, lora_B, s, target, Xeval));
    }
    if (step == steps) break;
    const Mat X = gaussian(Q.cols(), batch, g);
    const Mat P = lora_A * X;
    const Mat E = Q * X + s * (lora_B * P) - target * X;
    const Mat dE = (2.0f / static_cast<float>(E.size())) * E;
    const Mat gB = s * dE * P.transpose();
    const Mat gA = s * lora_B.transpose() * dE * X.transpose();
    opt_B.step(lora_B, gB, lr);
    opt_A.step(lora_A, gA, lr);
  }
  // Best any rank-r update can do with this frozen Q (inputs are white, so the
  // expected loss is the Frobenius residual per element).
  const Eigen::Index r = lora_A.rows();
  Eigen::BDCSVD<Mat> svd(target - Q);
  const auto& sv = svd.singularValues();
  run.floor = sv.tail(sv.size() - r).squaredNorm() / static_cast<double>(Q.rows());
  return run;
}

}  // namespace

int main(int argc, char** argv) {
  // The products here are small: threading them only costs barrier waits.
  Eigen::setNbThreads(1);
  const std::filesystem::path out_dir = argc > 1 ? argv[1] : ".";
  const Eigen::Index m = 256, n = 256, r = 8;
  const double alpha = 16;
  const float s = static_cast<float>(alpha / static_cast<double>(r));
  const int steps = 300;

  const Mat W = loftq_bench::realistic_matrix(m, n, 7);
  std::mt19937_64 g(11);
  Mat dW = gaussian(m, 4, g) * gaussian(4, n, g);
  dW *= 0.2f * W.norm() / dW.norm();  // a task update of 20% of the weight's norm
  const Mat target = W + dW;
  const Mat Xeval = gaussian(n, 512, g);

  std::printf("LoRA fine-tune in miniature: %ldx%ld layer, rank %ld, lora_alpha %.0f, %d Adam steps\n",
              static_cast<long>(m), static_cast<long>(n), static_cast<long>(r), alpha, steps);
  std::printf("%-16s %12s %12s %12s\n", "run", "start loss", "final loss", "rank-r floor");

  std::vector<Run> runs;
  for (int bits : {2, 4}) {
    const loftq::Quantizer q(loftq::Quantizer::Kind::normal_float, bits);
    loftq::Options opt;
    opt.rank = r;
    const auto qlora = loftq::qlora_init(W, q, opt);
    const auto loftq_r = loftq::initialize(W, q, opt);
    const auto pq = loftq::to_peft(qlora, alpha), pl = loftq::to_peft(loftq_r, alpha);
    const std::string tag = "NF" + std::to_string(bits);
    runs.push_back(train(tag + " QLoRA-init", qlora.Q, pq.lora_A, pq.lora_B, s, target, Xeval, steps, 5));
    runs.push_back(train(tag + " LoftQ-init", loftq_r.Q, pl.lora_A, pl.lora_B, s, target, Xeval, steps, 5));
    for (std::size_t k = runs.size() - 2; k < runs.size(); ++k)
      std::printf("%-16s %12.4e %12.4e %12.4e\n", runs[k].name.c_str(), runs[k].loss.front(), runs[k].loss.back(),
                  runs[k].floor);
  }
  for (std::size_t k = 0; k < runs.size(); k += 2)
    std::printf("summary: %s final loss %.4e vs %s %.4e (%.1f%% lower)\n", runs[k + 1].name.c_str(),
                runs[k + 1].loss.back(), runs[k].name.c_str(), runs[k].loss.back(),
                100.0 * (1.0 - runs[k + 1].loss.back() / runs[k].loss.back()));

  std::ofstream csv(out_dir / "finetune.csv");
  csv << "run,step,eval_loss\n";
  const char* colors[] = {"#d62728", "#1f77b4", "#ff7f0e", "#2ca02c"};
  std::vector<loftq_examples::Line> lines;
  for (std::size_t k = 0; k < runs.size(); ++k) {
    for (std::size_t i = 0; i < runs[k].steps.size(); ++i)
      csv << runs[k].name << "," << runs[k].steps[i] << "," << runs[k].loss[i] << "\n";
    lines.push_back({runs[k].name, runs[k].steps, runs[k].loss, colors[k % 4], k % 2 == 0});
  }
  const bool ok = static_cast<bool>(csv) &&
                  loftq_examples::write_line_plot((out_dir / "finetune.svg").string(), "LoRA fine-tune: held-out loss",
                                                  "Adam step", "mean squared output error", lines, true);
  if (!ok) {
    std::fprintf(stderr, "finetune: cannot write finetune.csv / finetune.svg in %s\n", out_dir.string().c_str());
    return 1;
  }
  std::printf("wrote %s and %s\n", (out_dir / "finetune.csv").string().c_str(),
              (out_dir / "finetune.svg").string().c_str());
  return 0;
}
