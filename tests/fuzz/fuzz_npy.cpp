// libFuzzer target: the .npy reader on arbitrary bytes.
//
// Contract under test (include/loftq/io/npy.hpp): parse_npy and to_matrix are
// safe on any input; every failure is a loftq::Error. Anything else escaping
// (std::bad_alloc, std::length_error, ...) or any sanitizer report is a bug.
// A file that parses must also survive a write/read round trip unchanged.
#include <loftq/io/npy.hpp>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

template <class Scalar>
void check_matrix(const loftq::io::NpyArray& a) {
  loftq::io::NpyMatrix<Scalar> M;
  try {
    M = loftq::io::to_matrix<Scalar>(a, "fuzz.npy");
  } catch (const loftq::Error&) {
    return;
  }
  if (static_cast<std::size_t>(M.rows()) != a.shape.at(0) || static_cast<std::size_t>(M.cols()) != a.shape.at(1))
    std::abort();
  if (M.size() == 0) return;
  // write_npy's in-memory image is float32, C order: re-parse it and compare.
  // A double matrix may hold values beyond float32, which npy_image refuses.
  std::vector<unsigned char> img;
  try {
    img = loftq::io::npy_image(M);
  } catch (const loftq::Error& e) {
    if (std::is_same<Scalar, float>::value || e.code() != loftq::Errc::non_finite) std::abort();
    return;
  }
  const auto b = loftq::io::parse_npy(img.data(), img.size(), "roundtrip");
  const auto R = loftq::io::to_matrix<Scalar>(b, "roundtrip");
  if (R.rows() != M.rows() || R.cols() != M.cols()) std::abort();
  for (Eigen::Index i = 0; i < M.rows(); ++i)
    for (Eigen::Index j = 0; j < M.cols(); ++j) {
      // Both values are in float range here (npy_image accepted M).
      const double x = static_cast<double>(static_cast<float>(M(i, j))), y = static_cast<double>(R(i, j));
      if (!(x == y || (std::isnan(x) && std::isnan(y)))) std::abort();
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  loftq::io::NpyArray a;
  try {
    a = loftq::io::parse_npy(data, size, "fuzz.npy");
  } catch (const loftq::Error&) {
    return 0;
  }
  if (a.kind != 'f' || (a.itemsize != 4 && a.itemsize != 8)) std::abort();
  if (a.element_count() * static_cast<std::size_t>(a.itemsize) != a.data.size()) std::abort();
  if (a.shape.size() == 2) {
    check_matrix<float>(a);
    check_matrix<double>(a);
  } else {
    // Not 2-D must be refused, as invalid_argument.
    try {
      (void)loftq::io::to_matrix<float>(a, "fuzz.npy");
      std::abort();
    } catch (const loftq::Error& e) {
      if (e.code() != loftq::Errc::invalid_argument) std::abort();
    }
  }
  return 0;
}
