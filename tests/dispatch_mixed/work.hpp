#pragma once
// The same work, compiled by two translation units with different flags
// (test_dispatch_mixed.cpp without architecture flags, work_avx2.cpp with
// -mavx2 -mfma): NF4 codes with scale search of a row-major matrix, and its
// randomized rank-8 SVD, which runs the skinny products.
#include <loftq/quantizer.hpp>
#include <loftq/svd.hpp>

namespace dispatch_mixed {

struct Work {
  loftq::PackedMatrix packed;
  Eigen::MatrixXf U, V;
  Eigen::VectorXf S;
};

inline Work work(const loftq::RowMatrix<float>& W) {
  Work w;
  loftq::QuantizeOptions q;
  q.scale_search = true;
  w.packed = loftq::quantize(W, loftq::NormalFloat<4>{}, q);
  loftq::SVDOptions o;
  o.method = loftq::SVDMethod::randomized;
  const loftq::TruncatedSVD<Eigen::MatrixXf> svd(W, 8, o);
  w.U = svd.matrixU();
  w.V = svd.matrixV();
  w.S = svd.singularValues();
  return w;
}

Work work_default(const loftq::RowMatrix<float>& W);
Work work_avx2(const loftq::RowMatrix<float>& W);

}  // namespace dispatch_mixed
