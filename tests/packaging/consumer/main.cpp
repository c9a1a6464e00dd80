#include <loftq/io/safetensors.hpp>
#include <loftq/loftq.hpp>
#include <loftq/version.hpp>

#include <cstdint>
#include <cstdio>
#include <string>

// argv[1]: a directory for the safetensors file that checks loftq::io.
//
// With LOFTQ_CONSUMER_INITIALIZE the consumer runs the whole method; without
// it, the quantizer alone (its SIMD kernels and OpenMP, not the SVD), which
// checks the same package wiring in a quarter of the compile time.
int main(int argc, char** argv) {
  if (loftq::version() != LOFTQ_PACKAGE_VERSION) {
    std::printf("consumer: header version %s, package version %s\n", loftq::version().c_str(), LOFTQ_PACKAGE_VERSION);
    return 1;
  }
  Eigen::MatrixXf W = Eigen::MatrixXf::Random(128, 96);
  W += Eigen::MatrixXf::Random(128, 4) * Eigen::MatrixXf::Random(4, 96);
#ifdef LOFTQ_CONSUMER_INITIALIZE
  loftq::Options opt;
  opt.rank = 8;
  const auto r = loftq::initialize(W, loftq::NormalFloat<2>{}, opt);
  std::printf("consumer: qlora %.4f loftq %.4f\n", r.qlora_error, r.error());
  const bool ok = r.error() < r.qlora_error;
  const loftq::RowMatrix<float>& Q = r.Q;
#else
  // NF4 has four times NF2's levels: its error must be well under half.
  const loftq::RowMatrix<float> Q = loftq::dequantize<float>(loftq::quantize(W, loftq::NormalFloat<4>{}));
  const float e4 = (Q - W).norm();
  const float e2 = (loftq::dequantize<float>(loftq::quantize(W, loftq::NormalFloat<2>{})) - W).norm();
  std::printf("consumer: nf4 %.4f nf2 %.4f\n", e4, e2);
  const bool ok = e4 < 0.5f * e2;
#endif
  if (argc > 1) {
    // loftq::io brings nlohmann_json: Q goes out as safetensors and back.
    const std::string path = std::string(argv[1]) + "/q.safetensors";
    const auto rows = static_cast<std::uint64_t>(Q.rows()), cols = static_cast<std::uint64_t>(Q.cols());
    loftq::io::SafetensorsWriter out(path, {{"q", loftq::io::Dtype::F32, {rows, cols}}});
    out.write_float("q", Q.data(), rows * cols, loftq::io::Dtype::F32);
    out.commit();
    const loftq::io::SafetensorsFile in(path);
    if (in.read_matrix(in.at("q")) != Q) return 1;
  }
  return ok ? 0 : 1;
}
