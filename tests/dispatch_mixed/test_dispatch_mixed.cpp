// A program linking a unit compiled without architecture flags and one
// compiled with -mavx2 -mfma (work_avx2.cpp), as a consumer mixing
// differently compiled libraries does. Every kernel is compiled the same way
// in both (target attributes, a run-time check), so whichever copy of an
// inline function the linker keeps, both units compute the same bits, and the
// quantizer's agree with the portable path too.
#include <doctest/doctest.h>

#include <cstring>
#include <loftq/simd.hpp>

#include "../support.hpp"
#include "work.hpp"

namespace dispatch_mixed {
Work work_default(const loftq::RowMatrix<float>& W) { return work(W); }
}  // namespace dispatch_mixed

namespace {
bool same(const Eigen::MatrixXf& a, const Eigen::MatrixXf& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(float) * static_cast<std::size_t>(a.size())) == 0;
}
}  // namespace

TEST_CASE("units compiled with and without -mavx2 -mfma compute the same bits in one program") {
  const loftq::RowMatrix<float> W = loftq_test::structured(200, 136, 4);
  const dispatch_mixed::Work a = dispatch_mixed::work_default(W);
  MESSAGE("kernel family: " << loftq::simd_path());
  __builtin_cpu_init();
  if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) {
    MESSAGE("no AVX2+FMA on this CPU: the -mavx2 unit is not run");
    return;
  }
  const dispatch_mixed::Work b = dispatch_mixed::work_avx2(W);
  CHECK(a.packed.codes == b.packed.codes);
  CHECK(a.packed.scales == b.packed.scales);
  CHECK(same(a.Y, b.Y));
  CHECK(same(a.Z, b.Z));
  loftq::detail::PortableScope portable;
  const dispatch_mixed::Work c = dispatch_mixed::work_default(W);
  CHECK(a.packed.codes == c.packed.codes);
  CHECK(a.packed.scales == c.packed.scales);
  // The products are the ones TruncatedSVD's range finder forms, and they are products: against Eigen's in double.
  const Eigen::MatrixXd Wd = W.cast<double>();
  Eigen::MatrixXf Omega(W.cols(), 16);
  loftq::detail::SplitMix64 rng(7);
  for (Eigen::Index j = 0; j < Omega.cols(); ++j)
    for (Eigen::Index i = 0; i < Omega.rows(); ++i) Omega(i, j) = static_cast<float>(rng.normal());
  const Eigen::MatrixXd Y = Wd * Omega.cast<double>(), Z = Wd.transpose() * a.Y.cast<double>();
  CHECK((a.Y.cast<double>() - Y).norm() <= 1e-5 * Y.norm());
  CHECK((a.Z.cast<double>() - Z).norm() <= 1e-5 * Z.norm());
}
