// The README's API example: LoftQ-initialize one layer and hand it to PEFT.
#include <loftq/loftq.hpp>

#include <cstdio>

int main() {
  // A stand-in for a trained layer: out_features x in_features, PyTorch layout.
  Eigen::MatrixXf W = Eigen::MatrixXf::Random(512, 256);
  W += 0.5f * Eigen::MatrixXf::Random(512, 8) * Eigen::MatrixXf::Random(8, 256);

  loftq::Options opt;
  opt.rank = 16;
  opt.iterations = 5;
  auto r = loftq::initialize(W, loftq::NormalFloat<4>{}, opt);  // W ~ Q + A B^T
  auto peft = loftq::to_peft(r, /*lora_alpha=*/32.0);           // lora_A: r x n, lora_B: m x r

  std::printf("QLoRA init error %.4f, LoftQ error %.4f (best of %zu iterations, #%d)\n", r.qlora_error, r.error(),
              r.history.size(), r.best_iteration);
  std::printf("packed: %.3f bits per weight; lora_A %ldx%ld, lora_B %ldx%ld, scaling %.2f\n",
              r.packed.bits_per_weight(), static_cast<long>(peft.lora_A.rows()), static_cast<long>(peft.lora_A.cols()),
              static_cast<long>(peft.lora_B.rows()), static_cast<long>(peft.lora_B.cols()), peft.scaling);
  return r.error() < r.qlora_error ? 0 : 1;
}
