#include <loftq/io/safetensors.hpp>
#include <loftq/loftq.hpp>
#include <loftq/version.hpp>

#include <cstdint>
#include <cstdio>
#include <string>

// argv[1]: a directory for the safetensors file that checks loftq::io.
int main(int argc, char** argv) {
  if (loftq::version() != LOFTQ_PACKAGE_VERSION) {
    std::printf("consumer: header version %s, package version %s\n", loftq::version().c_str(), LOFTQ_PACKAGE_VERSION);
    return 1;
  }
  Eigen::MatrixXf W = Eigen::MatrixXf::Random(128, 96);
  W += Eigen::MatrixXf::Random(128, 4) * Eigen::MatrixXf::Random(4, 96);
  loftq::Options opt;
  opt.rank = 8;
  const auto r = loftq::initialize(W, loftq::NormalFloat<2>{}, opt);
  std::printf("consumer: qlora %.4f loftq %.4f\n", r.qlora_error, r.error());
  if (argc > 1) {
    // loftq::io brings nlohmann_json: Q goes out as safetensors and back.
    const std::string path = std::string(argv[1]) + "/q.safetensors";
    const auto rows = static_cast<std::uint64_t>(r.Q.rows()), cols = static_cast<std::uint64_t>(r.Q.cols());
    loftq::io::SafetensorsWriter out(path, {{"q", loftq::io::Dtype::F32, {rows, cols}}});
    out.write_float("q", r.Q.data(), rows * cols, loftq::io::Dtype::F32);
    out.commit();
    const loftq::io::SafetensorsFile in(path);
    if (in.read_matrix(in.at("q")) != r.Q) return 1;
  }
  return r.error() < r.qlora_error ? 0 : 1;
}
