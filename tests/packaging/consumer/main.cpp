#include <loftq/loftq.hpp>

#include <cstdio>

int main() {
  Eigen::MatrixXf W = Eigen::MatrixXf::Random(128, 96);
  W += Eigen::MatrixXf::Random(128, 4) * Eigen::MatrixXf::Random(4, 96);
  loftq::Options opt;
  opt.rank = 8;
  const auto r = loftq::initialize(W, loftq::NormalFloat<2>{}, opt);
  std::printf("consumer: qlora %.4f loftq %.4f\n", r.qlora_error, r.error());
  return r.error() < r.qlora_error ? 0 : 1;
}
