#pragma once
// The same work, compiled by two translation units with different flags
// (test_dispatch_mixed.cpp without architecture flags, work_avx2.cpp with
// -mavx2 -mfma): NF4 codes with scale search of a row-major matrix, and the
// randomized SVD's two skinny products (Y = M X, Z = M^T Y) with the range
// finder's own kernels. Eigen's small SVD, which follows them in TruncatedSVD,
// is Eigen's code rather than the library's kernels; instantiating it in both
// units cost about 80 s of compiler time and checked nothing of ours.
#include <loftq/detail/range_finder.hpp>
#include <loftq/detail/rng.hpp>
#include <loftq/quantizer.hpp>

namespace dispatch_mixed {

struct Work {
  loftq::PackedMatrix packed;
  Eigen::MatrixXf Y, Z;
};

inline Work work(const loftq::RowMatrix<float>& W) {
  Work w;
  loftq::QuantizeOptions q;
  q.scale_search = true;
  w.packed = loftq::quantize(W, loftq::NormalFloat<4>{}, q);
  // The range finder's start: k = 8 + 8 Gaussian columns from a fixed seed.
  Eigen::MatrixXf Omega(W.cols(), 16);
  loftq::detail::SplitMix64 rng(7);
  for (Eigen::Index j = 0; j < Omega.cols(); ++j)
    for (Eigen::Index i = 0; i < Omega.rows(); ++i) Omega(i, j) = static_cast<float>(rng.normal());
  loftq::detail::chunked_mul(W, Omega, w.Y, 2);
  loftq::detail::chunked_mul_t(W, w.Y, w.Z, 2);
  return w;
}

Work work_default(const loftq::RowMatrix<float>& W);
Work work_avx2(const loftq::RowMatrix<float>& W);

}  // namespace dispatch_mixed
